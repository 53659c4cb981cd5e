//! The `lamina` binary: parse arguments, set up logging, run, map errors to exit codes.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = lamina::cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match lamina::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if lamina::cli::is_broken_pipe(&e) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lamina: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
