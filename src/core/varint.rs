//! QUIC-style variable-length integers (RFC 9000, section 16).
//!
//! The two high bits of the first byte give the length: `00` one byte (6-bit value), `01` two
//! bytes (14 bits), `10` four bytes (30 bits), `11` eight bytes (62 bits). Decoding reads at
//! most eight bytes, never loops and never panics. sluice only writes values that fit 30 bits, so
//! every varint on the wire is at most four bytes; [`read()`] still accepts the eight-byte form and
//! callers bound the value they get.

/// Largest value a varint can hold.
pub const MAX: u64 = (1 << 62) - 1;

/// Why a varint could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VarintError {
    /// The input ended inside the varint.
    Truncated,
}

/// Number of bytes [`write()`] uses for `value`.
///
/// # Panics
/// If `value` exceeds [`MAX`].
pub const fn len(value: u64) -> usize {
    if value < 1 << 6 {
        1
    } else if value < 1 << 14 {
        2
    } else if value < 1 << 30 {
        4
    } else if value <= MAX {
        8
    } else {
        panic!("varint value out of range")
    }
}

/// Reads a varint from the front of `input`; returns the value and the bytes it used.
///
/// # Errors
/// [`VarintError::Truncated`] if `input` ends before the varint does.
#[inline]
pub fn read(input: &[u8]) -> Result<(u64, usize), VarintError> {
    let first = *input.first().ok_or(VarintError::Truncated)?;
    let size = 1usize << (first >> 6);
    let bytes = input.get(..size).ok_or(VarintError::Truncated)?;
    let mut value = u64::from(first & 0x3f);
    for &b in &bytes[1..] {
        value = (value << 8) | u64::from(b);
    }
    Ok((value, size))
}

/// Appends `value` to `out`.
///
/// # Panics
/// If `value` exceeds [`MAX`] (an internal invariant: sluice only encodes lengths and counts).
#[inline]
pub fn push(out: &mut Vec<u8>, value: u64) {
    let mut tmp = [0u8; 8];
    let n = write(&mut tmp, value);
    out.extend_from_slice(&tmp[..n]);
}

/// Writes `value` at the front of `out` and returns the bytes written.
///
/// # Panics
/// If `value` exceeds [`MAX`] or `out` is shorter than [`len`]`(value)`.
#[inline]
pub fn write(out: &mut [u8], value: u64) -> usize {
    let n = len(value);
    let tag: u64 = match n {
        1 => 0,
        2 => 0b01,
        4 => 0b10,
        _ => 0b11,
    };
    let tagged = value | (tag << (n * 8 - 2));
    out[..n].copy_from_slice(&tagged.to_be_bytes()[8 - n..]);
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_bytes_from_rfc_9000_appendix_a() {
        // Examples from RFC 9000, A.1.
        let cases: &[(&[u8], u64)] = &[
            (
                &[0xc2, 0x19, 0x7c, 0x5e, 0xff, 0x14, 0xe8, 0x8c],
                151_288_809_941_952_652,
            ),
            (&[0x9d, 0x7f, 0x3e, 0x7d], 494_878_333),
            (&[0x7b, 0xbd], 15_293),
            (&[0x25], 37),
            (&[0x40, 0x25], 37),
        ];
        assert!(!cases.is_empty());
        for (bytes, value) in cases {
            assert_eq!(read(bytes), Ok((*value, bytes.len())));
        }
        let mut out = Vec::new();
        push(&mut out, 15_293);
        assert_eq!(out, [0x7b, 0xbd]);
    }

    #[test]
    fn round_trips_at_every_length_boundary() {
        for value in [0, 63, 64, 16_383, 16_384, (1 << 30) - 1, 1 << 30, MAX] {
            let mut out = Vec::new();
            push(&mut out, value);
            assert_eq!(out.len(), len(value));
            assert_eq!(read(&out), Ok((value, out.len())));
            assert_eq!(read(&out[..out.len() - 1]), Err(VarintError::Truncated));
        }
        assert_eq!(read(&[]), Err(VarintError::Truncated));
    }
}
