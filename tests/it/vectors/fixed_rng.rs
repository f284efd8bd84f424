//! The randomness of one vector, fixed: a generator that hands the library exactly the bytes
//! the vector records (HPKE's ephemeral IKM, RSA-OAEP's seed) and panics if asked for more, so
//! that the crates themselves (`hpke`, `rsa`) seal deterministically and the file says all
//! they drew. Nothing here computes anything: it only replays bytes.

use std::convert::Infallible;

use hpke::rand_core::{TryCryptoRng, TryRng};

pub struct FixedRng<'a> {
    left: &'a [u8],
}

impl<'a> FixedRng<'a> {
    pub fn new(bytes: &'a [u8]) -> FixedRng<'a> {
        FixedRng { left: bytes }
    }

    /// Asserts the library drew every byte: a vector that records bytes nobody used would
    /// mislead whoever reproduces it.
    pub fn finish(self) {
        assert!(self.left.is_empty(), "{} recorded random bytes were not drawn", self.left.len());
    }
}

impl TryRng for FixedRng<'_> {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        let mut word = [0; 4];
        self.try_fill_bytes(&mut word)?;
        Ok(u32::from_le_bytes(word))
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        let mut word = [0; 8];
        self.try_fill_bytes(&mut word)?;
        Ok(u64::from_le_bytes(word))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        assert!(dst.len() <= self.left.len(), "the library drew more random bytes than the vector records");
        let (now, later) = self.left.split_at(dst.len());
        dst.copy_from_slice(now);
        self.left = later;
        Ok(())
    }
}

/// Only ever handed to a library that asks for a cryptographic generator, in a test vector,
/// where being predictable is the point.
impl TryCryptoRng for FixedRng<'_> {}
