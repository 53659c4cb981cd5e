//! Benchmark of `lamina convert`'s writer, on real Debian content:
//!
//! 1. Conversion throughput (uncompressed MB/s on one core) and sizes — zstd:chunked against
//!    the original gzip layer and against plain zstd at the same level — plus TOC bytes, for
//!    each layer of the demo image (scripts/build-image.sh).
//! 2. Dedup between two versions of one package (Debian's bookworm and bookworm-security
//!    builds of libpython3.11-stdlib and libssl3, fetched with apt-get download): the share of
//!    the new version's bytes whose chunks the old version already has, with lamina's
//!    content-defined chunks against fixed-size chunks of the same average size.
//!
//! Run: `cargo bench --bench convert` (needs root for the image build, and apt).

#[allow(dead_code)]
#[path = "common.rs"]
mod common;

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use lamina::format::toc::{to_index, Dialect};
use lamina::format::writer::{write_zstd_chunked, WriterOptions};
use lamina::format::zstd_chunked::{decode_toc, location_from_annotations};
use lamina::index::LayerIndex;

fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn convert(tar: &[u8], options: &WriterOptions) -> (Vec<u8>, LayerIndex, u64, f64) {
    let mut blob = Vec::with_capacity(tar.len() / 2);
    let t = Instant::now();
    let written = write_zstd_chunked(tar, &mut blob, options).unwrap();
    let secs = t.elapsed().as_secs_f64();
    let loc = location_from_annotations(&written.annotations).unwrap().unwrap();
    let toc = decode_toc(
        &blob[loc.offset as usize..(loc.offset + loc.compressed_len) as usize],
        &loc,
    )
    .unwrap();
    let index = to_index("bench", &toc, blob.len() as u64, Dialect::ZstdChunked).unwrap();
    (blob, index, written.toc_bytes, secs)
}

fn layer_tars(layout: &Path) -> Vec<(String, u64, Vec<u8>)> {
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let blob = |d: &str| layout.join("blobs/sha256").join(d.trim_start_matches("sha256:"));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob(index["manifests"][0]["digest"].as_str().unwrap())).unwrap())
            .unwrap();
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let d = l["digest"].as_str().unwrap();
            let gz = std::fs::read(blob(d)).unwrap();
            let mut tar = Vec::new();
            flate2::read::MultiGzDecoder::new(gz.as_slice())
                .read_to_end(&mut tar)
                .unwrap();
            (d[7..19].to_string(), gz.len() as u64, tar)
        })
        .collect()
}

/// (digest, len) of every chunk of every regular file, as lamina chunks them.
fn cdc_chunks(index: &LayerIndex) -> Vec<([u8; 32], u64)> {
    index.chunks.iter().map(|c| (c.digest, c.len)).collect()
}

/// The same files cut into fixed-size pieces (files up to `single` stay whole, as lamina does).
fn fixed_chunks(tar: &[u8], piece: usize, single: u64) -> Vec<([u8; 32], u64)> {
    let mut out = Vec::new();
    let mut archive = tar::Archive::new(tar);
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        if e.header().entry_type() != tar::EntryType::Regular || e.size() == 0 {
            continue;
        }
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        let pieces: Vec<&[u8]> = if data.len() as u64 <= single {
            vec![&data[..]]
        } else {
            data.chunks(piece).collect()
        };
        for p in pieces {
            let mut d = [0u8; 32];
            hex::decode_to_slice(lamina::digest::Digest::of(p).hex(), &mut d).unwrap();
            out.push((d, p.len() as u64));
        }
    }
    out
}

fn shared_share(old: &[([u8; 32], u64)], new: &[([u8; 32], u64)]) -> (f64, u64) {
    let have: HashSet<[u8; 32]> = old.iter().map(|c| c.0).collect();
    let total: u64 = new.iter().map(|c| c.1).sum();
    let missing: u64 = new.iter().filter(|c| !have.contains(&c.0)).map(|c| c.1).sum();
    (1.0 - missing as f64 / total as f64, missing)
}

fn package_tar(dir: &Path, package: &str, version: &str) -> Vec<u8> {
    let deb_dir = dir.join(format!("{package}_{version}"));
    std::fs::create_dir_all(&deb_dir).unwrap();
    if std::fs::read_dir(&deb_dir).unwrap().next().is_none() {
        run(Command::new("apt-get")
            .current_dir(&deb_dir)
            .args(["download", "-q", &format!("{package}={version}")]));
    }
    let deb = std::fs::read_dir(&deb_dir).unwrap().next().unwrap().unwrap().path();
    run(Command::new("dpkg-deb").arg("--fsys-tarfile").arg(deb)).stdout
}

fn candidate_versions(package: &str) -> Vec<String> {
    let out = run(Command::new("apt-cache").args(["madison", package]));
    let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split('|').nth(1))
        .map(|s| s.trim().to_string())
        .collect();
    v.dedup();
    v
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let root = env!("CARGO_MANIFEST_DIR");
    let options = WriterOptions::default();
    println!("machine: {}", common::machine());
    println!(
        "writer: zstd level {}, chunks min/avg/max {}/{}/{} KiB, files up to {} KiB whole\n",
        options.level,
        options.min_chunk >> 10,
        options.avg_chunk >> 10,
        options.max_chunk >> 10,
        options.single_chunk_max >> 10
    );

    let image =
        String::from_utf8_lossy(&run(Command::new("bash").arg(format!("{root}/scripts/build-image.sh"))).stdout)
            .trim()
            .to_string();
    let layout = PathBuf::from(image.rsplit_once(':').unwrap().0);
    println!("## Conversion of the demo image's layers ({image})\n");
    println!("| layer | tar MB | gzip MB | zstd MB | zstd:chunked MB | chunked/gzip | chunked/zstd | TOC KB | entries | chunks | MB/s (1 core) |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (name, gz, tar) in layer_tars(&layout) {
        let plain = zstd::bulk::compress(&tar, options.level).unwrap().len() as u64;
        let (blob, index, toc, secs) = convert(&tar, &options);
        let mb = |b: u64| b as f64 / 1e6;
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} | {:.1} | {:.3} | {:.3} | {:.1} | {} | {} | {:.0} |",
            mb(tar.len() as u64),
            mb(gz),
            mb(plain),
            mb(blob.len() as u64),
            blob.len() as f64 / gz as f64,
            blob.len() as f64 / plain as f64,
            toc as f64 / 1e3,
            index.entries.len(),
            index.chunks.len(),
            mb(tar.len() as u64) / secs
        );
    }

    println!("\n## zstd level against size and speed (largest layer)\n");
    println!("| level | zstd:chunked MB | chunked/gzip | MB/s (1 core) |");
    println!("|---|---|---|---|");
    let (_, gz, tar) = layer_tars(&layout).into_iter().max_by_key(|l| l.2.len()).unwrap();
    for level in [1, 3, 6, 10] {
        let o = WriterOptions {
            level,
            ..options.clone()
        };
        let (blob, _, _, secs) = convert(&tar, &o);
        println!(
            "| {level} | {:.1} | {:.3} | {:.0} |",
            blob.len() as f64 / 1e6,
            blob.len() as f64 / gz as f64,
            tar.len() as f64 / 1e6 / secs
        );
    }

    println!(
        "\n## Chunk size against size and TOC (largest layer, level {})\n",
        options.level
    );
    println!("| avg chunk KiB | zstd:chunked MB | TOC KB | chunks |");
    println!("|---|---|---|---|");
    for avg in [16usize << 10, 32 << 10, 64 << 10, 128 << 10] {
        let o = WriterOptions {
            min_chunk: avg / 4,
            avg_chunk: avg,
            max_chunk: avg * 4,
            single_chunk_max: (avg * 4) as u64,
            ..options.clone()
        };
        let (blob, index, toc, _) = convert(&tar, &o);
        println!(
            "| {} | {:.1} | {:.1} | {} |",
            avg >> 10,
            blob.len() as f64 / 1e6,
            toc as f64 / 1e3,
            index.chunks.len()
        );
    }

    println!("\n## Dedup between two versions of one package (bytes of the new version already present)\n");
    println!("| package | old → new | avg chunk KiB | chunks (new) | CDC shared | CDC to fetch MB | fixed shared | fixed to fetch MB |");
    println!("|---|---|---|---|---|---|---|---|");
    let cache = std::env::var("LAMINA_BENCH_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(format!(
                "{}/.cache/lamina-bench-debs",
                std::env::var("HOME").unwrap_or("/tmp".into())
            ))
        });
    for package in ["libpython3.11-stdlib", "libssl3", "libc6"] {
        let versions = candidate_versions(package);
        if versions.len() < 2 {
            println!("| {package} | only one version available: skipped | | | | | |");
            continue;
        }
        let (new_v, old_v) = (&versions[0], &versions[1]);
        let (old, new) = (package_tar(&cache, package, old_v), package_tar(&cache, package, new_v));
        for avg in [16usize << 10, 32 << 10, 64 << 10, 128 << 10] {
            let o = WriterOptions {
                min_chunk: avg / 4,
                avg_chunk: avg,
                max_chunk: avg * 4,
                single_chunk_max: (avg * 4) as u64,
                ..options.clone()
            };
            let (_, old_index, _, _) = convert(&old, &o);
            let (_, new_index, _, _) = convert(&new, &o);
            let (cdc, cdc_missing) = shared_share(&cdc_chunks(&old_index), &cdc_chunks(&new_index));
            let fixed_old = fixed_chunks(&old, avg, o.single_chunk_max);
            let fixed_new = fixed_chunks(&new, avg, o.single_chunk_max);
            let (fixed, fixed_missing) = shared_share(&fixed_old, &fixed_new);
            println!(
                "| {package} | {old_v} → {new_v} | {} | {} | {:.1}% | {:.2} | {:.1}% | {:.2} |",
                avg >> 10,
                new_index.chunks.len(),
                cdc * 100.0,
                cdc_missing as f64 / 1e6,
                fixed * 100.0,
                fixed_missing as f64 / 1e6
            );
        }
    }
}
