//! Trimming a checkpoint's window to the bytes its stream refers back to.
//!
//! A [`Checkpoint`](super::zran::Checkpoint) keeps the 32 KiB of output before it, because a
//! back-reference after it may reach that far. Most of those bytes are never referred to: the
//! first 32 KiB of output after the checkpoint are all that can reach into the window, and they
//! copy from a fraction of it. Zeroing the rest changes nothing about inflating from the
//! checkpoint and lets the stored window compress to a fraction of its size.
//!
//! Which bytes are referred to is found with the inflater alone (no second deflate decoder):
//! inflate the first ≤ 32 KiB after the checkpoint four times, each time with a made-up window.
//!
//! ```text
//! window all 0x00, then all 0xFF   an output byte that differs came from the window
//! window[p] = p & 0xFF, then p >> 8   …and from position p (copies of copies too)
//! ```
//!
//! The trimmed window is then checked the only way that matters: inflating from it gives the
//! same output as the whole window. Past 32 KiB of output nothing can reach the window, so the
//! rest of the stream is the same too. Anything short of that keeps the whole window.

use std::io::Read;

use super::zran::{Resume, WINDOW_BYTES};

/// A window waiting for the output after its checkpoint.
pub(super) struct Pending {
    pub(super) window: Vec<u8>,
    pub(super) bits: u8,
    /// The blob from the checkpoint's start byte, as consumed.
    pub(super) compressed: Vec<u8>,
    /// The first [`WINDOW_BYTES`] of output after the checkpoint.
    pub(super) after: Vec<u8>,
    /// Kept whole: the input needed was not all seen.
    pub(super) whole: bool,
}

/// Compressed bytes kept for a waiting window (32 KiB of output never needs this much: a
/// literal costs at most 15 bits); past it the window is kept whole.
pub(super) const MAX_PENDING_INPUT: usize = 256 << 10;

/// `window` with the bytes the stream after the checkpoint does not refer to set to zero, or
/// `None` when that cannot be shown. `compressed` is the blob from the checkpoint's start
/// byte (`bits` as kept), enough of it to inflate `after`: the output that followed the
/// checkpoint, its first [`WINDOW_BYTES`] (or all of it, if the stream ended sooner).
pub fn trim(window: &[u8], bits: u8, compressed: &[u8], after: &[u8]) -> Option<Vec<u8>> {
    if window.is_empty() || window.len() > WINDOW_BYTES || after.len() > WINDOW_BYTES {
        return None;
    }
    let n = after.len();
    let len = window.len();
    let inflate = |w: &[u8]| inflate_prefix(w, bits, compressed, n);
    let zeros = inflate(&vec![0u8; len])?;
    let ones = inflate(&vec![0xFFu8; len])?;
    let low = inflate(&(0..len).map(|p| p as u8).collect::<Vec<_>>())?;
    let high = inflate(&(0..len).map(|p| (p >> 8) as u8).collect::<Vec<_>>())?;
    let mut trimmed = vec![0u8; len];
    for o in 0..n {
        if zeros[o] == ones[o] {
            continue; // a literal, or a copy of output after the checkpoint
        }
        let p = usize::from(high[o]) << 8 | usize::from(low[o]);
        trimmed[p] = *window.get(p)?;
    }
    (inflate(&trimmed)? == after).then_some(trimmed)
}

/// The first `n` bytes inflated from a checkpoint with `window`, or `None` if there are fewer
/// or the stream does not inflate.
fn inflate_prefix(window: &[u8], bits: u8, compressed: &[u8], n: usize) -> Option<Vec<u8>> {
    let mut resume = Resume::new(bits, window, compressed).ok()?;
    let mut out = vec![0u8; n];
    let mut got = 0;
    while got < n {
        match resume.read(&mut out[got..]) {
            Ok(0) | Err(_) => return None,
            Ok(k) => got += k,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::zran::ZranReader;
    use std::cell::RefCell;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    /// Text with repeats near and far, and stretches of noise.
    fn sample(n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n);
        let mut s = 7u64;
        while out.len() < n {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            match s >> 61 {
                0 => out.extend((0..200).map(|i| (s >> (i % 50)) as u8)),
                1 => {
                    let back = (s >> 20) as usize % out.len().max(1);
                    let from = out.len() - back;
                    let piece: Vec<u8> = out[from..(from + 40).min(out.len())].to_vec();
                    out.extend(piece);
                }
                _ => out.extend(format!("line {} of {} ", (s >> 40) % 997, (s >> 30) % 31).bytes()),
            }
        }
        out.truncate(n);
        out
    }

    #[test]
    fn trimmed_windows_resume_to_the_same_bytes_and_are_mostly_zero() {
        let data = sample(3 << 20);
        let blob = gzip(&data);
        let windows = RefCell::new(Vec::new());
        let sink: crate::format::zran::WindowSink<'_> = Box::new(|w: &[u8]| {
            windows.borrow_mut().push(w.to_vec());
            Ok(())
        });
        let mut z = ZranReader::with_sink(&blob[..], 64 << 10, Some(sink)).unwrap();
        let mut out = Vec::new();
        z.read_to_end(&mut out).unwrap();
        assert!(out == data);
        let (points, _, _) = z.into_parts().unwrap();
        let windows = windows.into_inner();
        assert_eq!(windows.len(), points.len());
        assert!(points.len() > 5, "{} checkpoints", points.len());
        let (mut zero, mut all) = (0usize, 0usize);
        for (p, w) in points.iter().zip(&windows).skip(1) {
            let whole = &data[p.out_offset as usize - w.len()..p.out_offset as usize];
            assert!(w.as_slice() != whole, "a window at {} was not trimmed", p.out_offset);
            zero += w.iter().zip(whole).filter(|(t, o)| **t == 0 && **o != 0).count();
            all += w.len();
            // The whole rest of the stream inflates the same from the trimmed window.
            let mut r = Resume::new(p.bits, w, &blob[p.start_byte() as usize..]).unwrap();
            let mut got = Vec::new();
            r.read_to_end(&mut got).unwrap();
            assert!(
                got == data[p.out_offset as usize..],
                "wrong bytes from {}",
                p.out_offset
            );
        }
        assert!(zero * 4 > all, "only {zero} of {all} window bytes trimmed");
    }

    /// Raw deflate of `data` with `window` as the output before it.
    fn deflate_after(window: &[u8], data: &[u8]) -> Vec<u8> {
        let mut c = flate2::Compress::new(flate2::Compression::new(9), false);
        c.set_dictionary(window).unwrap();
        let mut out = Vec::with_capacity(data.len() * 2 + 1024);
        c.compress_vec(data, &mut out, flate2::FlushCompress::Finish).unwrap();
        out
    }

    fn noise(n: usize) -> Vec<u8> {
        let mut s = 99u64;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (s >> 56) as u8 | 1
            })
            .collect()
    }

    #[test]
    fn exactly_the_bytes_referred_to_are_kept() {
        let window = noise(WINDOW_BYTES);
        let half = WINDOW_BYTES / 2;
        // The window's second half copied back (zlib does not reach back the whole 32 KiB):
        // that half is kept, the first is zero.
        let back = &window[half..];
        let got = trim(&window, 0, &deflate_after(&window, back), back).unwrap();
        assert!(got[half..] == *back, "the half referred to was not kept");
        assert!(got[..half].iter().all(|b| *b == 0), "bytes not referred to were kept");
        // A quarter of it, twice, and new bytes.
        let mut after = window[half..half + half / 2].to_vec();
        after.extend_from_slice(&window[half..half + half / 2]);
        after.extend(noise(100).iter().map(|b| b ^ 0x80));
        let got = trim(&window, 0, &deflate_after(&window, &after), &after).unwrap();
        assert!(got[half..half + half / 2] == window[half..half + half / 2]);
        assert_eq!(got.iter().filter(|b| **b != 0).count(), half / 2);
    }

    #[test]
    fn what_cannot_be_shown_to_work_is_none() {
        let window = noise(WINDOW_BYTES);
        let half = &window[..WINDOW_BYTES / 2];
        let stream = deflate_after(&window, half);
        // The stream cut short: fewer bytes than `after` inflate.
        assert!(trim(&window, 0, &stream[..stream.len() / 4], half).is_none());
        // `after` that the stream does not make.
        assert!(trim(&window, 0, &stream, &window[1..WINDOW_BYTES / 2 + 1]).is_none());
        // Not deflate at all (a reserved block type).
        assert!(trim(&window, 0, &[0xff; 64], half).is_none());
        assert!(trim(&[], 0, &stream, half).is_none());
    }
}
