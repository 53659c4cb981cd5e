//! The command line: argument types and one function per command. `main.rs` only parses and
//! calls [`run`].

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

mod container;

use crate::reference::ImageRef;
use crate::registry::manifest::Platform;
use crate::registry::ClientOptions;

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
    /// Turn a writable mount's changes into a new image (one zstd:chunked layer on top).
    Commit(container::CommitArgs),
    /// Mount an image writable and run its program in it (chroot + namespaces); exits with
    /// the program's status.
    Run(container::RunArgs),
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
    /// Serve every read and write through lamina, without FUSE passthrough (which is used
    /// where the kernel has it, for files whose bytes are all local).
    #[arg(long)]
    pub no_passthrough: bool,
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

fn parse_reference(s: &str) -> Result<ImageRef, String> {
    ImageRef::parse(s).map_err(|e| e.to_string())
}

/// Hosts listed as insecure in lamina's config files (`/etc/lamina/config.json`, then
/// `$XDG_CONFIG_HOME/lamina/config.json` or `~/.config/lamina/config.json`):
/// `{"insecure_registries": ["host:port", …]}`.
fn configured_insecure_registries() -> anyhow::Result<Vec<String>> {
    #[derive(serde::Deserialize)]
    struct Config {
        #[serde(default)]
        insecure_registries: Vec<String>,
    }
    let mut paths = vec![PathBuf::from("/etc/lamina/config.json")];
    if let Some(x) = std::env::var_os("XDG_CONFIG_HOME") {
        paths.push(PathBuf::from(x).join("lamina/config.json"));
    } else if let Some(h) = std::env::var_os("HOME") {
        paths.push(PathBuf::from(h).join(".config/lamina/config.json"));
    }
    let mut out = Vec::new();
    for p in paths {
        match std::fs::read_to_string(&p) {
            Ok(text) => {
                let c: Config = serde_json::from_str(&text).with_context(|| format!("reading {}", p.display()))?;
                out.extend(c.insecure_registries);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", p.display())),
        }
    }
    Ok(out)
}

impl RegistryArgs {
    fn client_options(&self) -> anyhow::Result<ClientOptions> {
        let mut insecure = configured_insecure_registries()?;
        insecure.extend(self.insecure_registries.iter().cloned());
        Ok(ClientOptions {
            insecure_registries: insecure,
            ..ClientOptions::default()
        })
    }
}

/// Run a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match cli.command {
        Command::Pull(args) => runtime.block_on(pull(args, !cli.quiet)),
        Command::Convert(args) => runtime.block_on(convert(args, !cli.quiet)),
        Command::Inspect(args) => runtime.block_on(inspect(args)),
        Command::Mount(args) => mount(args, &runtime),
        Command::Umount(args) => crate::mount::unmount(&args.mountpoint).map_err(anyhow::Error::msg),
        Command::Stats(args) => stats(args),
        Command::Cache(args) => cache(args),
        Command::Commit(args) => container::commit(args, &runtime),
        Command::Run(args) => {
            let code = container::run(args, &runtime)?;
            drop(runtime);
            std::process::exit(code)
        }
    }
}

async fn pull(args: PullArgs, progress: bool) -> anyhow::Result<()> {
    let options = crate::pull::PullOptions {
        platform: args.registry.platform.clone().unwrap_or_else(Platform::host),
        client: args.registry.client_options()?,
        parallel_downloads: args.parallel,
        progress,
    };
    let report = crate::pull::pull(&args.image, &args.dir, &options).await?;
    let secs = report.elapsed.as_secs_f64();
    println!(
        "pulled {} ({}) into {}: {} layers, {} entries, {:.1} MB downloaded, {:.1} MB uncompressed, {:.2} s ({:.1} MB/s)",
        report.reference,
        report.manifest_digest,
        args.dir.display(),
        report.layers,
        report.entries,
        report.compressed_bytes as f64 / 1e6,
        report.tar_bytes as f64 / 1e6,
        secs,
        report.compressed_bytes as f64 / 1e6 / secs.max(1e-9),
    );
    Ok(())
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

async fn convert(args: ConvertArgs, progress: bool) -> anyhow::Result<()> {
    if !(crate::format::writer::MIN_AVG_CHUNK..=crate::format::writer::MAX_AVG_CHUNK).contains(&args.chunk_size) {
        anyhow::bail!(
            "--chunk-size must be between {} and {} bytes",
            crate::format::writer::MIN_AVG_CHUNK,
            crate::format::writer::MAX_AVG_CHUNK
        );
    }
    let writer = crate::format::writer::WriterOptions {
        level: args.zstd_level,
        min_chunk: args.chunk_size / 4,
        avg_chunk: args.chunk_size,
        max_chunk: args.chunk_size * 4,
        single_chunk_max: (args.chunk_size * 4) as u64,
    };
    let options = crate::convert::ConvertOptions {
        writer,
        parallel: args
            .parallel
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())),
        platform: args.registry.platform.clone(),
        cache_dir: args.cache_dir.clone().unwrap_or_else(crate::cache::default_cache_dir),
        client: args.registry.client_options()?,
        progress,
    };
    let started = std::time::Instant::now();
    let report = crate::convert::convert(&args.src, &args.dst, &options).await?;
    for (platform, layers) in &report.images {
        if let Some(p) = platform {
            println!("{p}:");
        }
        for l in layers {
            let how = match &l.outcome {
                crate::convert::LayerOutcome::Converted { elapsed, tar_bytes } => format!(
                    "converted {} uncompressed in {:.2} s ({:.0} MB/s)",
                    mb(*tar_bytes),
                    elapsed.as_secs_f64(),
                    *tar_bytes as f64 / 1e6 / elapsed.as_secs_f64().max(1e-9)
                ),
                crate::convert::LayerOutcome::Cached => "reused an earlier conversion".into(),
                crate::convert::LayerOutcome::AlreadyChunked => "already zstd:chunked".into(),
            };
            println!(
                "  {} ({}) -> {} ({}): {how}",
                &l.source.to_string()[..19],
                mb(l.source_size),
                &l.digest.to_string()[..19],
                mb(l.size)
            );
        }
    }
    println!(
        "converted {} -> {} ({}) in {:.2} s",
        args.src,
        args.dst,
        report.digest,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn inspect(args: InspectArgs) -> anyhow::Result<()> {
    let client = args.registry.client_options()?;
    let registry = crate::registry::Registry::new(&args.image.registry, args.image.api_host(), &client)?;
    let platform = args.registry.platform.clone().unwrap_or_else(Platform::host);
    let image = crate::registry::resolve_image(&registry, &args.image, &platform).await?;
    println!("image     {}", args.image);
    println!("manifest  {} ({platform})", image.manifest_digest);
    println!("config    {}", image.config_digest);
    let tocs = futures_util::future::join_all(
        image
            .layers
            .iter()
            .map(|l| crate::fetch::locate::read_layer_toc(&registry, &args.image.repository, l)),
    )
    .await;
    // Indexes are derived data: keep them for later mounts (best effort).
    let cache = crate::cache::CacheDir::open(&crate::cache::default_cache_dir()).ok();
    let mut lazy = 0;
    for (l, toc) in image.layers.iter().zip(tocs) {
        if let (Some(c), Ok(crate::fetch::locate::LayerToc { index: Some(ix), .. })) = (&cache, &toc) {
            if let Err(e) = crate::index::disk::save(ix, &c.index_path(&l.digest)) {
                tracing::debug!(error = %e, "could not keep the layer index");
            }
        }
        let media = l.media_type.rsplit('.').next().unwrap_or(&l.media_type);
        match toc {
            Ok(t) => {
                let summary = match &t.index {
                    Some(ix) => {
                        lazy += 1;
                        format!(
                            "{} entries, {} chunks, {} of files, TOC {} bytes ({})",
                            ix.entries.len(),
                            ix.chunks.len(),
                            mb(ix.file_bytes()),
                            t.toc_bytes,
                            if t.by_annotation { "annotation" } else { "footer" }
                        )
                    }
                    None => "whole blob must be streamed".into(),
                };
                println!(
                    "layer     {} {:>10} {media:<14} {:<28} {summary}",
                    l.digest,
                    mb(l.size),
                    t.format.to_string()
                );
                if let (true, Some(ix)) = (args.verify, &t.index) {
                    let v = crate::fetch::verify::verify_layer(&registry, &args.image.repository, l, ix)
                        .await
                        .map_err(|e| anyhow::anyhow!("layer {}: verification failed: {e}", l.digest))?;
                    println!(
                        "verified  {} files, {} chunks, {} against the TOC",
                        v.files,
                        v.chunks,
                        mb(v.bytes)
                    );
                }
            }
            Err(e) => println!(
                "layer     {} {:>10} {media:<14} TOC unusable: {e}",
                l.digest,
                mb(l.size)
            ),
        }
    }
    println!("{lazy} of {} layers can be mounted lazily", image.layers.len());
    Ok(())
}

/// Environment variable carrying the readiness pipe from `lamina mount` to its daemon.
const READY_FD_ENV: &str = "LAMINA_READY_FD";

fn mount(args: MountArgs, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let cache_dir = args.cache_dir.clone().unwrap_or_else(crate::cache::default_cache_dir);
    if !args.mountpoint.is_dir() {
        anyhow::bail!("mount point {} is not a directory", args.mountpoint.display());
    }
    if !args.foreground {
        return spawn_mount_daemon(&args, &cache_dir);
    }
    let ready_fd: Option<i32> = std::env::var(READY_FD_ENV).ok().and_then(|v| v.parse().ok());
    let upper = match (&args.upper, args.writable) {
        (Some(dir), _) => Some(crate::mount::UpperOptions {
            dir: std::path::absolute(dir)?,
            remove_at_end: false,
        }),
        (None, true) => Some(crate::mount::UpperOptions {
            dir: cache_dir.join("uppers").join(format!(
                "{}-{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos())
            )),
            remove_at_end: !args.keep,
        }),
        (None, false) => None,
    };
    let options = crate::mount::MountOptions {
        platform: args.registry.platform.clone().unwrap_or_else(Platform::host),
        client: args.registry.client_options()?,
        cache_dir,
        fetch_timeout: std::time::Duration::from_secs(args.fetch_timeout.max(1)),
        cache_max_bytes: args.cache_max_bytes,
        upper,
        passthrough: !args.no_passthrough,
    };
    let prepared = match runtime.block_on(crate::mount::prepare(&args.image, &options)) {
        Ok(p) => p,
        Err(e) => {
            crate::mount::signal_ready(ready_fd, &Err(format!("{e}\n")));
            return Err(e.into());
        }
    };
    let image = args.image.to_string();
    let mountpoint = args.mountpoint.clone();
    let image_for_state = image.clone();
    crate::mount::serve(
        &image_for_state,
        prepared,
        &args.mountpoint,
        &options,
        runtime.handle().clone(),
        |r| {
            if r.is_ok() && ready_fd.is_none() {
                eprintln!(
                    "mounted {image} at {} (foreground; stop with lamina umount)",
                    mountpoint.display()
                );
            }
            crate::mount::signal_ready(ready_fd, &r.map_err(|e| format!("{e}\n")));
        },
    )?;
    Ok(())
}

/// Start `lamina mount --foreground` as a daemon and wait until it says the mount is ready.
fn spawn_mount_daemon(args: &MountArgs, cache_dir: &std::path::Path) -> anyhow::Result<()> {
    let mut argv: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    argv.push("--foreground".into());
    let (child, log_path) = start_mount_daemon(argv, cache_dir)?;
    println!(
        "mounted {} at {} (daemon pid {}, log {})",
        args.image,
        args.mountpoint.display(),
        child.id(),
        log_path.display()
    );
    Ok(())
}

/// Start `lamina ARGS` (a `mount --foreground` command line) as a daemon in a session of its
/// own, logging under the cache directory; returns once it says the mount is ready.
fn start_mount_daemon(
    args: Vec<std::ffi::OsString>,
    cache_dir: &std::path::Path,
) -> anyhow::Result<(std::process::Child, PathBuf)> {
    use std::io::BufRead;
    use std::os::fd::AsRawFd;
    let logs = cache_dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    static STARTED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let log_path = logs.join(match n {
        0 => format!("mount.{}.log", std::process::id()),
        n => format!("mount.{}-{n}.log", std::process::id()),
    });
    let log = std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let (reader, writer) = rustix::pipe::pipe().context("creating the readiness pipe")?;
    let exe = std::env::current_exe().context("finding the lamina executable")?;
    let mut cmd = if std::path::Path::new("/usr/bin/setsid").exists() {
        let mut c = std::process::Command::new("/usr/bin/setsid");
        c.arg(exe);
        c
    } else {
        std::process::Command::new(exe)
    };
    cmd.args(args)
        .env(READY_FD_ENV, writer.as_raw_fd().to_string())
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    let child = cmd.spawn().context("starting the mount daemon")?;
    drop(writer);
    let mut line = String::new();
    std::io::BufReader::new(std::fs::File::from(reader))
        .read_line(&mut line)
        .context("waiting for the mount daemon")?;
    if line.trim() == "ready" {
        Ok((child, log_path))
    } else if line.trim().is_empty() {
        anyhow::bail!(
            "the mount daemon exited before the mount was ready; see {}",
            log_path.display()
        )
    } else {
        anyhow::bail!("{}", line.trim())
    }
}

fn stats(args: StatsArgs) -> anyhow::Result<()> {
    let cache_dir = args.cache_dir.clone().unwrap_or_else(crate::cache::default_cache_dir);
    let path = crate::mount::state_path(&cache_dir, &args.mountpoint);
    let text = std::fs::read(&path).with_context(|| {
        format!(
            "no running lamina mount at {} (looked for {})",
            args.mountpoint.display(),
            path.display()
        )
    })?;
    if args.json {
        println!("{}", String::from_utf8_lossy(&text));
        return Ok(());
    }
    let state: crate::mount::MountState = serde_json::from_slice(&text).context("reading the mount state")?;
    let s = &state.stats;
    println!("image      {}", state.image);
    println!("mount      {} (daemon pid {})", state.mountpoint.display(), state.pid);
    println!(
        "fetched    {} in {} requests, {} chunks; {} cache hits; {} timeouts",
        mb(s.fetched_bytes),
        s.requests,
        s.fetched_chunks,
        s.hits,
        s.timeouts
    );
    println!(
        "chunk wait p50 {:.1} ms, p99 {:.1} ms",
        s.wait_p50_micros as f64 / 1e3,
        s.wait_p99_micros as f64 / 1e3
    );
    let cache = crate::cache::CacheDir::open(&cache_dir)?;
    let store = crate::cache::chunks::ChunkStore::open(&cache_dir)?;
    for (i, digest) in state.layers.iter().enumerate() {
        let c = s.layers.get(digest).cloned().unwrap_or_default();
        let status = state.layer_status.get(i).map(String::as_str).unwrap_or("indexed");
        let local = digest
            .parse()
            .ok()
            .and_then(|d| crate::index::disk::load(&cache.index_path(&d)).ok())
            .map(|ix| {
                let total: u64 = ix.chunks.iter().map(|c| c.len).sum();
                let here: u64 = ix
                    .chunks
                    .iter()
                    .filter(|c| store.contains(&c.digest))
                    .map(|c| c.len)
                    .sum();
                if total == 0 {
                    100.0
                } else {
                    100.0 * here as f64 / total as f64
                }
            });
        let local = match status {
            "indexed" => local.map_or("?".to_string(), |p| format!("{p:.1}%")),
            other => other.to_string(),
        };
        println!(
            "layer      {} fetched {:>10} in {:>5} requests, {local} local",
            &digest[..19],
            mb(c.bytes),
            c.requests
        );
    }
    Ok(())
}

fn cache(args: CacheArgs) -> anyhow::Result<()> {
    let dir = args.cache_dir.clone().unwrap_or_else(crate::cache::default_cache_dir);
    match args.action {
        CacheAction::Stats => {
            let u = crate::cache::gc::usage(&dir);
            println!("cache   {}", dir.display());
            println!("chunks  {:>8} {:>12}", u.chunks, mb(u.chunk_bytes));
            println!("blobs   {:>8} {:>12}", u.blobs, mb(u.blob_bytes));
            println!("indexes {:>8} {:>12}", u.indexes, mb(u.index_bytes));
        }
        CacheAction::Ls => {
            let store = crate::cache::chunks::ChunkStore::open(&dir)?;
            let Ok(entries) = std::fs::read_dir(dir.join("indexes")) else {
                return Ok(());
            };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Some(hex) = name.strip_suffix(".lidx") else {
                    continue;
                };
                match crate::index::disk::load(&e.path()) {
                    Ok(ix) => {
                        let total: u64 = ix.chunks.iter().map(|c| c.len).sum();
                        let here: u64 = ix
                            .chunks
                            .iter()
                            .filter(|c| store.contains(&c.digest))
                            .map(|c| c.len)
                            .sum();
                        let share = if total == 0 {
                            100.0
                        } else {
                            100.0 * here as f64 / total as f64
                        };
                        println!(
                            "sha256:{hex} {:>7} entries {:>12} of files, {share:5.1}% local",
                            ix.entries.len(),
                            mb(total)
                        );
                    }
                    Err(err) => println!("sha256:{hex} unreadable: {err}"),
                }
            }
        }
        CacheAction::Gc { max_bytes } => {
            let c = crate::cache::gc::collect(&dir, max_bytes);
            println!(
                "evicted {} chunks ({}), removed {} stale work files",
                c.chunks,
                mb(c.bytes),
                c.temp_files
            );
        }
    }
    Ok(())
}
