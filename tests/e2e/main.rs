//! End-to-end tests: the real kv programs on loopback ports, spoken to over
//! HTTP, telnet and the command line as users do. One test binary, one
//! module per area (ripgrep's layout).

mod batch;
mod browser;
mod cli;
mod consistency;
mod etcd;
mod expiry;
mod feed;
mod hardening_edge;
mod hardening_proxy;
mod hardening_server;
mod proxy;
mod robustness;
mod security;
mod server;
mod telnet;
mod tls;
