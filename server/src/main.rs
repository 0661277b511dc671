//! The `kv-server` program: parse the command line, open the store, serve.

use anyhow::Context;
use clap::Parser;

/// mimalloc: the request path allocates small, short-lived buffers on every
/// request, and glibc's malloc showed as about a tenth of the proxy's profile.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let config = kv_server::Config::parse();
    kv_edge::init_tracing();
    match run(config) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            // One line a person can act on; no backtrace.
            eprintln!("kv-server: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(config: kv_server::Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async {
        let listen = config.listen;
        let server = kv_server::Server::start(config).await?;
        let listener = kv_edge::serve::bind(listen, "--listen")?;
        server.serve(listener, kv_edge::shutdown::shutdown_signal()).await;
        Ok(())
    })
}
