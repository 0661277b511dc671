//! kv-proxy over HTTP.
