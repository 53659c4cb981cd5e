//! The command line: argument types and one function per command. `main.rs` only parses and
//! calls [`run`].

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

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
