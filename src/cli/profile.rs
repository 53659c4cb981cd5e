//! `profile ls | show | push | rm`: the access profiles in the cache and in registries.

use anyhow::Context as _;

use super::{ProfileAction, ProfileArgs, RegistryArgs};
use crate::digest::Digest;
use crate::profile::{self, share, Profile};
use crate::reference::ImageRef;
use crate::registry::manifest::Platform;
use crate::registry::Registry;

pub(super) async fn profile(args: ProfileArgs) -> anyhow::Result<()> {
    let cache_dir = args.cache_dir.clone().unwrap_or_else(crate::cache::default_cache_dir);
    match &args.action {
        ProfileAction::Ls => {
            for p in profile::list(&cache_dir) {
                let chunks: usize = p.files.iter().map(|f| f.chunks.as_ref().map_or(1, |r| r.len())).sum();
                outln!(
                    "{} {:>3} runs {:>7} files {chunks:>8} chunk ranges",
                    p.image,
                    p.runs,
                    p.files.len()
                )?;
            }
        }
        ProfileAction::Show { image } => {
            let (registry, digest) = resolve(image, &args.registry).await?;
            let p = match profile::load(&cache_dir, &digest) {
                Some(p) => p,
                None => share::find(&registry, &image.repository, &digest)
                    .await?
                    .with_context(|| format!("{image} ({digest}) has no profile in the cache or the registry"))?,
            };
            show(&p)?;
        }
        ProfileAction::Push { image } => {
            let (registry, digest) = resolve(image, &args.registry).await?;
            let p = profile::load(&cache_dir, &digest).with_context(|| {
                format!("no profile of {image} ({digest}) in the cache: mount it and run the workload first")
            })?;
            match share::push(&registry, &image.repository, &digest, &p)
                .await
                .with_context(|| format!("pushing the profile of {image}"))?
            {
                share::Pushed::Referrers(d) => outln!("pushed {d} (found through the referrers API)")?,
                share::Pushed::FallbackTag(d, tag) => {
                    outln!("pushed {d} (no referrers API here: listed under the tag {tag})")?
                }
            }
        }
        ProfileAction::Rm { image } => {
            let digest = match image
                .digest
                .as_ref()
                .filter(|d| profile::path_in(&cache_dir, d).exists())
            {
                Some(d) => d.clone(),
                None => resolve(image, &args.registry).await?.1,
            };
            if !profile::remove(&cache_dir, &digest)? {
                anyhow::bail!("no profile of {image} ({digest}) in the cache");
            }
            outln!("removed the profile of {digest}")?;
        }
    }
    Ok(())
}

/// The registry of `image` and the digest of its manifest for this platform.
async fn resolve(image: &ImageRef, registry_args: &RegistryArgs) -> anyhow::Result<(Registry, Digest)> {
    let client = registry_args.client_options()?;
    let registry = Registry::new(&image.registry, image.api_host(), &client)?;
    let platform = registry_args.platform.clone().unwrap_or_else(Platform::host);
    let resolved = crate::registry::resolve_image(&registry, image, &platform).await?;
    Ok((registry, resolved.manifest_digest))
}

fn show(p: &Profile) -> anyhow::Result<()> {
    outln!("image  {}", p.image)?;
    outln!("runs   {}", p.runs)?;
    outln!("files  {}", p.files.len())?;
    for f in &p.files {
        let chunks = match &f.chunks {
            None => "whole".to_string(),
            Some(r) => r
                .iter()
                .map(|(a, b)| if a == b { a.to_string() } else { format!("{a}-{b}") })
                .collect::<Vec<_>>()
                .join(","),
        };
        outln!(
            "{:>8} ms  {}  {}  [{chunks}]",
            f.t_ms,
            &f.layer[..19.min(f.layer.len())],
            f.path
        )?;
    }
    Ok(())
}
