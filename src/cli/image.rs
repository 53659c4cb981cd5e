//! `pull`, `convert` and `inspect`: whole-image commands.

use super::{mb, ConvertArgs, InspectArgs, PullArgs};
use crate::registry::manifest::Platform;

pub(super) async fn pull(args: PullArgs, progress: bool) -> anyhow::Result<()> {
    let options = crate::pull::PullOptions {
        platform: args.registry.platform.clone().unwrap_or_else(Platform::host),
        client: args.registry.client_options()?,
        parallel_downloads: args.parallel,
        progress,
    };
    let report = crate::pull::pull(&args.image, &args.dir, &options).await?;
    let secs = report.elapsed.as_secs_f64();
    outln!(
        "pulled {} ({}) into {}: {} layers, {} entries, {:.1} MB downloaded in {} requests, {:.1} MB uncompressed, {:.2} s ({:.1} MB/s)",
        report.reference,
        report.manifest_digest,
        args.dir.display(),
        report.layers,
        report.entries,
        report.compressed_bytes as f64 / 1e6,
        report.requests,
        report.tar_bytes as f64 / 1e6,
        secs,
        report.compressed_bytes as f64 / 1e6 / secs.max(1e-9),
    )?;
    Ok(())
}

pub(super) async fn convert(args: ConvertArgs, progress: bool) -> anyhow::Result<()> {
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
            outln!("{p}:")?;
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
            outln!(
                "  {} ({}) -> {} ({}): {how}",
                &l.source.to_string()[..19],
                mb(l.source_size),
                &l.digest.to_string()[..19],
                mb(l.size)
            )?;
        }
    }
    outln!(
        "converted {} -> {} ({}) in {:.2} s",
        args.src,
        args.dst,
        report.digest,
        started.elapsed().as_secs_f64()
    )?;
    Ok(())
}

pub(super) async fn inspect(args: InspectArgs) -> anyhow::Result<()> {
    let client = args.registry.client_options()?;
    let registry = crate::registry::Registry::new(&args.image.registry, args.image.api_host(), &client)?;
    let platform = args.registry.platform.clone().unwrap_or_else(Platform::host);
    let image = crate::registry::resolve_image(&registry, &args.image, &platform).await?;
    outln!("image     {}", args.image)?;
    outln!("manifest  {} ({platform})", image.manifest_digest)?;
    outln!("config    {}", image.config_digest)?;
    let tocs = futures_util::future::join_all(
        image
            .layers
            .iter()
            .map(|l| crate::fetch::locate::read_layer_toc(&registry, &args.image.repository, l)),
    )
    .await;
    // Indexes are derived data: keep them for later mounts (best effort).
    let cache = crate::cache::CacheDir::open(&crate::cache::default_cache_dir()).ok();
    let gzip_indexes = match &cache {
        Some(c) => {
            crate::fetch::gzindex::for_mount(
                &registry,
                &args.image.repository,
                &image.manifest_digest,
                &image.layers,
                c,
                true,
            )
            .await
        }
        None => Default::default(),
    };
    let mut lazy = 0;
    for (l, toc) in image.layers.iter().zip(tocs) {
        if let (Some(c), Ok(crate::fetch::locate::LayerToc { index: Some(ix), .. })) = (&cache, &toc) {
            if let Err(e) = crate::index::disk::save(ix, &c.index_path(&l.digest)) {
                tracing::debug!(error = %e, "could not keep the layer index");
            }
            c.record_index_toc(&l.digest, crate::fetch::locate::annotated_toc_digest(l));
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
                    None => match gzip_indexes.get(&l.digest) {
                        Some(gz) => {
                            lazy += 1;
                            let table = gz.index_table_bytes();
                            format!(
                                "gzip index: {} entries, {} checkpoints every {} KiB, table {} + windows {} ({:.1}% of the layer)",
                                gz.index.entries.len(),
                                gz.points.len(),
                                gz.span >> 10,
                                mb(table),
                                mb(gz.windows_size),
                                100.0 * (table + gz.windows_size) as f64 / l.size.max(1) as f64
                            )
                        }
                        None if crate::fetch::gzindex::indexable(l) => {
                            "whole blob must be streamed (no gzip index: `lamina index` makes one)".into()
                        }
                        None => "whole blob must be streamed".into(),
                    },
                };
                outln!(
                    "layer     {} {:>10} {media:<14} {:<28} {summary}",
                    l.digest,
                    mb(l.size),
                    t.format.to_string()
                )?;
                if let (true, Some(ix)) = (args.verify, &t.index) {
                    let v = crate::fetch::verify::verify_layer(&registry, &args.image.repository, l, ix)
                        .await
                        .map_err(|e| anyhow::anyhow!("layer {}: verification failed: {e}", l.digest))?;
                    outln!(
                        "verified  {} files, {} chunks, {} against the TOC",
                        v.files,
                        v.chunks,
                        mb(v.bytes)
                    )?;
                }
            }
            Err(e) => outln!(
                "layer     {} {:>10} {media:<14} TOC unusable: {e}",
                l.digest,
                mb(l.size)
            )?,
        }
    }
    outln!("{lazy} of {} layers can be mounted lazily", image.layers.len())?;
    Ok(())
}
