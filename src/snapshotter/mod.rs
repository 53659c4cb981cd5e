//! `lamina snapshotter`: containerd's snapshots API on a unix socket (a proxy plugin), so
//! containerd's CRI plugin (Kubernetes, k3s) and nerdctl start containers from lazy images.
//!
//! ```text
//! containerd ──gRPC (unix socket)──► service: Prepare/View/Mounts/Commit/Remove/Stat/Update/
//!                                    │          Usage/List/Cleanup over meta (ROOT/snapshots/<id>/)
//!   Prepare with CRI labels ─────────┤ remote::decide: TOCs of the image's first n layers,
//!                                    │ chain ID checked ─► committed remote snapshot,
//!                                    │ AlreadyExists: containerd downloads nothing
//!   Prepare/View of a container ─────┤ overlay (or bind) over the parents' directories; the
//!                                    │ topmost remote one is `lamina mount --layers n`, a
//!                                    └ daemon of its own (remote::Unions)
//!   other layers ─────────────────── the ordinary path: containerd applies them into the
//!                                    active snapshot's directory, then commits it
//! ```
//!
//! The service's state is its records on disk; the unions' daemons outlive it, and a union
//! whose daemon is gone starts again when needed, so a restart of the service (or of the
//! machine) loses nothing.

pub mod filter;
pub mod meta;
pub mod remote;
pub mod service;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use containerd_snapshots::tonic;

/// Where containerd finds the service, by default.
pub const DEFAULT_ADDRESS: &str = "/run/lamina/snapshotter.sock";
/// Where the snapshots are kept, by default.
pub const DEFAULT_ROOT: &str = "/var/lib/lamina/snapshotter";

/// The service's settings file (`--config`, JSON); every key is optional.
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Seconds a Prepare may spend reading an image's tables of contents before the layer
    /// goes the ordinary way (default 20; containerd's own deadline is longer).
    pub prepare_timeout_secs: Option<u64>,
    /// Seconds a read waits for a chunk before failing with EIO (default: `lamina mount`'s).
    pub fetch_timeout_secs: Option<u64>,
    /// Registries reached over plain HTTP, besides loopback ones.
    #[serde(default)]
    pub insecure_registries: Vec<String>,
    /// Serve lazily at all (default true); false makes every layer take the ordinary path.
    pub lazy: Option<bool>,
}

impl ConfigFile {
    /// Read `path` (at most 1 MiB).
    pub fn read(path: &Path) -> Result<ConfigFile, String> {
        let text = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        if text.len() > 1024 * 1024 {
            return Err(format!("{} is over 1 MiB", path.display()));
        }
        serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// Everything the service needs.
#[derive(Clone, Debug)]
pub struct Options {
    /// The socket containerd connects to.
    pub address: PathBuf,
    /// Where snapshots are kept.
    pub root: PathBuf,
    /// How layers are served.
    pub settings: remote::Settings,
}

/// The service could not start.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotterError {
    /// Local trouble.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("serving: {0}")]
    Serve(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SnapshotterError {
    let what = what.into();
    move |source| SnapshotterError::Io { what, source }
}

/// The default prepare deadline.
pub const DEFAULT_PREPARE_TIMEOUT: Duration = Duration::from_secs(20);

/// Serve until SIGTERM or SIGINT. `ready` is called once the socket accepts connections.
pub async fn serve(options: Options, ready: impl FnOnce()) -> Result<(), SnapshotterError> {
    std::fs::create_dir_all(&options.root).map_err(io(format!("creating {}", options.root.display())))?;
    // The path the kernel reports mounts under (mountinfo), so a mount is recognised as ours.
    let root = std::fs::canonicalize(&options.root).map_err(io(format!("resolving {}", options.root.display())))?;
    let meta = meta::Meta::open(&root).map_err(io(format!("reading {}", options.root.display())))?;
    tracing::info!(
        root = %root.display(),
        snapshots = meta.all().count(),
        "snapshot records loaded"
    );
    let (listener, activated) = listen(&options.address)?;
    let unions = Arc::new(remote::Unions::new(options.settings.clone()));
    let service = Arc::new(service::Service::new(meta, unions));
    service.restore().await;
    tracing::info!(socket = %options.address.display(), activated, "lamina snapshotter serving");
    ready();
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {},
        }
        tracing::info!("stopping; the lamina mounts of remote snapshots stay up");
    };
    let result = tonic::transport::Server::builder()
        .add_service(containerd_snapshots::server(service))
        .serve_with_incoming_shutdown(tokio_stream::wrappers::UnixListenerStream::new(listener), shutdown)
        .await
        .map_err(|e| SnapshotterError::Serve(e.to_string()));
    if !activated {
        let _ = std::fs::remove_file(&options.address);
    }
    result
}

/// The listening socket: the one systemd (or another supervisor) passes (`LISTEN_FDS`, socket
/// activation), else a new one at `address`. A passed socket outlives the service, so while
/// it restarts containerd's connections wait in its backlog instead of being refused (gRPC
/// would then back off for seconds before trying again). Returns whether it was passed.
fn listen(address: &Path) -> Result<(tokio::net::UnixListener, bool), SnapshotterError> {
    let passed = listenfd::ListenFd::from_env()
        .take_unix_listener(0)
        .map_err(io("taking the socket passed in LISTEN_FDS"))?;
    if let Some(l) = passed {
        l.set_nonblocking(true)
            .map_err(io("setting the passed socket non-blocking"))?;
        let l = tokio::net::UnixListener::from_std(l).map_err(io("using the passed socket"))?;
        return Ok((l, true));
    }
    if let Some(dir) = address.parent() {
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    }
    match std::fs::remove_file(address) {
        Ok(()) => tracing::info!(socket = %address.display(), "removed a stale socket"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(format!("removing {}", address.display()))(e)),
    }
    let l = tokio::net::UnixListener::bind(address).map_err(io(format!("listening on {}", address.display())))?;
    Ok((l, false))
}
