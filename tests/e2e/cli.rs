//! The kv command-line client.
