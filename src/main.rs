//! The `lamina` binary: parse arguments, set up logging, run, map errors to exit codes.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = lamina::cli::Cli::parse();
    // fuser warns when it cannot unmount what is already gone (the user's umount, or the lower
    // of a stacked writable mount, which leaves the tree at once): not a problem to report.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,fuser::mnt=error")),
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
