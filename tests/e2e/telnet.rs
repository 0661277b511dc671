//! The telnet line adapter of kv-proxy.
