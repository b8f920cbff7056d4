//! `hx`: parse the command line, hand over to the library.

use clap::Parser;

/// mimalloc: request handling allocates many small buffers; glibc malloc was a tenth
/// of the gateway path's CPU in `make bench`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = hx::cli::Cli::parse();
    match hx::cli::run(cli).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
