//! Finding and reading a layer's TOC over the network: annotations first (one Range request
//! fetches the TOC), else one request for the blob's last bytes to find a footer.

use crate::format::estargz;
use crate::format::toc::{to_index, Dialect, TocError};
use crate::format::zstd_chunked::{self as zc, TocLocation, ZstdDialect};
use crate::index::LayerIndex;
use crate::registry::resolve::Layer;
use crate::registry::{Registry, RegistryError};

/// Bytes fetched from the end of a blob to look for a footer: enough for the zstd:chunked
/// footer in its skippable frame (72) and for eStargz's (51).
pub const FOOTER_PROBE_BYTES: u64 = 72;

/// The lazy-loading format of a layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LazyFormat {
    /// zstd:chunked, in one of its dialects.
    ZstdChunked(ZstdDialect),
    /// eStargz.
    Estargz,
    /// No TOC: only a full read of the blob gives its files.
    Plain,
}

impl std::fmt::Display for LazyFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LazyFormat::ZstdChunked(ZstdDialect::Current) => "zstd:chunked",
            LazyFormat::ZstdChunked(ZstdDialect::Older) => "zstd:chunked (older dialect)",
            LazyFormat::Estargz => "eStargz",
            LazyFormat::Plain => "plain (no TOC)",
        })
    }
}

/// A layer's TOC, read and checked.
#[derive(Debug)]
pub struct LayerToc {
    /// The format found.
    pub format: LazyFormat,
    /// The index (None for plain layers).
    pub index: Option<LayerIndex>,
    /// Compressed TOC bytes fetched.
    pub toc_bytes: u64,
    /// Whether the TOC was found by its annotations (else by the footer).
    pub by_annotation: bool,
}

/// Reading a TOC failed.
#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    /// The registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The TOC or its location is bad.
    #[error(transparent)]
    Toc(#[from] TocError),
}

fn toc_error(layer: &Layer, reason: String) -> LocateError {
    LocateError::Toc(TocError {
        layer: layer.digest.to_string(),
        entry: None,
        reason,
    })
}

/// The TOC digest a layer's manifest annotation names (zstd:chunked, either dialect, or
/// eStargz), if it names one.
pub fn annotated_toc_digest(layer: &Layer) -> Option<&str> {
    [
        crate::format::zstd_chunked::MANIFEST_CHECKSUM_KEY,
        crate::format::zstd_chunked::OLD_MANIFEST_CHECKSUM_KEY,
        crate::format::estargz::TOC_DIGEST_KEY,
    ]
    .iter()
    .find_map(|k| layer.annotations.get(*k).map(String::as_str))
}

/// Read and check the TOC of `layer`.
pub async fn read_layer_toc(registry: &Registry, repo: &str, layer: &Layer) -> Result<LayerToc, LocateError> {
    let annotated = zc::location_from_annotations(&layer.annotations).map_err(|r| toc_error(layer, r))?;
    if let Some(loc) = annotated {
        return read_zstd(registry, repo, layer, loc, true).await;
    }
    let estargz_digest = match layer.annotations.get(estargz::TOC_DIGEST_KEY) {
        Some(d) => Some(
            d.parse()
                .map_err(|e| toc_error(layer, format!("{}: {e}", estargz::TOC_DIGEST_KEY)))?,
        ),
        None => None,
    };
    let probe = FOOTER_PROBE_BYTES.min(layer.size);
    let tail = registry
        .blob_range(repo, &layer.digest, layer.size - probe, probe)
        .await?;
    if let Some(loc) = zc::location_from_footer(&tail) {
        return read_zstd(registry, repo, layer, loc, false).await;
    }
    if let Some((toc_offset, footer_len)) = estargz::parse_footer(&tail) {
        let end = layer.size - footer_len as u64;
        if toc_offset >= end {
            return Err(toc_error(
                layer,
                format!("eStargz TOC offset {toc_offset} is past the footer"),
            ));
        }
        let member = registry
            .blob_range(repo, &layer.digest, toc_offset, end - toc_offset)
            .await?;
        let toc = estargz::decode_toc(&member, estargz_digest.as_ref()).map_err(|r| toc_error(layer, r))?;
        let index = to_index(
            &layer.digest.to_string(),
            &toc,
            layer.size,
            Dialect::Estargz { toc_offset },
        )?;
        return Ok(LayerToc {
            format: LazyFormat::Estargz,
            index: Some(index),
            toc_bytes: end - toc_offset,
            by_annotation: estargz_digest.is_some(),
        });
    }
    Ok(LayerToc {
        format: LazyFormat::Plain,
        index: None,
        toc_bytes: 0,
        by_annotation: false,
    })
}

async fn read_zstd(
    registry: &Registry,
    repo: &str,
    layer: &Layer,
    loc: TocLocation,
    by_annotation: bool,
) -> Result<LayerToc, LocateError> {
    zc::check_location(&loc, layer.size).map_err(|r| toc_error(layer, r))?;
    let compressed = registry
        .blob_range(repo, &layer.digest, loc.offset, loc.compressed_len)
        .await?;
    let toc = zc::decode_toc(&compressed, &loc).map_err(|r| toc_error(layer, r))?;
    let index = to_index(&layer.digest.to_string(), &toc, layer.size, Dialect::ZstdChunked)?;
    Ok(LayerToc {
        format: LazyFormat::ZstdChunked(loc.dialect),
        index: Some(index),
        toc_bytes: loc.compressed_len,
        by_annotation,
    })
}
