//! Dedupe: loss-safe redundancy elimination across packets, flows and shards.
//!
//! Each direction of a peer link has one dedupe context: an [`EncoderCache`] on the sending
//! gateway and a [`DecoderCache`] on the receiving one, each shared (through an `Arc`) by every
//! shard that talks to that peer. Both keep a [`Ring`](ring::Ring) of the last `cache` bytes of
//! packet areas (the batches the core encodes), at the same absolute positions.
//!
//! ```text
//! area ─> reserve place ─> store in ring ─> scan anchors ─> literals + references ─> compress
//!                                              │   ▲
//!                                           index  acked chunks only
//! ```
//!
//! - **Placement.** Every block that takes part gets a place `(epoch, pos)` from one atomic
//!   counter: its area goes to the ring at `pos` (rounded up to [`ring::CHUNK`]), on the
//!   encoder at once and on the decoder when the block is restored. Blocks from different
//!   shards never share a chunk.
//! - **Anchors.** Content-defined: a position is an anchor when a 16-bit hash of the 4 bytes
//!   there has its top [`SAMPLE_BITS`] bits zero (one position in 64 on random data).
//!   The index maps a hash of the [`KEY_LEN`] bytes at an anchor to where they were seen, so a
//!   repeated range is found at any offset inside a packet, in any flow, from any shard. A
//!   candidate is compared byte for byte against the ring and extended both ways; a range of at
//!   least `min_match` bytes becomes a reference.
//! - **Informed marking.** The encoder references only chunks tagged as acknowledged: a
//!   block's chunks get their tag when the peer's decoder acks the block, and the decoder acks
//!   a block only after writing it to its own ring. A lost datagram therefore never makes a
//!   later one undecodable: nothing refers to it.
//! - **Epochs.** Tags carry the epoch and the ring pass, so a chunk overwritten by a newer pass
//!   or left from an older epoch never satisfies a reference. A decoder that cannot resolve a
//!   reference, or whose restored area fails the block checksum, drops the block (never
//!   delivers it) and asks for a new epoch; the encoder starts one at position 0 and announces
//!   it, and references of the old epoch are refused from then on.
//! - **Bounds.** Ring, tags and index are fixed at creation (claimed lazily), so memory never
//!   grows with traffic: ring `cache` bytes, tags `cache / 16`, index `cache / 4` (encoder
//!   only). References from the peer are untrusted input: out of range, unacknowledged or
//!   unknown ones are errors, counted, never a panic or an out-of-bounds read.
//!
//! # Stream format (the body of a block with references, before compression)
//!
//! A sequence of `varint literal_len, literal bytes, varint match_len, varint distance`, ended by
//! a final `varint literal_len, literal bytes` that reaches the end of the stream. `distance` is
//! the zigzag-encoded `block_pos - ref_pos` of the referenced range. The expanded stream is the
//! block's packet area, exactly `area_len` bytes.

pub mod decode;
pub mod encode;
pub mod ring;

pub use decode::DecoderCache;
pub use encode::EncoderCache;

pub use super::wire::Place;

use super::varint;

/// Top bits of the anchor hash that must be zero: one anchor every 2^6 = 64 bytes on average.
///
/// Each anchor costs a key hash and an index bucket (a cache miss) whether or not it finds
/// anything, so on traffic that never repeats the anchor rate sets dedupe's cost. `cargo bench
/// --bench dedupe` (2-vCPU AMD EPYC guest), 5 -> 6 -> 7: random areas 595 -> 970 -> 910 MiB/s;
/// the bench's repeat transfer 0.051 -> 0.046 -> 0.085 of the first one's WAN bytes, the new
/// version 0.058 -> 0.054 -> 0.088, the first transfer itself 5% larger at 6 than at 5. At 7
/// the scan was no faster and missed matches.
pub const SAMPLE_BITS: u32 = 6;

/// The same for [`encode::Density::Sparse`] areas (flows the compressor found
/// incompressible): one anchor every 2^8 = 256 bytes. `cargo bench --bench dedupe` (2-vCPU AMD
/// EPYC guest, default 64 MiB ring): random areas 631-677 MiB/s with dense anchors, 973-1004
/// with sparse. The unit test
/// `a_sparsely_scanned_incompressible_transfer_is_found_again_almost_whole` measures what it
/// costs: a repeat cut into one-packet areas went 1.12 times the bytes of a dense scan.
pub const SPARSE_SAMPLE_BITS: u32 = 8;

/// Bytes hashed into an index key; the shortest range a lookup can find.
pub const KEY_LEN: usize = 32;

/// Default shortest reference, in bytes (see `benches/dedupe.rs` for how it was chosen).
pub const DEFAULT_MIN_MATCH: usize = 128;

/// Areas shorter than this are not placed; the encoder also leaves out blocks with fewer
/// payload bytes than this past their packets' headers (pure TCP acks: nothing to gain).
pub const MIN_AREA: usize = 128;

/// Default cache (ring) size per peer and direction.
pub const DEFAULT_CACHE: usize = 64 << 20;

/// Largest cache: ring offsets are stored in 32 bits.
pub const MAX_CACHE: usize = 4 << 30;

/// Settings of one dedupe context; both ends must use the same `cache` size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DedupeConfig {
    /// Ring size in bytes (rounded up to [`ring::SEGMENT`]); at most [`MAX_CACHE`].
    pub cache: usize,
    /// Shortest range replaced by a reference, at least [`KEY_LEN`].
    pub min_match: usize,
}

impl DedupeConfig {
    /// A context with a `cache`-byte ring and the default minimum match.
    pub fn with_cache(cache: usize) -> DedupeConfig {
        DedupeConfig {
            cache: cache.min(MAX_CACHE),
            min_match: DEFAULT_MIN_MATCH,
        }
    }
}

/// Why a dedupe stream could not be expanded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DedupeError {
    /// The stream's framing is broken (truncated varint, lengths past the area or the stream,
    /// or a placement that is misaligned or wraps).
    Malformed,
    /// A reference points at bytes this decoder does not hold for that epoch: out of range,
    /// never written, overwritten since, or of an epoch that is not the current one.
    BadReference,
}

fn zigzag(delta: i64) -> u64 {
    ((delta << 1) ^ (delta >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn push_literal(out: &mut Vec<u8>, literal: &[u8]) {
    varint::push(out, literal.len() as u64);
    out.extend_from_slice(literal);
}

fn push_reference(out: &mut Vec<u8>, len: usize, delta: i64) {
    varint::push(out, len as u64);
    varint::push(out, zigzag(delta));
}

#[cfg(test)]
mod tests;
