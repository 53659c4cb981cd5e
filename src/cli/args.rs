//! The command line's argument types (clap). Commands are in the sibling modules; a type
//! that one command alone uses may live with it (`container`).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use super::container;
use crate::reference::ImageRef;
use crate::registry::manifest::Platform;
use crate::registry::ClientOptions;

/// What a mount fetches before it is read.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prefetch {
    /// Read-ahead in blob order, and the access profile where there is one.
    Auto,
    /// Read-ahead in blob order; no access profile.
    Readahead,
    /// Only what is read.
    None,
}

/// lamina: mount container images straight from an OCI registry.
#[derive(Parser, Debug)]
#[command(name = "lamina", version, about)]
pub struct Cli {
    /// Show no progress bars.
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Download every layer and extract the image into DIR (the full pull).
    Pull(PullArgs),
    /// Re-encode an image's layers as zstd:chunked (lazily mountable) and store it at DST.
    Convert(ConvertArgs),
    /// Show an image's layers and whether each can be mounted lazily.
    Inspect(InspectArgs),
    /// Mount an image read-only at MOUNTPOINT, fetching file chunks on first read.
    Mount(MountArgs),
    /// Unmount a lamina mount (also one whose daemon died).
    Umount(UmountArgs),
    /// Show what a mount has fetched: bytes and requests per layer, cache hits, wait latency.
    Stats(StatsArgs),
    /// Look after the local cache: `stats`, `ls`, `gc --max-bytes N`.
    Cache(CacheArgs),
    /// Access profiles (what workloads read, for prefetch): `ls`, `show`, `push`, `rm`.
    Profile(ProfileArgs),
    /// Make an image's gzip layers lazy without changing the image: a seekable index per
    /// layer, kept in the cache and pushed next to the image for mounts to find.
    Index(IndexArgs),
    /// Turn a writable mount's changes into a new image (one zstd:chunked layer on top).
    Commit(container::CommitArgs),
    /// Mount an image writable and run its program in it (chroot + namespaces); exits with
    /// the program's status.
    Run(container::RunArgs),
    /// Serve containerd's snapshots API (a proxy snapshotter plugin): images whose layers
    /// lamina can serve lazily start without being downloaded.
    Snapshotter(SnapshotterArgs),
    /// Benchmark lazy against full on an image and a command over emulated links: time to
    /// ready, bytes, requests, peak RSS; a table, and with --out a CSV, a report and plots.
    Bench(super::bench::BenchArgs),
    /// Serve an additional layer store for podman / CRI-O (containers/storage) at MOUNTPOINT:
    /// layers with a table of contents are taken from it instead of being downloaded.
    Store(StoreArgs),
}

/// `lamina store`.
#[derive(Args, Debug)]
pub struct StoreArgs {
    /// Where to mount it (an existing directory); storage.conf names it
    /// `additionallayerstores = ["MOUNTPOINT:ref"]`.
    pub mountpoint: PathBuf,
    /// Stay attached instead of running as a daemon.
    #[arg(long)]
    pub foreground: bool,
    /// Seconds a read waits for a chunk before failing with EIO.
    #[arg(long, default_value_t = crate::fetch::DEFAULT_FETCH_TIMEOUT.as_secs())]
    pub fetch_timeout: u64,
    /// Seconds a lookup may spend asking the registry before it fails (podman then pulls
    /// the layer itself).
    #[arg(long, default_value_t = 10)]
    pub lookup_timeout: u64,
    /// The chunk cache, shared with `lamina mount` and the snapshotter (default:
    /// $LAMINA_CACHE_DIR, /var/lib/lamina as root, else ~/.cache/lamina).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Registry settings.
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// `lamina snapshotter`.
#[derive(Args, Debug)]
pub struct SnapshotterArgs {
    /// The unix socket containerd connects to (`[proxy_plugins.lamina] address`).
    #[arg(long, default_value = crate::snapshotter::DEFAULT_ADDRESS)]
    pub address: PathBuf,
    /// Where snapshots and their records are kept.
    #[arg(long, default_value = crate::snapshotter::DEFAULT_ROOT)]
    pub root: PathBuf,
    /// The chunk cache, shared with `lamina mount` (default: $LAMINA_CACHE_DIR,
    /// /var/lib/lamina as root).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Settings file (JSON): `prepare_timeout_secs`, `fetch_timeout_secs`,
    /// `insecure_registries`, `lazy`.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Registry settings.
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// `lamina cache`.
#[derive(Args, Debug)]
pub struct CacheArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: CacheAction,
    /// Cache directory (default: $LAMINA_CACHE_DIR, /var/lib/lamina as root, else ~/.cache/lamina).
    #[arg(long, global = true)]
    pub cache_dir: Option<PathBuf>,
}

/// `lamina cache` actions.
#[derive(Subcommand, Debug)]
pub enum CacheAction {
    /// Count chunks, blobs and indexes and their bytes.
    Stats,
    /// List the layers indexed in the cache and how much of each is local.
    Ls,
    /// Evict least recently used chunks down to a quota; remove stale work files.
    Gc {
        /// The quota for chunks, in bytes (0 empties the chunk store).
        #[arg(long)]
        max_bytes: u64,
    },
}

/// `lamina profile`.
#[derive(Args, Debug)]
pub struct ProfileArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: ProfileAction,
    /// Cache directory (default: $LAMINA_CACHE_DIR, /var/lib/lamina as root, else ~/.cache/lamina).
    #[arg(long, global = true)]
    pub cache_dir: Option<PathBuf>,
    /// Registry settings.
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// `lamina profile` actions.
#[derive(Subcommand, Debug)]
pub enum ProfileAction {
    /// List the profiles in the cache.
    Ls,
    /// Show an image's profile (the cache's, else the registry's).
    Show {
        /// Image reference.
        #[arg(value_parser = parse_reference)]
        image: ImageRef,
    },
    /// Push an image's cached profile to its registry, as an artifact referring to the image.
    Push {
        /// Image reference.
        #[arg(value_parser = parse_reference)]
        image: ImageRef,
    },
    /// Remove an image's profile from the cache.
    Rm {
        /// Image reference.
        #[arg(value_parser = parse_reference)]
        image: ImageRef,
    },
}

/// `lamina stats`.
#[derive(Args, Debug)]
pub struct StatsArgs {
    /// The mount point.
    pub mountpoint: PathBuf,
    /// Cache directory the mount uses.
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Print the raw JSON.
    #[arg(long)]
    pub json: bool,
}

/// `lamina mount`.
#[derive(Args, Debug)]
pub struct MountArgs {
    /// Image reference.
    #[arg(value_parser = parse_reference)]
    pub image: ImageRef,
    /// Where to mount it (an existing directory).
    pub mountpoint: PathBuf,
    /// Stay attached instead of running as a daemon.
    #[arg(long)]
    pub foreground: bool,
    /// Seconds a read waits for a chunk before failing with EIO.
    #[arg(long, default_value_t = crate::fetch::DEFAULT_FETCH_TIMEOUT.as_secs())]
    pub fetch_timeout: u64,
    /// Keep cached chunks within this many bytes, evicting the least recently used.
    #[arg(long)]
    pub cache_max_bytes: Option<u64>,
    /// Make the mount writable, keeping the changes in DIR (kernel overlayfs upperdir format
    /// under DIR/upper; mounting again with the same DIR shows them again).
    #[arg(long, value_name = "DIR", conflicts_with = "writable")]
    pub upper: Option<PathBuf>,
    /// Make the mount writable with a fresh upper directory under the cache directory,
    /// removed when the mount ends (unless --keep).
    #[arg(long)]
    pub writable: bool,
    /// With --writable: keep the upper directory when the mount ends.
    #[arg(long, requires = "writable")]
    pub keep: bool,
    /// Record metadata-only changes of lower files as overlayfs metacopy files (no data
    /// copied until the first write); kernel overlayfs then needs `metacopy=on` to read the
    /// upper. Off by default, as the kernel's. Chosen when the upper is made and kept.
    #[arg(long)]
    pub metacopy: bool,
    /// What serves a writable mount: `kernel` = kernel overlayfs over lamina's read-only view
    /// (writes never pass through lamina; needs root), `fuse` = lamina's own overlay (every
    /// operation through FUSE; no privilege needed), `auto` = kernel as root, else fuse
    /// (and fuse if the kernel refuses). Both keep the same upper directory format.
    #[arg(long, value_name = "HOW", default_value = "auto")]
    pub overlay: crate::mount::stacked::Backend,
    /// Serve every read and write through lamina, without FUSE passthrough (which is used
    /// where the kernel has it, for files whose bytes are all local).
    #[arg(long)]
    pub no_passthrough: bool,
    /// What lamina fetches before it is read: `auto` = the image's access profile (the
    /// cache's, else the registry's) and read-ahead in blob order for readers that go on in
    /// it; `readahead` = the read-ahead only; `none` = only what is read (plus up to 1 MiB
    /// more of the file, in the same request).
    #[arg(long, value_enum, default_value_t = Prefetch::Auto)]
    pub prefetch: Prefetch,
    /// When to ask the registry about the image: `missing` = resolve a tag again when the
    /// registry answers within 3 s, else use the cache's last resolution (with a warning);
    /// `always` = the registry must resolve the tag; `never` = the cache only, no request at
    /// all. Images named by digest come from the cache whenever it has them.
    #[arg(long, value_name = "POLICY", default_value = "missing")]
    pub pull: crate::registry::PullPolicy,
    /// Serve only the image's first N layers (bottom first), as if the image ended there.
    #[arg(long, value_name = "N")]
    pub layers: Option<usize>,
    /// Cache directory (default: $LAMINA_CACHE_DIR, /var/lib/lamina as root, else ~/.cache/lamina).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Registry settings.
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// `lamina umount`.
#[derive(Args, Debug)]
pub struct UmountArgs {
    /// The mount point.
    pub mountpoint: PathBuf,
}

/// `lamina convert`.
#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// Source: a registry reference or oci:PATH[:TAG].
    pub src: crate::store::ImageLocation,
    /// Destination: a registry reference (with a tag) or oci:PATH[:TAG].
    pub dst: crate::store::ImageLocation,
    /// zstd compression level.
    #[arg(long, default_value_t = crate::format::writer::DEFAULT_ZSTD_LEVEL)]
    pub zstd_level: i32,
    /// Average chunk size of large files, in bytes (min = avg/4, max = avg*4).
    #[arg(long, default_value_t = crate::format::writer::DEFAULT_AVG_CHUNK)]
    pub chunk_size: usize,
    /// Layers converted at once (default: the number of cores).
    #[arg(long)]
    pub parallel: Option<usize>,
    /// Cache directory (default: $LAMINA_CACHE_DIR, /var/lib/lamina as root, else ~/.cache/lamina).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Registry settings (--platform limits an index to one platform).
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// `lamina index`.
#[derive(Args, Debug)]
pub struct IndexArgs {
    /// Image reference.
    #[arg(value_parser = parse_reference)]
    pub image: ImageRef,
    /// Compressed bytes between checkpoints (64 KiB to 16 MiB): a smaller span fetches less
    /// per cold read and makes a larger index (a window per checkpoint, trimmed to the bytes
    /// the stream refers back to: ~1.6 KB stored).
    #[arg(long, default_value_t = crate::format::zran::DEFAULT_SPAN, value_parser = parse_span)]
    pub span: u64,
    /// Keep the indexes in the cache only; do not push them to the registry.
    #[arg(long)]
    pub no_push: bool,
    /// Rebuild each layer's index (from the cache, else the registry) and compare.
    #[arg(long)]
    pub verify: bool,
    /// Cache directory (default: $LAMINA_CACHE_DIR, /var/lib/lamina as root, else ~/.cache/lamina).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Registry settings.
    #[command(flatten)]
    pub registry: RegistryArgs,
}

fn parse_span(s: &str) -> Result<u64, String> {
    use crate::format::zran::{MAX_SPAN, MIN_SPAN};
    let n: u64 = s.parse().map_err(|e| format!("{e}"))?;
    if !(MIN_SPAN..=MAX_SPAN).contains(&n) {
        return Err(format!("the span must be {MIN_SPAN} to {MAX_SPAN} bytes"));
    }
    Ok(n)
}

/// `lamina inspect`.
#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Image reference.
    #[arg(value_parser = parse_reference)]
    pub image: ImageRef,
    /// Also fetch every chunk of every lazy layer and check it against the TOC.
    #[arg(long)]
    pub verify: bool,
    /// Registry settings.
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// Settings for reaching registries.
#[derive(Args, Debug, Clone)]
pub struct RegistryArgs {
    /// Reach this registry host over plain HTTP (repeatable). Loopback hosts always are.
    #[arg(long = "insecure-registry", value_name = "HOST")]
    pub insecure_registries: Vec<String>,
    /// Platform to pick from a multi-platform image (os/arch[/variant]); default: this machine.
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<Platform>,
}

/// `lamina pull`.
#[derive(Args, Debug)]
pub struct PullArgs {
    /// Image reference: [registry/][namespace/]name[:tag][@sha256:digest].
    #[arg(value_parser = parse_reference)]
    pub image: ImageRef,
    /// Directory to extract into; must not exist or be empty.
    pub dir: PathBuf,
    /// Layer downloads at once.
    #[arg(long, default_value_t = crate::pull::DEFAULT_PARALLEL_DOWNLOADS)]
    pub parallel: usize,
    /// Registry settings.
    #[command(flatten)]
    pub registry: RegistryArgs,
}

pub(super) fn parse_reference(s: &str) -> Result<ImageRef, String> {
    ImageRef::parse(s).map_err(|e| e.to_string())
}

impl RegistryArgs {
    /// The registry client settings: config files, then the command line.
    pub(super) fn client_options(&self) -> anyhow::Result<ClientOptions> {
        let mut insecure = crate::config::insecure_registries()?;
        insecure.extend(self.insecure_registries.iter().cloned());
        Ok(ClientOptions {
            insecure_registries: insecure,
            ..ClientOptions::default()
        })
    }
}
