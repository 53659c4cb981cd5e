//! [`BlobCheck`]: the digest and length of a streamed blob, checked at its end.

use crate::digest::{Digest, Hasher};
use crate::registry::error::{RegistryError, Result};

/// A digest and length computed over a streamed blob, checked at its end.
pub struct BlobCheck {
    hasher: Hasher,
    len_bytes: u64,
}

impl BlobCheck {
    /// Nothing seen yet.
    pub fn new() -> Self {
        BlobCheck {
            hasher: Hasher::new(),
            len_bytes: 0,
        }
    }

    /// More bytes of the blob.
    pub fn update(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
        self.len_bytes += bytes.len() as u64;
    }

    /// Bytes seen so far.
    pub fn len_bytes(&self) -> u64 {
        self.len_bytes
    }

    /// Check length and digest against the descriptor's.
    pub fn verify(self, what: &str, expected: &Digest, expected_len: u64) -> Result<()> {
        if self.len_bytes != expected_len {
            return Err(RegistryError::SizeMismatch {
                what: what.to_string(),
                expected: expected_len,
                actual: self.len_bytes,
            });
        }
        let actual = self.hasher.finish();
        if &actual != expected {
            return Err(RegistryError::DigestMismatch {
                what: what.to_string(),
                expected: expected.clone(),
                actual,
            });
        }
        Ok(())
    }
}

impl Default for BlobCheck {
    fn default() -> Self {
        Self::new()
    }
}
