//! `cache stats | ls | gc`.

use super::{mb, CacheAction, CacheArgs};

pub(super) fn cache(args: CacheArgs) -> anyhow::Result<()> {
    let dir = args.cache_dir.clone().unwrap_or_else(crate::cache::default_cache_dir);
    match args.action {
        CacheAction::Stats => {
            let u = crate::cache::gc::usage(&dir);
            outln!("cache   {}", dir.display())?;
            outln!("chunks  {:>8} {:>12}", u.chunks, mb(u.chunk_bytes))?;
            outln!("blobs   {:>8} {:>12}", u.blobs, mb(u.blob_bytes))?;
            outln!("indexes {:>8} {:>12}", u.indexes, mb(u.index_bytes))?;
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
                        let share = store.local_percent(&ix);
                        outln!(
                            "sha256:{hex} {:>7} entries {:>12} of files, {share:5.1}% local",
                            ix.entries.len(),
                            mb(total)
                        )?;
                    }
                    Err(err) => outln!("sha256:{hex} unreadable: {err}")?,
                }
            }
        }
        CacheAction::Gc { max_bytes } => {
            let c = crate::cache::gc::collect(&dir, max_bytes);
            outln!(
                "evicted {} chunks ({}), removed {} stale work files",
                c.chunks,
                mb(c.bytes),
                c.temp_files
            )?;
        }
    }
    Ok(())
}
