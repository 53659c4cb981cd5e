//! Random access into an unchanged gzip stream ("zran", after zlib's example of that name):
//! while the stream is inflated once, a [`Checkpoint`] is kept at a deflate block boundary
//! every `span` compressed bytes — the bit where the next block starts and the 32 KiB of
//! output before it (deflate's window). Inflating can later start at any checkpoint from those
//! alone: prime the inflater with the bits of the checkpoint's first byte, hand it the window
//! as its dictionary, feed it the compressed bytes from there.
//!
//! ```text
//! blob:  [gzip header][ block | block | block ‖ block | block ‖ block ...][trailer]
//!                      ^ checkpoint 0        ^ checkpoint 1   ^ checkpoint 2
//!                      (in, bits, out, the 32 KiB of output before it)
//! ```
//!
//! The inflater is zlib-rs (pure Rust) through its zlib C API (`libz-rs-sys`): its safe API
//! has no `inflatePrime` and no stop at block boundaries (`Z_BLOCK`), which this technique
//! needs. That API is used only in [`Inflater`], the one place with `unsafe` here.

use std::io::{self, Read};

use libz_rs_sys as z;

use super::window_trim::{Pending, MAX_PENDING_INPUT};

/// Deflate's window: the most output a back-reference can reach.
pub const WINDOW_BYTES: usize = 32 << 10;
/// Compressed bytes between checkpoints unless asked otherwise. Measured on python's start-up
/// from a 25 MB gzip image, windows read as needed (tests/it/gzindex.rs): 64 KiB spans fetch
/// 7.9 MB of layer, 128 KiB 9.1 MB, 256 KiB 10.0 MB. The index grows as the span shrinks, a
/// window per checkpoint, but windows are trimmed to what the stream refers back to
/// ([`super::window_trim`], ~1.6 KB each stored): at 64 KiB the index is 2.3–2.7% of a layer.
pub const DEFAULT_SPAN: u64 = 64 << 10;
/// Smallest and largest span accepted.
pub const MIN_SPAN: u64 = 64 << 10;
/// See [`MIN_SPAN`].
pub const MAX_SPAN: u64 = 16 << 20;
/// The span to index a blob of `blob_size` bytes with when `requested` is asked: clamped to
/// [`MIN_SPAN`]..=[`MAX_SPAN`], and widened so that the checkpoints stay under
/// [`MAX_CHECKPOINTS`] (a large layer gets a larger span rather than no index).
pub fn effective_span(requested: u64, blob_size: u64) -> u64 {
    let needed = blob_size.div_ceil(MAX_CHECKPOINTS as u64 - 64);
    requested.max(needed).clamp(MIN_SPAN, MAX_SPAN)
}

/// A checkpoint is also kept after this much output, whatever the span: a chunk decoded from
/// a checkpoint then never inflates more than this (plus one block) before its bytes.
pub const MAX_OUT_SPAN: u64 = 8 << 20;
/// Most checkpoints one layer may have (a 4 GiB layer at the default span; 128 MiB of windows).
pub const MAX_CHECKPOINTS: usize = 4 << 10;
/// Output between the samples of the progress record (see `fill`).
const PROGRESS_STEP: u64 = 16 << 10;
/// Output produced per inflate call.
const OUT_BLOCK: usize = 64 << 10;
const IN_BLOCK: usize = 64 << 10;

/// A place where inflating can start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Checkpoint {
    /// Blob offset of the first whole byte after the checkpoint.
    pub in_offset: u64,
    /// Bits of the byte before `in_offset` that belong to the next block (0–7).
    pub bits: u8,
    /// Uncompressed offset of the checkpoint.
    pub out_offset: u64,
    /// The output before the checkpoint, at most [`WINDOW_BYTES`].
    pub window: Vec<u8>,
}

impl Checkpoint {
    /// Blob offset of the first byte inflating from here reads.
    pub fn start_byte(&self) -> u64 {
        self.in_offset - u64::from(self.bits > 0)
    }
}

/// The checkpoint of `points` (in stream order) whose first byte is `start_byte`.
pub fn checkpoint_at(points: &[Checkpoint], start_byte: u64) -> Option<&Checkpoint> {
    let i = points.partition_point(|p| p.start_byte() < start_byte);
    points.get(i).filter(|p| p.start_byte() == start_byte)
}

/// A raw-deflate inflater (zlib-rs's zlib API). Boxed: zlib's state points back at its
/// stream, so the stream must not move.
struct Inflater {
    strm: Box<z::z_stream>,
}

/// What one [`Inflater::inflate`] call did.
struct Step {
    consumed: usize,
    produced: usize,
    /// The deflate stream ended (the last block is done).
    end: bool,
    /// zlib's `data_type`: unused bits in the last byte read (0–7), +64 after the last block,
    /// +128 at a block boundary.
    data_type: i32,
}

#[allow(unsafe_code)] // zlib's API; each call has its SAFETY note
impl Inflater {
    fn raw() -> io::Result<Inflater> {
        let mut strm = Box::<z::z_stream>::default();
        // SAFETY: `strm` is a valid, boxed (so never moved) stream whose allocator fields the
        // default set; the version is zlib-rs's own string; the size is the struct's.
        let rc = unsafe {
            z::inflateInit2_(
                &mut *strm,
                -15,
                z::zlibVersion(),
                std::mem::size_of::<z::z_stream>() as i32,
            )
        };
        if rc != z::Z_OK {
            return Err(bad(format!("cannot start an inflater (zlib code {rc})")));
        }
        Ok(Inflater { strm })
    }

    /// Feed the low `bits` bits of `value` before the next input byte.
    fn prime(&mut self, bits: u8, value: u8) -> io::Result<()> {
        // SAFETY: the stream was initialised by `raw` and is not in use elsewhere.
        let rc = unsafe { z::inflatePrime(&mut *self.strm, i32::from(bits), i32::from(value)) };
        self.check(rc, "prime")
    }

    /// Output that came before the resumed stream (the window).
    fn set_dictionary(&mut self, dictionary: &[u8]) -> io::Result<()> {
        if dictionary.is_empty() {
            return Ok(());
        }
        // SAFETY: the stream was initialised by `raw`; the pointer and length are those of a
        // live slice zlib only reads during the call (it copies the bytes into its window).
        let rc = unsafe { z::inflateSetDictionary(&mut *self.strm, dictionary.as_ptr(), dictionary.len() as u32) };
        self.check(rc, "set the window")
    }

    fn check(&self, rc: i32, what: &str) -> io::Result<()> {
        if rc == z::Z_OK {
            Ok(())
        } else {
            Err(bad(format!("cannot {what} (zlib code {rc})")))
        }
    }

    /// Inflate from `input` into `output`; `block`: stop at the next block boundary.
    fn inflate(&mut self, input: &[u8], output: &mut [u8], block: bool) -> io::Result<Step> {
        let s = &mut *self.strm;
        s.next_in = input.as_ptr();
        s.avail_in = input.len().min(u32::MAX as usize) as u32;
        s.next_out = output.as_mut_ptr();
        s.avail_out = output.len().min(u32::MAX as usize) as u32;
        let avail_in = s.avail_in as usize;
        let avail_out = s.avail_out as usize;
        let flush = if block { z::Z_BLOCK } else { z::Z_NO_FLUSH };
        // SAFETY: the stream was initialised by `raw`; `next_in`/`next_out` point at live
        // slices of the lengths given, used only during this call (both are reset before the
        // next one).
        let rc = unsafe { z::inflate(s, flush) };
        let step = Step {
            consumed: avail_in - s.avail_in as usize,
            produced: avail_out - s.avail_out as usize,
            end: rc == z::Z_STREAM_END,
            data_type: s.data_type,
        };
        s.next_in = std::ptr::null();
        s.next_out = std::ptr::null_mut();
        match rc {
            z::Z_OK | z::Z_STREAM_END => Ok(step),
            z::Z_BUF_ERROR => Ok(step),
            z::Z_NEED_DICT => Err(bad("the stream asks for a dictionary".into())),
            other => Err(bad(format!("corrupt deflate data (zlib code {other})"))),
        }
    }
}

#[allow(unsafe_code)]
impl Drop for Inflater {
    fn drop(&mut self) {
        // SAFETY: the stream was initialised by `raw` and is ended once, here.
        unsafe {
            z::inflateEnd(&mut *self.strm);
        }
    }
}

fn bad(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Length of the gzip member header at the start of `data` (RFC 1952), or an error; `None`:
/// more bytes are needed.
pub fn gzip_header_len(data: &[u8]) -> io::Result<Option<usize>> {
    if data.len() < 10 {
        return Ok(None);
    }
    if data[0] != 0x1f || data[1] != 0x8b || data[2] != 8 {
        return Err(bad("not a gzip stream".into()));
    }
    let flags = data[3];
    if flags & 0xe0 != 0 {
        return Err(bad("gzip header with reserved flags".into()));
    }
    let mut at = 10usize;
    if flags & 4 != 0 {
        let Some(x) = data.get(at..at + 2) else { return Ok(None) };
        at += 2 + usize::from(u16::from_le_bytes([x[0], x[1]]));
    }
    for flag in [8u8, 16] {
        if flags & flag != 0 {
            match data.get(at..).and_then(|d| d.iter().position(|b| *b == 0)) {
                Some(n) => at += n + 1,
                None => return Ok(None),
            }
        }
    }
    if flags & 2 != 0 {
        at += 2;
    }
    Ok((at <= data.len()).then_some(at))
}

/// Longest gzip header accepted (its name and comment fields are unbounded in the format).
const MAX_HEADER_BYTES: usize = 64 << 10;

/// Where a [`ZranReader`] hands each checkpoint's window, instead of keeping it: in
/// checkpoint order, trimmed ([`super::window_trim`]), once the output after it is known.
pub type WindowSink<'a> = Box<dyn FnMut(&[u8]) -> io::Result<()> + 'a>;

/// (uncompressed bytes out, blob offset of the input consumed to make them), in stream order.
pub type Progress = Vec<(u64, u64)>;

/// Reads the uncompressed bytes of a gzip stream, keeping checkpoints as it goes.
pub struct ZranReader<'a, R> {
    input: R,
    /// Where windows go (then the checkpoints keep none), so memory does not grow with them.
    sink: Option<WindowSink<'a>>,
    inflater: Inflater,
    span: u64,
    inbuf: Vec<u8>,
    in_pos: usize,
    in_len: usize,
    /// Blob offset of `inbuf[in_pos]`.
    in_abs: u64,
    input_done: bool,
    /// `[history (≤ WINDOW_BYTES) | new output]`
    out: Vec<u8>,
    filled: usize,
    read_pos: usize,
    total_out: u64,
    ended: bool,
    crc: flate2::Crc,
    points: Vec<Checkpoint>,
    /// Windows not yet handed to the sink, oldest first: each waits for the output after its
    /// checkpoint, to be trimmed to what that output refers back to.
    pending: std::collections::VecDeque<Pending>,
    /// Most windows that waited at once (tests check the bound).
    peak_pending: usize,
    /// (uncompressed bytes out, blob offset of the input consumed to make them), one per call.
    progress: Vec<(u64, u64)>,
}

impl<'a, R: Read> ZranReader<'a, R> {
    /// Start reading a gzip stream; checkpoints every `span` compressed bytes (clamped to
    /// [`MIN_SPAN`]..=[`MAX_SPAN`]).
    pub fn new(input: R, span: u64) -> io::Result<ZranReader<'a, R>> {
        Self::with_sink(input, span, None)
    }

    /// [`new`](Self::new), each checkpoint's window handed to `sink` (the first one's, empty,
    /// too) and not kept.
    pub fn with_sink(mut input: R, span: u64, sink: Option<WindowSink<'a>>) -> io::Result<ZranReader<'a, R>> {
        // A whole first block, however the input arrives (see `fill`).
        let mut inbuf = vec![0u8; IN_BLOCK.max(MAX_HEADER_BYTES)];
        let mut len = 0usize;
        while len < inbuf.len() {
            match input.read(&mut inbuf[len..]) {
                Ok(0) => break,
                Ok(n) => len += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let header = match gzip_header_len(&inbuf[..len])? {
            Some(n) => n,
            None if len == inbuf.len() => return Err(bad("gzip header longer than 64 KiB".into())),
            None => return Err(bad("gzip stream ends inside its header".into())),
        };
        let first = Checkpoint {
            in_offset: header as u64,
            bits: 0,
            out_offset: 0,
            window: Vec::new(),
        };
        let mut sink = sink;
        if let Some(sink) = sink.as_mut() {
            sink(&[])?;
        }
        Ok(ZranReader {
            input,
            sink,
            inflater: Inflater::raw()?,
            span: span.clamp(MIN_SPAN, MAX_SPAN),
            inbuf,
            in_pos: header,
            in_len: len,
            in_abs: header as u64,
            input_done: false,
            out: vec![0u8; WINDOW_BYTES + OUT_BLOCK],
            filled: 0,
            read_pos: 0,
            total_out: 0,
            ended: false,
            crc: flate2::Crc::new(),
            points: vec![first],
            pending: Default::default(),
            peak_pending: 0,
            progress: Vec::new(),
        })
    }

    /// The checkpoints kept so far, in stream order (the first is the stream's start).
    pub fn checkpoints(&self) -> &[Checkpoint] {
        &self.points
    }

    /// After reading: blob offset by which the first `out` uncompressed bytes had been
    /// produced (an upper bound: input consumed by the inflate call that produced them).
    pub fn input_end_for(&self, out: u64) -> Option<u64> {
        let i = self.progress.partition_point(|(o, _)| *o < out);
        self.progress.get(i).map(|(_, e)| *e)
    }

    /// Whether the deflate stream has ended.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// The checkpoints, the progress record (uncompressed bytes out, blob offset consumed to
    /// make them; one per inflate call) and the input reader (past what was read into the
    /// inflater's buffer). Windows still waiting go to the sink first (untrimmed if the output
    /// after them was not read).
    pub fn into_parts(mut self) -> io::Result<(Vec<Checkpoint>, Progress, R)> {
        if !self.ended {
            self.pending.iter_mut().for_each(|p| p.whole = true);
        }
        self.hand_windows(true)?;
        Ok((self.points, self.progress, self.input))
    }

    /// Feed what an inflate call consumed (`inbuf[from..in_pos]`) and produced (`out[at..]`)
    /// to the waiting windows.
    fn feed_pending(&mut self, from: usize, at: usize) {
        for p in self.pending.iter_mut().filter(|p| !p.whole) {
            let want = WINDOW_BYTES - p.after.len();
            p.after.extend_from_slice(&self.out[at..self.filled.min(at + want)]);
            if p.compressed.len() < MAX_PENDING_INPUT {
                p.compressed.extend_from_slice(&self.inbuf[from..self.in_pos]);
            } else {
                p.whole = true;
            }
        }
    }

    /// Hand the sink the waiting windows whose following output is complete, or that are kept
    /// whole (`all`: every one; the stream has ended), in checkpoint order (so a stream of
    /// blocks that make no output holds at most a few windows), each trimmed
    /// where that can be shown to change nothing.
    fn hand_windows(&mut self, all: bool) -> io::Result<()> {
        while self
            .pending
            .front()
            .is_some_and(|p| all || p.whole || p.after.len() == WINDOW_BYTES)
        {
            let p = self.pending.pop_front().expect("checked");
            let trimmed = match p.whole {
                true => None,
                false => super::window_trim::trim(&p.window, p.bits, &p.compressed, &p.after),
            };
            if let Some(sink) = self.sink.as_mut() {
                sink(trimmed.as_deref().unwrap_or(&p.window))?;
            }
        }
        Ok(())
    }

    fn fill(&mut self) -> io::Result<()> {
        if self.filled == self.out.len() {
            self.out.copy_within(self.filled - WINDOW_BYTES..self.filled, 0);
            self.filled = WINDOW_BYTES;
            self.read_pos = WINDOW_BYTES;
        }
        loop {
            if self.in_pos == self.in_len && !self.input_done {
                // Whole blocks, however the input arrives: the checkpoints and the progress
                // record then depend on the bytes only, so an index can be rebuilt and compared.
                let mut n = 0;
                while n < self.inbuf.len() {
                    match self.input.read(&mut self.inbuf[n..]) {
                        Ok(0) => break,
                        Ok(k) => n += k,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                self.in_pos = 0;
                self.in_len = n;
                self.input_done = n == 0;
            }
            let step = self.inflater.inflate(
                &self.inbuf[self.in_pos..self.in_len],
                &mut self.out[self.filled..],
                true,
            )?;
            let (consumed_from, produced_at) = (self.in_pos, self.filled);
            self.in_pos += step.consumed;
            self.in_abs += step.consumed as u64;
            self.crc.update(&self.out[self.filled..self.filled + step.produced]);
            self.filled += step.produced;
            self.total_out += step.produced as u64;
            // One sample per 16 KiB of output at most (the last one is replaced until then), so
            // a stream of tiny blocks does not grow the record; the stream's end is always there.
            if step.produced > 0 {
                let sample = (self.total_out, self.in_abs);
                let n = self.progress.len();
                if n > 1 && sample.0 - self.progress[n - 2].0 < PROGRESS_STEP {
                    self.progress[n - 1] = sample;
                } else {
                    self.progress.push(sample);
                }
            }
            self.feed_pending(consumed_from, produced_at);
            if step.end {
                self.ended = true;
                self.hand_windows(true)?;
                return self.check_trailer();
            }
            let boundary = step.data_type & 128 != 0 && step.data_type & 64 == 0;
            if boundary {
                self.maybe_checkpoint((step.data_type & 7) as u8)?;
            }
            self.hand_windows(false)?;
            if step.produced > 0 {
                return Ok(());
            }
            if step.consumed == 0 && self.input_done {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "gzip stream ends before its last block",
                ));
            }
        }
    }

    /// The 8-byte trailer after the last block: CRC-32 and length of the output.
    fn check_trailer(&mut self) -> io::Result<()> {
        let mut trailer = [0u8; 8];
        let mut got = 0;
        while got < 8 {
            if self.in_pos == self.in_len {
                let n = self.input.read(&mut self.inbuf)?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "gzip stream ends inside its trailer",
                    ));
                }
                self.in_pos = 0;
                self.in_len = n;
            }
            let n = (8 - got).min(self.in_len - self.in_pos);
            trailer[got..got + n].copy_from_slice(&self.inbuf[self.in_pos..self.in_pos + n]);
            self.in_pos += n;
            self.in_abs += n as u64;
            got += n;
        }
        let crc = u32::from_le_bytes(trailer[..4].try_into().expect("4 bytes"));
        let size = u32::from_le_bytes(trailer[4..].try_into().expect("4 bytes"));
        if crc != self.crc.sum() || size != self.total_out as u32 {
            return Err(bad("gzip trailer does not match the data (damaged stream)".into()));
        }
        Ok(())
    }

    fn maybe_checkpoint(&mut self, bits: u8) -> io::Result<()> {
        let last = self.points.last().expect("the first checkpoint is made in new");
        if self.in_abs - last.in_offset < self.span && self.total_out - last.out_offset < MAX_OUT_SPAN {
            return Ok(());
        }
        if self.points.len() >= MAX_CHECKPOINTS {
            return Err(bad(format!(
                "more than {MAX_CHECKPOINTS} checkpoints: use a larger span"
            )));
        }
        let from = self.filled.saturating_sub(WINDOW_BYTES);
        let window = self.out[from..self.filled].to_vec();
        let window = match self.sink.is_some() {
            true => {
                // The checkpoint's first byte, if it starts inside one, is the last consumed.
                let first = (bits > 0).then(|| self.in_pos.checked_sub(1).map(|i| self.inbuf[i]));
                self.peak_pending = self.peak_pending.max(self.pending.len() + 1);
                self.pending.push_back(Pending {
                    window,
                    bits,
                    compressed: first.flatten().into_iter().collect(),
                    after: Vec::with_capacity(WINDOW_BYTES),
                    whole: first == Some(None),
                });
                Vec::new()
            }
            false => window,
        };
        self.points.push(Checkpoint {
            in_offset: self.in_abs,
            bits,
            out_offset: self.total_out,
            window,
        });
        Ok(())
    }
}

impl<R: Read> Read for ZranReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.read_pos == self.filled {
            if self.ended || buf.is_empty() {
                return Ok(0);
            }
            self.fill()?;
        }
        let n = buf.len().min(self.filled - self.read_pos);
        buf[..n].copy_from_slice(&self.out[self.read_pos..self.read_pos + n]);
        self.read_pos += n;
        Ok(n)
    }
}

/// Reads uncompressed bytes from a checkpoint, given the blob's bytes from its
/// [`Checkpoint::start_byte`] on. Ends at the deflate stream's end or where the bytes given
/// end (the caller checks it got what it needs).
pub struct Resume<'a> {
    inflater: Inflater,
    input: &'a [u8],
    ended: bool,
}

impl<'a> Resume<'a> {
    /// Start inflating at `point` (`bits` and `window` as kept), `compressed` being the blob's
    /// bytes from the point's start byte.
    pub fn new(bits: u8, window: &[u8], compressed: &'a [u8]) -> io::Result<Resume<'a>> {
        if bits > 7 || window.len() > WINDOW_BYTES {
            return Err(bad("malformed checkpoint".into()));
        }
        let mut inflater = Inflater::raw()?;
        let mut input = compressed;
        if bits > 0 {
            let (&first, rest) = compressed
                .split_first()
                .ok_or_else(|| bad("no bytes at the checkpoint".into()))?;
            inflater.prime(bits, first >> (8 - bits))?;
            input = rest;
        }
        inflater.set_dictionary(window)?;
        Ok(Resume {
            inflater,
            input,
            ended: false,
        })
    }
}

impl Read for Resume<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.ended || buf.is_empty() {
                return Ok(0);
            }
            let step = self.inflater.inflate(self.input, buf, false)?;
            self.input = &self.input[step.consumed..];
            self.ended = step.end;
            if step.produced > 0 {
                return Ok(step.produced);
            }
            if step.consumed == 0 {
                // Out of input: what was given is all there is.
                return Ok(0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn sample(n: usize, seed: u64) -> Vec<u8> {
        // Text-like, compressible, with back-references across blocks.
        let words: Vec<String> = (0..400).map(|i| format!("w{}x{} ", i * 7919 % 1000, i % 13)).collect();
        let mut out = Vec::with_capacity(n);
        let mut s = seed;
        while out.len() < n {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            if s >> 60 == 0 {
                out.extend((0..64).map(|i| (s >> (i % 56)) as u8));
            } else {
                out.extend_from_slice(words[(s >> 33) as usize % words.len()].as_bytes());
            }
        }
        out.truncate(n);
        out
    }

    fn gzip(data: &[u8], level: u32) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn resume_at(blob: &[u8], p: &Checkpoint, len: usize) -> Vec<u8> {
        let mut r = Resume::new(p.bits, &p.window, &blob[p.start_byte() as usize..]).unwrap();
        let mut got = vec![0u8; len];
        r.read_exact(&mut got).unwrap();
        got
    }

    #[test]
    fn every_checkpoint_resumes_to_the_same_bytes() {
        // (Level 1 of zlib-rs, like zlib-ng's, writes one block for the whole input: no
        // boundary to keep, so that stream has its first checkpoint only.)
        for (level, seed) in [(6u32, 1u64), (2, 2), (9, 3), (0, 4)] {
            let data = sample(3 << 20, seed);
            let blob = gzip(&data, level);
            let mut r = ZranReader::new(blob.as_slice(), MIN_SPAN).unwrap();
            let mut out = Vec::new();
            r.read_to_end(&mut out).unwrap();
            assert!(r.ended());
            assert_eq!(out, data);
            let bound = 2 * (data.len() as u64 / PROGRESS_STEP) as usize + 2;
            assert!(r.progress.len() <= bound, "{} progress samples", r.progress.len());
            let points = r.checkpoints().to_vec();
            // One checkpoint per span, give or take a block (level 0: stored blocks of 64 KiB).
            let expected = blob.len() as u64 / (MIN_SPAN + (64 << 10));
            assert!(
                points.len() > 1 && points.len() as u64 >= expected,
                "level {level}: {} checkpoints for {} bytes",
                points.len(),
                blob.len()
            );
            assert!(points.iter().any(|p| p.bits != 0) || level == 0);
            for p in &points {
                let len = (data.len() - p.out_offset as usize).min(200_000);
                let got = resume_at(&blob, p, len);
                assert_eq!(
                    got,
                    data[p.out_offset as usize..p.out_offset as usize + len],
                    "level {level} at {p:?}"
                );
            }
            // The input recorded for an output offset suffices to inflate up to it.
            let p = &points[1];
            let end_out = p.out_offset + 100_000;
            let end_in = r.input_end_for(end_out).unwrap() as usize;
            let mut res = Resume::new(p.bits, &p.window, &blob[p.start_byte() as usize..end_in]).unwrap();
            let mut got = Vec::new();
            res.read_to_end(&mut got).unwrap();
            assert!(got.len() as u64 >= end_out - p.out_offset);
        }
    }

    #[test]
    fn headers_with_names_and_extra_fields_are_skipped() {
        let mut e = flate2::GzBuilder::new()
            .filename("layer.tar")
            .comment("c")
            .extra(vec![1, 2, 3])
            .write(Vec::new(), flate2::Compression::default());
        e.write_all(b"hello hello hello").unwrap();
        let blob = e.finish().unwrap();
        let mut r = ZranReader::new(blob.as_slice(), DEFAULT_SPAN).unwrap();
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"hello hello hello");
    }

    #[test]
    fn blocks_that_make_no_output_hold_few_windows() {
        // A gzip member of 200,000 empty stored blocks (5 bytes each: a checkpoint every
        // 64 KiB of them), then one stored block of data.
        let data = b"the only bytes".to_vec();
        let mut blob = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
        for _ in 0..200_000 {
            blob.extend_from_slice(&[0x00, 0x00, 0x00, 0xff, 0xff]);
        }
        let n = data.len() as u16;
        blob.push(0x01);
        blob.extend_from_slice(&n.to_le_bytes());
        blob.extend_from_slice(&(!n).to_le_bytes());
        blob.extend_from_slice(&data);
        let mut crc = flate2::Crc::new();
        crc.update(&data);
        blob.extend_from_slice(&crc.sum().to_le_bytes());
        blob.extend_from_slice(&(data.len() as u32).to_le_bytes());
        let handed = std::cell::Cell::new(0usize);
        let sink: WindowSink<'_> = Box::new(|_| {
            handed.set(handed.get() + 1);
            Ok(())
        });
        let mut z = ZranReader::with_sink(&blob[..], MIN_SPAN, Some(sink)).unwrap();
        let mut out = Vec::new();
        z.read_to_end(&mut out).unwrap();
        assert_eq!(out, data);
        // A window waits until 256 KiB of input have followed it, then goes whole: with a
        // checkpoint every 64 KiB, five at most wait at once.
        let most_waiting = z.peak_pending;
        let (points, _, _) = z.into_parts().unwrap();
        assert!(points.len() > 10, "{} checkpoints", points.len());
        assert_eq!(handed.get(), points.len());
        assert!(most_waiting <= 5, "{most_waiting} windows waited at once");
    }

    #[test]
    fn damaged_streams_are_errors() {
        assert!(ZranReader::new(&b"not gzip at all"[..], DEFAULT_SPAN).is_err());
        let blob = gzip(&sample(200_000, 9), 6);
        let mut r = ZranReader::new(&blob[..blob.len() / 2], DEFAULT_SPAN).unwrap();
        assert!(r.read_to_end(&mut Vec::new()).is_err());
        let mut flipped = blob.clone();
        for b in flipped[20..60].iter_mut() {
            *b = !*b;
        }
        let mut r = ZranReader::new(flipped.as_slice(), DEFAULT_SPAN).unwrap();
        assert!(r.read_to_end(&mut Vec::new()).is_err());
        let mut bad_crc = blob.clone();
        let at = bad_crc.len() - 8;
        bad_crc[at] ^= 1;
        let mut r = ZranReader::new(bad_crc.as_slice(), DEFAULT_SPAN).unwrap();
        let err = r.read_to_end(&mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("trailer"), "{err}");
        assert!(Resume::new(8, &[], &blob).is_err());
        assert!(Resume::new(3, &[], &[]).is_err());
    }
}
