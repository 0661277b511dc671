//! The `kv` program: parse, run, and turn an error into one line and an exit code.

use std::process::ExitCode;

use clap::Parser;

/// mimalloc: the request path allocates small, short-lived buffers on every
/// request, and glibc's malloc showed as about a tenth of the proxy's profile.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = kv_cli::Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("kv: cannot start the async runtime: {err}");
            return ExitCode::from(3);
        }
    };
    match runtime.block_on(kv_cli::run(cli)) {
        Ok(()) | Err(kv_cli::CliError::OutputClosed) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("kv: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}
