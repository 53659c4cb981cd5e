//! The command line: one thin function per command over the library. `main.rs` only parses
//! and calls [`run`]; this is the only place with `anyhow`.
//!
//! ```text
//! cli/
//!   args.rs       clap types
//!   bench.rs      bench (the driving part: image, chroot launcher, Ctrl-C)
//!   image.rs      pull, convert, inspect
//!   mount.rs      mount (foreground or as a daemon), stats
//!   cache.rs      cache stats | ls | gc
//!   profile.rs    profile ls | show | push | rm
//!   gzindex.rs    index (seekable indexes of gzip layers)
//!   container.rs  commit, run (and the temporary mounts they make)
//!   snapshotter.rs  the containerd snapshotter service
//!   store.rs      the additional layer store for podman / CRI-O
//! ```

/// `println!` that gives a write error back (as [`StdoutError`]) instead of panicking: a
/// closed pipe (`lamina stats MNT | head -1`) ends the command quietly ([`is_broken_pipe`]).
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*).map_err($crate::cli::StdoutError)
    }};
}

mod args;
mod bench;
mod cache;
mod container;
mod gzindex;
mod image;
mod mount;
mod profile;
mod snapshotter;
mod store;

use anyhow::Context as _;

pub use args::*;

/// Run a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match cli.command {
        Command::Pull(args) => runtime.block_on(image::pull(args, !cli.quiet)),
        Command::Convert(args) => runtime.block_on(image::convert(args, !cli.quiet)),
        Command::Inspect(args) => runtime.block_on(image::inspect(args)),
        Command::Mount(args) => mount::mount(args, &runtime),
        Command::Umount(args) => crate::mount::unmount(&args.mountpoint).map_err(anyhow::Error::msg),
        Command::Stats(args) => mount::stats(args),
        Command::Cache(args) => cache::cache(args),
        Command::Profile(args) => runtime.block_on(profile::profile(args)),
        Command::Index(args) => runtime.block_on(gzindex::index(args, !cli.quiet)),
        Command::Commit(args) => container::commit(args, &runtime),
        Command::Snapshotter(args) => runtime.block_on(snapshotter::snapshotter(args)),
        Command::Store(args) => store::store(args, &runtime),
        Command::Bench(args) => bench::bench(args, &runtime, !cli.quiet),
        Command::Run(args) => {
            let code = container::run(args, &runtime)?;
            drop(runtime);
            std::process::exit(code)
        }
    }
}

/// Writing the command's output to stdout failed.
#[derive(Debug, thiserror::Error)]
#[error("writing to standard output: {0}")]
pub struct StdoutError(pub std::io::Error);

/// Whether a command failed only because its output went to a closed pipe: the reader
/// wanted no more (`| head`), so the command ends quietly with status 0, as ripgrep does.
/// Only stdout counts (a broken connection to a registry is an error like any other), and
/// SIGPIPE stays ignored as Rust sets it: the daemon's sockets and pipes must never kill it.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<StdoutError>()
            .is_some_and(|out| out.0.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

pub(crate) fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}
