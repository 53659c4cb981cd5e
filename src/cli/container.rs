//! `lamina commit` and `lamina run`: the writable layer as a new image, and as a container.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Args, ValueEnum};

use super::{mb, parse_reference, RegistryArgs};
use crate::mount::daemon;
use crate::reference::ImageRef;
use crate::registry::manifest::Platform;
use crate::store::ImageLocation;
use crate::upper::Identity;

/// `lamina commit`.
#[derive(Args, Debug)]
pub struct CommitArgs {
    /// A writable lamina mount point, or an upper directory (as given to --upper, or kept by
    /// --writable --keep).
    pub source: PathBuf,
    /// Destination: a registry reference with a tag, or oci:PATH[:TAG].
    pub dst: ImageLocation,
    /// Comment of the new history entry.
    #[arg(long, short)]
    pub message: Option<String>,
    /// zstd compression level of the new layer.
    #[arg(long, default_value_t = crate::format::writer::DEFAULT_ZSTD_LEVEL)]
    pub zstd_level: i32,
    /// Cache directory (default: $LAMINA_CACHE_DIR, /var/lib/lamina as root, else ~/.cache/lamina).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Registry settings.
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// How `lamina run` starts the program.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    /// New mount, PID and UTS namespaces and chroot into the mount (needs root).
    Chroot,
    /// An OCI runtime bundle started with `crun run` (needs a machine where crun can start
    /// containers: cgroups v2 or v1, not hybrid).
    Crun,
    /// The same with `runc run`.
    Runc,
}

/// `lamina run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// Image reference.
    #[arg(value_parser = parse_reference)]
    pub image: ImageRef,
    /// The program and its arguments, after `--` (replace the image's Cmd; its Entrypoint stays).
    #[arg(last = true)]
    pub command: Vec<String>,
    /// Keep the changes in DIR (default: a fresh writable layer, removed afterwards).
    #[arg(long, value_name = "DIR")]
    pub upper: Option<PathBuf>,
    /// Leave the mount (and its writable layer) in place when the program ends.
    #[arg(long)]
    pub keep: bool,
    /// How to start the program.
    #[arg(long, value_enum, default_value_t = Runtime::Chroot)]
    pub runtime: Runtime,
    /// When to ask the registry about the image: `missing` = resolve a tag again when the
    /// registry answers within 3 s, else use the cache's last resolution (with a warning);
    /// `always` = the registry must resolve the tag; `never` = the cache only, no request at
    /// all. Images named by digest come from the cache whenever it has them.
    #[arg(long, value_name = "POLICY", default_value = "missing")]
    pub pull: crate::registry::PullPolicy,
    /// Cache directory (default: $LAMINA_CACHE_DIR, /var/lib/lamina as root, else ~/.cache/lamina).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Registry settings.
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// `--cache-dir` and registry settings for a `lamina mount` started on the user's behalf.
fn passed_on(cache_dir: &Path, registry: &RegistryArgs) -> Vec<OsString> {
    let mut a: Vec<OsString> = vec!["--cache-dir".into(), cache_dir.into()];
    for h in &registry.insecure_registries {
        a.extend([OsString::from("--insecure-registry"), h.into()]);
    }
    if let Some(p) = &registry.platform {
        a.extend([OsString::from("--platform"), p.to_string().into()]);
    }
    a
}

fn unique_dir(cache_dir: &Path, kind: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    cache_dir.join(kind).join(format!("{}-{nanos}", std::process::id()))
}

pub(super) fn commit(args: CommitArgs, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let cache_dir = args.cache_dir.clone().unwrap_or_else(crate::cache::default_cache_dir);
    let options = crate::commit::CommitOptions {
        cache_dir: cache_dir.clone(),
        client: args.registry.client_options()?,
        writer: crate::format::writer::WriterOptions {
            level: args.zstd_level,
            ..Default::default()
        },
        created_by: "lamina commit".into(),
        message: args.message.clone(),
    };
    let source = std::path::absolute(&args.source)?;
    let mut _temp = None;
    let (upper, view) = if Identity::is_upper_dir(&source) {
        let root = source.join("upper");
        let root_fd = rustix::fs::open(
            &root,
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .with_context(|| format!("opening {}", root.display()))?;
        if crate::commit::layer::needs_view(std::os::fd::AsFd::as_fd(&root_fd))? {
            // Moved directories or metacopy files: what they hold from below is only in a merged
            // view; mount it.
            let identity = Identity::read(&source)?;
            let image = crate::commit::base_reference(&identity)?.to_string();
            let point = unique_dir(&cache_dir, "commit-mounts");
            let mut margs = crate::run::mount_args(&image, &point, Some(&source), false);
            margs.extend(passed_on(&cache_dir, &args.registry));
            let t = daemon::TempMount::start(margs, point.clone(), &cache_dir, false)?;
            _temp = Some(t);
            (source.clone(), Some(point))
        } else {
            (source.clone(), None)
        }
    } else {
        let state_path = crate::mount::state_path(&cache_dir, &source);
        let text = std::fs::read(&state_path).map_err(|_| {
            anyhow::anyhow!(
                "{} is neither a lamina upper directory nor a running lamina mount (looked for {})",
                source.display(),
                state_path.display()
            )
        })?;
        let state: crate::mount::MountState = serde_json::from_slice(&text).context("reading the mount state")?;
        let upper = state
            .upper
            .ok_or_else(|| anyhow::anyhow!("{} is a read-only mount: nothing to commit", source.display()))?;
        (upper, Some(source.clone()))
    };
    let started = std::time::Instant::now();
    let report = runtime.block_on(crate::commit::commit(&upper, view.as_deref(), &args.dst, &options))?;
    let s = &report.summary;
    outln!(
        "committed {} on {} as {} ({}): layer {} ({}, {} entries, {} whiteouts, {} opaque dirs, {} of files); base layers: {} mounted, {} uploaded; {:.2} s",
        upper.display(),
        report.base,
        args.dst,
        report.manifest_digest,
        &report.layer_digest.to_string()[..19],
        mb(report.layer_size),
        s.entries,
        s.whiteouts,
        s.opaque_dirs,
        mb(s.file_bytes),
        report.base_layers_mounted,
        report.base_layers_uploaded,
        started.elapsed().as_secs_f64()
    )?;
    if s.skipped_sockets > 0 {
        eprintln!(
            "lamina: {} sockets left out (a layer cannot hold them)",
            s.skipped_sockets
        );
    }
    Ok(())
}

/// Run the image's program; returns its exit code.
pub(super) fn run(args: RunArgs, runtime: &tokio::runtime::Runtime) -> anyhow::Result<i32> {
    if !rustix::process::geteuid().is_root() {
        anyhow::bail!("lamina run needs root (its mount serves every user; namespaces, chroot)");
    }
    let cache_dir = args.cache_dir.clone().unwrap_or_else(crate::cache::default_cache_dir);
    let client = args.registry.client_options()?;
    let platform = args.registry.platform.clone().unwrap_or_else(Platform::host);
    let registry = crate::registry::Registry::new(&args.image.registry, args.image.api_host(), &client)?;
    let cache = crate::cache::CacheDir::open(&cache_dir).with_context(|| format!("cache {}", cache_dir.display()))?;
    let image = runtime.block_on(crate::registry::resolve_image_with(
        &registry,
        &args.image,
        &platform,
        Some(&cache),
        args.pull,
    ))?;
    // Mount exactly the image whose config is used.
    let mut pinned = args.image.clone();
    pinned.digest = Some(image.manifest_digest.clone());
    let point = unique_dir(&cache_dir, "run");
    let upper = args.upper.as_deref().map(std::path::absolute).transpose()?;
    let mut margs = crate::run::mount_args(&pinned.to_string(), &point, upper.as_deref(), args.keep);
    margs.extend(passed_on(&cache_dir, &args.registry));
    if args.pull == crate::registry::PullPolicy::Never {
        margs.extend([OsString::from("--pull"), "never".into()]);
    }
    let mount = daemon::TempMount::start(margs, point.clone(), &cache_dir, args.keep)?;
    let hostname = format!("lamina-{}", std::process::id());
    let spec = crate::run::spec(&image.config, &args.command, &mount.point, &hostname)?;
    let status = match args.runtime {
        Runtime::Chroot => crate::run::run_chroot(&mount.point, &spec)
            .with_context(|| format!("starting {:?} in {}", spec.argv[0], mount.point.display()))?,
        Runtime::Crun | Runtime::Runc => {
            let runtime = if args.runtime == Runtime::Crun { "crun" } else { "runc" };
            let bundle = mount.point.with_extension("bundle");
            crate::run::run_oci(runtime, &bundle, &hostname, &mount.point, &spec)
                .with_context(|| format!("running the bundle {} with {runtime}", bundle.display()))?
        }
    };
    if args.keep {
        eprintln!(
            "lamina: kept the mount at {} (lamina umount {0} when done)",
            mount.point.display()
        );
    }
    drop(mount);
    Ok(crate::run::exit_code(status))
}
