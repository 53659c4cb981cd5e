//! `lamina bench IMAGE [-- CMD ARG…]`: lazy against full on the user's own image, command and
//! links. This is the driving part (it resolves the image, starts the command in a chroot as
//! `lamina run` does, handles Ctrl-C); the engine is [`crate::bench`], which the suite calls
//! too.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use oci_spec::image::ImageConfiguration;

use super::{parse_reference, RegistryArgs};
use crate::bench::{Interrupt, Launcher, Link, Mode, Settings, Workload};
use crate::reference::ImageRef;
use crate::registry::manifest::Platform;

/// Modes measured unless `--modes` says otherwise.
const DEFAULT_MODES: &str = "full,lazy-cold,lazy-profile,lazy-warm,local";
/// Exit status after Ctrl-C (128 + SIGINT), once the partial results are written.
const INTERRUPTED_EXIT: i32 = 130;

/// `lamina bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Image reference: pulled by `full`, mounted by the lazy modes (unless --lazy-image).
    #[arg(value_parser = parse_reference)]
    pub image: ImageRef,
    /// The command and its arguments, after `--` (replace the image's Cmd; its Entrypoint
    /// stays). Default: the image's entrypoint + cmd. Run in a chroot as `lamina run` does.
    #[arg(last = true)]
    pub command: Vec<String>,
    /// Links to measure over (repeat, or separate with commas): `none` (the real network,
    /// counted only), `unlimited`, or RATE/RTT such as `unlimited/1ms`, `100mbit/20ms`,
    /// `20mbit/50ms`. Emulated in-process, checked once per link before its runs.
    #[arg(long = "link", value_name = "LINK", value_delimiter = ',', default_value = "unlimited",
          value_parser = parse_link)]
    pub links: Vec<Link>,
    /// Modes to measure, in order: full, lazy-cold, lazy-profile, lazy-warm, local (also
    /// lazy-gzindex and skopeo+umoci).
    #[arg(long, value_name = "MODES", value_delimiter = ',', default_value = DEFAULT_MODES,
          value_parser = Mode::parse)]
    pub modes: Vec<Mode>,
    /// Repetitions of every run (the report gives the median and the range).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub reps: u64,
    /// The command is ready at the first line of its output (stdout or stderr) holding
    /// PATTERN (for servers that never exit); it is then stopped. Its output is a pipe: a
    /// program that buffers a pipe's output must flush that line (e.g. `python3 -u`).
    #[arg(long, value_name = "PATTERN", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub ready_when: Option<String>,
    /// Seconds a run may take before it counts as failed (1 to 604800).
    #[arg(long, value_name = "SECONDS", default_value_t = 600,
          value_parser = clap::value_parser!(u64).range(1..=604_800))]
    pub timeout: u64,
    /// Write the CSV, the markdown report and the plots (SVG, PNG) here.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Mount this image in the lazy modes instead of IMAGE (e.g. its `lamina convert`ed
    /// zstd:chunked form), so the full pull of the original is compared with it.
    #[arg(long, value_name = "IMAGE", value_parser = parse_reference)]
    pub lazy_image: Option<ImageRef>,
    /// Scratch directory for trees, caches and mounts (removed at the end; default: a new
    /// directory under the system's temporary directory).
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// Registry settings.
    #[command(flatten)]
    pub registry: RegistryArgs,
}

fn parse_link(s: &str) -> Result<Link, String> {
    Link::parse(s).map_err(|e| e.to_string())
}

/// Starts the command chrooted into the tree, as `lamina run` does (namespaces, the image's
/// environment, user and working directory).
struct ChrootLauncher {
    config: ImageConfiguration,
    command: Vec<String>,
}

impl Launcher for ChrootLauncher {
    fn spawn(&self, root: &Path) -> std::io::Result<Child> {
        let hostname = format!("lamina-bench-{}", std::process::id());
        let spec =
            crate::run::spec(&self.config, &self.command, root, &hostname).map_err(|e| std::io::Error::other(e.0))?;
        crate::run::spawn_chroot(root, &spec, Stdio::piped(), Stdio::piped(), true)
    }

    fn argv(&self) -> Vec<String> {
        let c = self.config.config().clone().unwrap_or_default();
        let mut argv = c.entrypoint().clone().unwrap_or_default();
        if self.command.is_empty() {
            argv.extend(c.cmd().clone().unwrap_or_default());
        } else {
            argv.extend(self.command.iter().cloned());
        }
        argv
    }
}

/// `repository:tag` or `repository@digest`, without the registry.
fn path_of(r: &ImageRef) -> String {
    match (&r.digest, &r.tag) {
        (Some(d), _) => format!("{}@{d}", r.repository),
        (None, Some(t)) => format!("{}:{t}", r.repository),
        (None, None) => format!("{}:latest", r.repository),
    }
}

pub(super) fn bench(args: BenchArgs, runtime: &tokio::runtime::Runtime, progress: bool) -> anyhow::Result<()> {
    if !rustix::process::geteuid().is_root() {
        anyhow::bail!("lamina bench needs root (its mounts serve every user; the command runs in a chroot)");
    }
    let client = args.registry.client_options()?;
    let lazy_ref = args.lazy_image.clone().unwrap_or_else(|| args.image.clone());
    let host = args.image.api_host().to_string();
    if lazy_ref.api_host() != host {
        anyhow::bail!("--lazy-image must be in the same registry as IMAGE ({host})");
    }
    if args.registry.platform.is_some() {
        // The lamina processes the bench starts would each pick this machine's platform.
        anyhow::bail!("lamina bench measures images of this machine's platform: --platform is not supported");
    }
    let platform = Platform::host();
    let registry = crate::registry::Registry::new(&args.image.registry, &host, &client)?;
    // Plain HTTP: the link relays stand in for the registry's address. HTTPS (its certificate
    // names the registry, so nothing can stand in for it): the relays are the proxy of the
    // lamina processes measured, and every TLS connection crosses the link as a tunnel.
    let registry_at = if registry.is_https() {
        format!("https://{host}")
    } else {
        host.clone()
    };
    let full = runtime
        .block_on(crate::registry::resolve_image(&registry, &args.image, &platform))
        .with_context(|| format!("resolving {}", args.image))?;
    let lazy_owned;
    let lazy = if args.lazy_image.is_some() {
        lazy_owned = runtime
            .block_on(crate::registry::resolve_image(&registry, &lazy_ref, &platform))
            .with_context(|| format!("resolving {lazy_ref}"))?;
        &lazy_owned
    } else {
        &full
    };
    let launcher = Arc::new(ChrootLauncher {
        config: full.config.clone(),
        command: args.command.clone(),
    });
    if launcher.argv().is_empty() {
        anyhow::bail!("the image has no Entrypoint or Cmd: give the command after --");
    }
    let largest = lazy.layers.iter().max_by_key(|l| l.size);
    let workload = Workload {
        name: args.image.repository.rsplit('/').next().unwrap_or("image").to_string(),
        registry: registry_at,
        full_image: path_of(&args.image),
        lazy_image: path_of(&lazy_ref),
        gzip_image: Some(path_of(&args.image)),
        lazy_digest: Some(lazy.manifest_digest.to_string()),
        lazy_layer_bytes: Some(lazy.layers.iter().map(|l| l.size).sum()),
        check_blob: largest.map(|l| format!("/v2/{}/blobs/{}", lazy_ref.repository, l.digest)),
        launcher,
        ready_when: args.ready_when.clone(),
        timeout: Duration::from_secs(args.timeout),
    };
    let work = match &args.work_dir {
        Some(d) => d.join(format!("lamina-bench-{}", std::process::id())),
        None => std::env::temp_dir().join(format!("lamina-bench-{}", std::process::id())),
    };
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    // Absolute and without symlinks: clean-up finds its mounts in mountinfo by this path.
    let work = work
        .canonicalize()
        .with_context(|| format!("resolving {}", work.display()))?;
    let interrupt = Interrupt::default();
    let on_signal = interrupt.clone();
    runtime.spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            on_signal.set();
            eprintln!("lamina: interrupted: stopping the current run, cleaning up, writing what was measured");
        }
    });
    let mut links = args.links.clone();
    Link::sort(&mut links);
    links.dedup();
    let settings = Settings {
        lamina: std::env::current_exe().context("finding the lamina binary")?,
        lamina_env: Vec::new(),
        work: work.clone(),
        links: links.clone(),
        modes: args.modes.clone(),
        reps: args.reps as usize,
        budget_secs: f64::INFINITY,
        drop_caches: true,
        push_profile: false,
        progress,
        interrupt: interrupt.clone(),
    };
    let results = crate::bench::sweep::measure(&settings, std::slice::from_ref(&workload), &mut |l| {
        tracing::info!("{l}")
    });
    crate::bench::clean_up(&settings.lamina, &work);
    let report = crate::bench::report::Report {
        title: format!("lamina bench {}", args.image),
        command: std::env::args().map(|a| shell_word(&a)).collect::<Vec<_>>().join(" "),
        machine: crate::bench::machine(),
        links: &links,
        modes: &args.modes,
        workloads: vec![(workload.name.clone(), workload.command_line())],
        results: &results,
    };
    outln!("{}", report.terminal().trim_end())?;
    if let Some(out) = &args.out {
        let written = report
            .write(out, "bench")
            .with_context(|| format!("writing the results to {}", out.display()))?;
        for p in written {
            outln!("wrote {}", p.display())?;
        }
    }
    if results.interrupted {
        std::process::exit(INTERRUPTED_EXIT);
    }
    Ok(())
}

/// `word` as a shell would need it to stay one word.
fn shell_word(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./:=,@+%".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_words() {
        assert_eq!(shell_word("--link"), "--link");
        assert_eq!(shell_word("print('x')"), r"'print('\''x'\'')'");
        assert_eq!(shell_word("a b"), "'a b'");
        assert_eq!(shell_word(""), "''");
    }
}
