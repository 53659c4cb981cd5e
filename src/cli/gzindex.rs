//! `lamina index IMAGE`: seekable indexes for an image's gzip layers, kept in the cache and
//! pushed next to the image (the image itself is not touched); `--verify` rebuilds each index
//! from its layer and compares.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;

use super::{mb, IndexArgs};
use crate::fetch::gzindex;
use crate::registry::manifest::Platform;
use crate::registry::referrers::Pushed;
use crate::registry::Registry;

pub(super) async fn index(args: IndexArgs, show_progress: bool) -> anyhow::Result<()> {
    let cache_dir = args.cache_dir.clone().unwrap_or_else(crate::cache::default_cache_dir);
    let cache = crate::cache::CacheDir::open(&cache_dir).with_context(|| format!("cache {}", cache_dir.display()))?;
    let client = args.registry.client_options()?;
    let registry = Arc::new(Registry::new(&args.image.registry, args.image.api_host(), &client)?);
    let platform = args.registry.platform.clone().unwrap_or_else(Platform::host);
    let image = crate::registry::resolve_image(&registry, &args.image, &platform).await?;
    let repo = &args.image.repository;
    outln!("image     {} ({})", args.image, image.manifest_digest)?;
    let wanted: Vec<_> = image.layers.iter().filter(|l| gzindex::indexable(l)).collect();
    for l in image.layers.iter().filter(|l| !gzindex::indexable(l)) {
        outln!(
            "layer     {} skipped: not a plain gzip or uncompressed layer (lazy already, or zstd)",
            l.digest
        )?;
    }
    if wanted.is_empty() {
        outln!("nothing to index")?;
        return Ok(());
    }
    let progress = crate::progress::Progress::new(show_progress);
    if args.verify {
        let mut missing: Vec<_> = wanted
            .iter()
            .filter(|l| gzindex::load_cached(&cache, l).is_none())
            .copied()
            .collect();
        if !missing.is_empty() {
            let found = gzindex::find(&registry, repo, &image.manifest_digest, &missing, &cache).await?;
            missing.retain(|l| !found.contains_key(&l.digest));
        }
        if let Some(l) = missing.first() {
            anyhow::bail!("layer {} has no gzip index in the cache or the registry", l.digest);
        }
        for l in &wanted {
            let gz = gzindex::load_cached(&cache, l).context("the index just kept")?;
            let bar = progress.bytes(format!("verify {}", &l.digest.hex()[..12]), l.size);
            let scratch = cache.temp_path("gzwindows");
            let again = gzindex::build(registry.clone(), repo, l, gz.span, scratch.clone(), move |n| {
                bar.set_position(n)
            })
            .await;
            let _ = std::fs::remove_file(&scratch);
            let again = again.map_err(anyhow::Error::msg)?;
            // Compared in their stored form (what a mount reads back).
            if crate::format::gzip_index::encode(&again) != crate::format::gzip_index::encode(&gz) {
                anyhow::bail!(
                    "layer {}: the index does not match the layer ({} checkpoints and {} entries stored, {} and {} rebuilt)",
                    l.digest,
                    gz.points.len(),
                    gz.index.entries.len(),
                    again.points.len(),
                    again.index.entries.len()
                );
            }
            outln!(
                "verified  {} {} checkpoints, {} entries, {} chunks: the index matches the layer",
                l.digest,
                gz.points.len(),
                gz.index.entries.len(),
                gz.index.chunks.len()
            )?;
        }
        return Ok(());
    }
    for l in wanted {
        let started = Instant::now();
        // The cache's index when it was built here with this span (its windows all there).
        let cached = gzindex::load_cached(&cache, l)
            .filter(|gz| gz.points.is_empty() || gz.span == crate::format::zran::effective_span(args.span, l.size))
            .filter(|gz| gzindex::has_all_windows(&cache, gz));
        let gz = match cached {
            Some(gz) => gz,
            None => {
                let bar = progress.bytes(format!("index {}", &l.digest.hex()[..12]), l.size);
                let scratch = cache.temp_path("gzwindows");
                let gz = gzindex::build(registry.clone(), repo, l, args.span, scratch.clone(), move |n| {
                    bar.set_position(n)
                })
                .await
                .map_err(|e| {
                    let _ = std::fs::remove_file(&scratch);
                    anyhow::Error::msg(e)
                })?;
                gzindex::save(&cache, &gz, Some(&scratch)).context("keeping the index in the cache")?;
                gz
            }
        };
        let table = crate::format::gzip_index::compressed_table(&gz)?.len() as u64;
        outln!(
            "layer     {} {:>10}: {} entries, {} checkpoints, index {} + windows {} = {:.1}% of the layer ({:.1} s)",
            l.digest,
            mb(l.size),
            gz.index.entries.len(),
            gz.points.len(),
            mb(table),
            mb(gz.windows_size),
            100.0 * (table + gz.windows_size) as f64 / l.size.max(1) as f64,
            started.elapsed().as_secs_f64()
        )?;
        if args.no_push {
            continue;
        }
        let windows = gzindex::windows_path(&cache, &l.digest);
        match gzindex::push(&registry, repo, &image.manifest_digest, &gz, windows)
            .await
            .with_context(|| format!("pushing the index of layer {}", l.digest))?
        {
            Pushed::Referrers(d) => outln!("pushed    {d} (found through the referrers API)")?,
            Pushed::FallbackTag(d, tag) => outln!("pushed    {d} (no referrers API here: listed under the tag {tag})")?,
        }
    }
    Ok(())
}
