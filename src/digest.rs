//! Content digests (`sha256:<64 hex>`), the names of every blob, manifest and chunk.
//!
//! Invariant: a [`Digest`] value is always well formed (algorithm `sha256`, 64 lowercase hex
//! digits), so code holding one never re-validates it and can use it as a file name.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

/// A validated `sha256:` content digest.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    hex: String,
}

/// Why a digest string was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    /// Not of the form `algorithm:encoded`.
    #[error("invalid digest {0:?}: expected sha256:<64 hex digits>")]
    Malformed(String),
    /// An algorithm other than sha256.
    #[error("unsupported digest algorithm in {0:?}: only sha256 is supported")]
    Algorithm(String),
}

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        let mut h = Hasher::new();
        h.update(bytes);
        h.finish()
    }

    /// The 64 hex digits, without the algorithm.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The 32 bytes of the sha256.
    pub fn bytes(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        hex::decode_to_slice(&self.hex, &mut out).expect("a Digest holds 64 hex digits");
        out
    }

    /// The digest whose sha256 is `bytes`.
    pub fn from_bytes(bytes: &[u8; 32]) -> Digest {
        Digest {
            hex: hex::encode(bytes),
        }
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (algo, hex) = s.split_once(':').ok_or_else(|| DigestError::Malformed(s.to_string()))?;
        if algo != "sha256" {
            let known = ["sha512", "sha384", "blake3"];
            return Err(if known.contains(&algo) {
                DigestError::Algorithm(s.to_string())
            } else {
                DigestError::Malformed(s.to_string())
            });
        }
        let ok = hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !ok {
            return Err(DigestError::Malformed(s.to_string()));
        }
        Ok(Digest { hex: hex.to_string() })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// An incremental sha256 that yields a [`Digest`].
#[derive(Clone, Default)]
pub struct Hasher(Sha256);

impl Hasher {
    /// A hasher over no bytes yet.
    pub fn new() -> Hasher {
        Hasher(Sha256::new())
    }

    /// Feed more bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The digest of everything fed so far.
    pub fn finish(self) -> Digest {
        Digest {
            hex: hex::encode(self.0.finalize()),
        }
    }
}

/// A reader that hashes and counts what passes through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Hasher,
    len_bytes: u64,
}

impl<R> HashingReader<R> {
    /// Wrap `inner`.
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Hasher::new(),
            len_bytes: 0,
        }
    }

    /// Bytes read so far.
    pub fn len_bytes(&self) -> u64 {
        self.len_bytes
    }

    /// The digest and length of everything read so far.
    pub fn finish(self) -> (Digest, u64) {
        (self.hasher.finish(), self.len_bytes)
    }

    /// [`finish`](Self::finish), giving the inner reader back too.
    pub fn finish_with_inner(self) -> (Digest, u64, R) {
        (self.hasher.finish(), self.len_bytes, self.inner)
    }
}

impl<R: std::io::Read> std::io::Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.len_bytes += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_cases() {
        let good = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(good.parse::<Digest>().unwrap().to_string(), good);
        assert_eq!(Digest::of(b"").to_string(), good);
        let bad = [
            ("", false),
            ("sha256", false),
            ("sha256:", false),
            (
                "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
                false,
            ),
            ("sha256:e3b0", false),
            ("sha256:../../etc/passwd", false),
            ("md5:abc", false),
            ("sha512:abc", true),
        ];
        for (s, is_algo) in bad {
            let e = s.parse::<Digest>().unwrap_err();
            assert_eq!(matches!(e, DigestError::Algorithm(_)), is_algo, "{s}");
        }
    }
}
