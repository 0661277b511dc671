//! The `kv-proxy` program: parse the command line, bind, serve.

use anyhow::Context;
use clap::Parser;
use kv_proxy::config::Listen;

/// mimalloc: the request path allocates small, short-lived buffers on every
/// request, and glibc's malloc showed as about a tenth of the proxy's profile.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let config = kv_proxy::Config::parse();
    kv_edge::init_tracing();
    match run(config) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            // One line a person can act on; no backtrace.
            eprintln!("kv-proxy: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(config: kv_proxy::Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async {
        let http = kv_edge::serve::bind(config.listen, "--listen")?;
        let telnet = match config.telnet_listen {
            Listen::On(addr) => Some(kv_edge::serve::bind(addr, "--telnet-listen")?),
            Listen::Off => None,
        };
        let proxy = kv_proxy::ProxyServer::new(config).map_err(anyhow::Error::msg)?;
        proxy.serve(http, telnet, kv_edge::shutdown::shutdown_signal()).await;
        Ok(())
    })
}
