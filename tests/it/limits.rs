//! Issue 13, bounded against hostile sizes: a zstd:chunked TOC (valid checksum) claiming a
//! 1 TiB chunk, and a chunk that really inflates to 1 GiB, served by a daemon that stays up
//! with bounded memory; `lamina stats` into a closed pipe.

use std::io::Read as _;
use std::os::unix::fs::FileExt;
use std::path::Path;

use sha2::{Digest as _, Sha256};

use crate::support::layout::{push_layers, Layer};
use crate::support::mount::{require_fuse, Mounted};
use crate::support::registry::TestRegistry;
use crate::support::{lamina, require_root, require_tools};

/// Most memory the daemon may have used at its peak (VmHWM) after serving the hostile
/// layers: a daemon that held a 1 GiB chunk (or allocated 1 TiB) is far above it.
const MAX_DAEMON_HWM_BYTES: u64 = 256 << 20;
/// Uncompressed length of the chunk that really inflates: lamina's cap on a data chunk, so it
/// is served (streamed into the cache), not refused.
const GIB: u64 = 1 << 30;

/// One file of a hand-made zstd:chunked layer, in one chunk (one zstd frame), whatever its
/// TOC entry claims.
struct HandFile {
    name: &'static str,
    frame: Vec<u8>,
    size: u64,
    digest: String,
}

fn sha256(mut data: impl std::io::Read) -> String {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = data.read(&mut buf).unwrap();
        if n == 0 {
            return format!("sha256:{}", hex::encode(h.finalize()));
        }
        h.update(&buf[..n]);
    }
}

/// A file whose TOC entry tells the truth.
fn honest(name: &'static str, content: &[u8]) -> HandFile {
    HandFile {
        name,
        frame: zstd::encode_all(content, 3).unwrap(),
        size: content.len() as u64,
        digest: sha256(content),
    }
}

/// `len` bytes of `byte`, really: a tiny frame that inflates to `len`.
fn inflating(name: &'static str, byte: u8, len: u64) -> HandFile {
    let mut frame = Vec::new();
    zstd::stream::copy_encode(std::io::repeat(byte).take(len), &mut frame, 3).unwrap();
    HandFile {
        name,
        frame,
        size: len,
        digest: sha256(std::io::repeat(byte).take(len)),
    }
}

/// A zstd:chunked layer of `files` (payload frames, the TOC in a skippable frame, the
/// footer), with the TOC position and checksum annotations, as containers/storage writes them.
/// It carries no tar: a lazy mount reads only the TOC and the chunks.
fn zstd_chunked(files: &[HandFile]) -> Layer {
    use lamina::format::zstd_chunked as zc;
    let mut blob = Vec::new();
    let mut entries = Vec::new();
    for f in files {
        let offset = blob.len();
        blob.extend_from_slice(&f.frame);
        entries.push(serde_json::json!({
            "type": "reg", "name": f.name, "mode": 0o644, "size": f.size, "digest": f.digest,
            "offset": offset, "endOffset": blob.len(), "chunkDigest": f.digest,
        }));
    }
    let json = serde_json::to_vec(&serde_json::json!({"version": 1, "entries": entries})).unwrap();
    let toc = zstd::encode_all(&json[..], 3).unwrap();
    let toc_pos = (blob.len() as u64 + 8, toc.len() as u64, json.len() as u64);
    blob.extend(zc::skippable_frame(&toc));
    blob.extend(zc::skippable_frame(&zc::footer(toc_pos, (0, 0, 0))));
    Layer {
        // Not a tar's digest (there is none); a lazy mount never checks it.
        diff_id: sha256(&blob[..]),
        blob,
        media_type: "application/vnd.oci.image.layer.v1.tar+zstd".into(),
        annotations: Some(serde_json::json!({
            zc::MANIFEST_POSITION_KEY: format!("{}:{}:{}:1", toc_pos.0, toc_pos.1, toc_pos.2),
            zc::MANIFEST_CHECKSUM_KEY: sha256(&toc[..]),
        })),
    }
}

/// The daemon's peak resident memory (VmHWM), in bytes.
fn daemon_hwm_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM in {status}"));
    kib * 1024
}

fn read_at(path: &Path, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let n = std::fs::File::open(path)?.read_at(&mut buf, offset)?;
    buf.truncate(n);
    Ok(buf)
}

#[test]
fn hostile_chunk_sizes_give_eio_or_stream_and_the_daemon_stays_up() {
    if !require_tools(&["docker-registry", "skopeo"]) || !require_root() || !require_fuse() {
        return;
    }
    let registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let huge = HandFile {
        // A TOC that claims 1 TiB from one 13-byte frame: refused by the cap, never allocated.
        size: 1 << 40,
        ..honest("huge", b"x")
    };
    let layer = zstd_chunked(&[honest("good", b"good bytes"), huge, inflating("gig", 0xab, GIB)]);
    assert!(
        layer.blob.len() < 1 << 20,
        "the hostile layer is small: {}",
        layer.blob.len()
    );
    let image = push_layers(w, &registry.addr, "limits", &[layer]);
    let cache = w.join("cache");
    // A generous deadline: inflating 1 GiB on a loaded machine must not turn into a timeout.
    let m = Mounted::new(&image, &w.join("mnt"), &cache, &["--fetch-timeout", "300"]);

    // The 1 TiB chunk: EIO at once, twice, and the daemon serves on.
    for _ in 0..2 {
        let e = read_at(&m.point.join("huge"), 0, 4096).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(5), "reading the 1 TiB chunk: {e}");
        assert!(m.daemon_alive(), "the daemon died on the 1 TiB chunk");
        assert_eq!(std::fs::read(m.point.join("good")).unwrap(), b"good bytes");
    }

    // The mount said which file of which layer breaks a cap.
    let logs: String = std::fs::read_dir(cache.join("logs"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap_or_default())
        .collect();
    let warning = logs
        .lines()
        .find(|l| l.contains("over a cap"))
        .unwrap_or_else(|| panic!("no warning in {logs}"));
    assert!(
        warning.contains("huge") && warning.contains("sha256:") && warning.contains("1099511627776"),
        "{warning}"
    );

    // The chunk that really inflates to 1 GiB: streamed into the cache, served, verified.
    let tail = read_at(&m.point.join("gig"), GIB - (128 << 10), 128 << 10).unwrap();
    assert_eq!(tail.len(), 128 << 10);
    assert!(tail.iter().all(|b| *b == 0xab), "wrong bytes in the 1 GiB chunk");
    assert!(m.daemon_alive());
    assert_eq!(std::fs::read(m.point.join("good")).unwrap(), b"good bytes");
    let hwm = daemon_hwm_bytes(m.pid);
    eprintln!("daemon VmHWM after the hostile layer: {} MiB", hwm >> 20);
    assert!(
        hwm < MAX_DAEMON_HWM_BYTES,
        "the daemon's peak memory was {} MiB",
        hwm >> 20
    );

    // `lamina stats` into a pipe whose reader is gone: a quiet end, no panic.
    for args in [&[][..], &["--json"][..]] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = lamina()
            .arg("stats")
            .args(args)
            .arg(&m.point)
            .env("LAMINA_CACHE_DIR", &cache)
            .stdout(writer)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.is_empty(),
            "stats {args:?} into a closed pipe: {:?}\n{stderr}",
            out.status
        );
    }
}
