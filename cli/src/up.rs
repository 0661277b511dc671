//! `kv up`: kv-server and kv-proxy in one process, on an embedded store: the
//! first command a newcomer types.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use kv_edge::units::parse_duration;
use kv_proxy::config::{Listen, defaults as proxy_defaults, parse_listen};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::error::CliError;

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Directory holding the database file; created if missing.
    #[arg(long, env = "KV_DATA_DIR", default_value = kv_server::config::defaults::DATA_DIR)]
    pub data_dir: PathBuf,

    /// Where the proxy serves HTTP: the address clients use.
    #[arg(long, env = "KV_PROXY_LISTEN", default_value = proxy_defaults::LISTEN)]
    pub listen: SocketAddr,

    /// Where the server serves HTTP (behind the proxy).
    #[arg(long, env = "KV_SERVER_LISTEN", default_value = kv_server::config::defaults::LISTEN)]
    pub server_listen: SocketAddr,

    /// Where the telnet line protocol listens, or "off".
    #[arg(long, env = "KV_TELNET_LISTEN", default_value = proxy_defaults::TELNET_LISTEN, value_parser = parse_listen)]
    pub telnet_listen: Listen,

    /// How long the proxy serves a cached GET before asking the server again.
    #[arg(long, env = "KV_CACHE_TTL", default_value = proxy_defaults::CACHE_TTL, value_parser = parse_duration)]
    pub cache_ttl: Duration,

    #[command(flatten)]
    pub auth: kv_edge::auth::AuthArgs,
}

pub async fn run(args: UpArgs) -> Result<(), CliError> {
    kv_edge::init_tracing();
    let mut server_config = kv_server::Config::with_data_dir(args.data_dir.clone());
    server_config.listen = args.server_listen;
    server_config.auth = args.auth.clone();
    let server = kv_server::Server::open(server_config).map_err(|err| CliError::Usage(err.to_string()))?;
    let server_listener = kv_edge::serve::bind(args.server_listen, "--server-listen")?;
    let server_addr = server_listener.local_addr()?;
    let proxy_listener = kv_edge::serve::bind(args.listen, "--listen")?;
    let proxy_addr = proxy_listener.local_addr()?;
    let telnet_listener = match args.telnet_listen {
        Listen::On(addr) => Some(kv_edge::serve::bind(addr, "--telnet-listen")?),
        Listen::Off => None,
    };
    let telnet_addr = telnet_listener.as_ref().map(TcpListener::local_addr).transpose()?;

    let mut proxy_config = kv_proxy::Config::with_upstream(format!("http://{server_addr}"));
    proxy_config.cache_ttl = args.cache_ttl;
    proxy_config.listen = args.listen;
    proxy_config.telnet_listen = args.telnet_listen;
    proxy_config.auth = args.auth.clone();
    let proxy = kv_proxy::ProxyServer::new(proxy_config).map_err(CliError::Usage)?;

    print_banner(proxy_addr, server_addr, telnet_addr, &args.data_dir);

    let stop = CancellationToken::new();
    let proxy_stopped = CancellationToken::new();
    let signal = {
        let stop = stop.clone();
        tokio::spawn(async move {
            kv_edge::shutdown::shutdown_signal().await;
            stop.cancel();
        })
    };
    // The proxy stops first so that its requests in flight still reach the server.
    let proxy_task = {
        let (stop, stopped) = (stop.clone(), proxy_stopped.clone());
        async move {
            proxy
                .serve(proxy_listener, telnet_listener, stop.cancelled_owned())
                .await;
            stopped.cancel();
        }
    };
    let server_task = server.serve(server_listener, proxy_stopped.cancelled_owned());
    tokio::join!(proxy_task, server_task);
    signal.abort();
    Ok(())
}

fn print_banner(proxy: SocketAddr, server: SocketAddr, telnet: Option<SocketAddr>, data_dir: &std::path::Path) {
    let data = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_owned());
    println!("kv is up.");
    println!("  proxy   http://{proxy}   (use this one: it caches GETs)");
    println!("  server  http://{server}   (data in {})", data.display());
    match telnet {
        Some(telnet) => println!("  telnet  {} {}", telnet.ip(), telnet.port()),
        None => println!("  telnet  off"),
    }
    println!();
    println!("Try:");
    println!("  curl -X PUT --data 'Derek Moss' http://{proxy}/kv/name");
    if let Some(telnet) = telnet {
        println!("  telnet {} {}        then type: GET name", telnet.ip(), telnet.port());
    }
    let url = if proxy.port() == 8080 && proxy.ip().is_loopback() {
        String::new()
    } else {
        format!(" --url http://{proxy}")
    };
    println!("  kv{url} get name");
    println!();
    println!("Browse the keys at http://{proxy}/kv   Press Ctrl-C to stop.");
}
