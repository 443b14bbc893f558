//! Minimal, bounds-checked readers and writers for the byte formats in this
//! crate. Every decoder in the core is built on [`Reader`], which never panics
//! and never allocates more than the input could hold.

use thiserror::Error;

/// A byte string could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ended before the structure did.
    #[error("the data is truncated")]
    Truncated,
    /// Bytes were left over after the structure ended.
    #[error("the data has {0} unexpected trailing bytes")]
    TrailingBytes(usize),
    /// A tag, version or length had a value this version does not know.
    #[error("the data has an invalid {0}")]
    Invalid(&'static str),
}

/// Reads fixed-layout fields from a byte slice.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Reads from `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// Takes `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// Takes every remaining byte; true if all are zero (padding). The check
    /// reads to the end instead of stopping at the first non-zero byte, so
    /// that it vectorizes.
    pub fn take_zero_padding(&mut self) -> bool {
        std::mem::take(&mut self.buf).iter().fold(0u8, |acc, &b| acc | b) == 0
    }

    /// Takes a fixed-size array.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    /// Reads one byte.
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    /// Reads a big-endian u16.
    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    /// Reads a big-endian u32.
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// Reads a big-endian u64.
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// Reads a u16-length-prefixed byte string.
    pub fn bytes16(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.u16()? as usize;
        self.take(n)
    }

    /// Reads a u32-length-prefixed byte string.
    pub fn bytes32(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    /// Reads a u16-length-prefixed UTF-8 string.
    pub fn string16(&mut self) -> Result<String, DecodeError> {
        let b = self.bytes16()?;
        String::from_utf8(b.to_vec()).map_err(|_| DecodeError::Invalid("text encoding"))
    }

    /// Fails unless every byte has been read.
    pub fn finish(self) -> Result<(), DecodeError> {
        match self.buf.len() {
            0 => Ok(()),
            n => Err(DecodeError::TrailingBytes(n)),
        }
    }
}

/// Appends fixed-layout fields to a byte vector.
#[derive(Debug, Default)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// An empty writer.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty writer with room for `n` bytes.
    pub fn with_capacity(n: usize) -> Self {
        Self {
            buf: Vec::with_capacity(n),
        }
    }

    /// Appends raw bytes.
    pub fn put(&mut self, b: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(b);
        self
    }

    /// Appends one byte.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }

    /// Appends a big-endian u16.
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.put(&v.to_be_bytes())
    }

    /// Appends a big-endian u32.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.put(&v.to_be_bytes())
    }

    /// Appends a big-endian u64.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.put(&v.to_be_bytes())
    }

    /// Appends a u16-length-prefixed byte string, truncated to 65,535 bytes
    /// (callers validate lengths before encoding).
    pub fn bytes16(&mut self, b: &[u8]) -> &mut Self {
        let n = b.len().min(u16::MAX as usize);
        self.u16(n as u16);
        self.put(&b[..n])
    }

    /// Appends a u32-length-prefixed byte string.
    pub fn bytes32(&mut self, b: &[u8]) -> &mut Self {
        let n = b.len().min(u32::MAX as usize);
        self.u32(n as u32);
        self.put(&b[..n])
    }

    /// The bytes written so far.
    pub fn into_vec(self) -> Vec<u8> {
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn zero_padding_matches_a_byte_by_byte_check(
            len in 0usize..5000,
            mark in proptest::option::of((any::<prop::sample::Index>(), 1u8..=255)),
            skip in 0usize..64,
        ) {
            let mut buf = vec![0u8; len];
            if let (Some((at, v)), false) = (mark, buf.is_empty()) {
                buf[at.index(len)] = v;
            }
            let mut r = Reader::new(&buf);
            let head = r.take(skip.min(len)).map(<[u8]>::len);
            prop_assert!(head.is_ok());
            let expect = !buf[skip.min(len)..].iter().any(|&b| b != 0);
            prop_assert_eq!(r.take_zero_padding(), expect);
            prop_assert_eq!(r.remaining(), 0);
        }
    }
}
