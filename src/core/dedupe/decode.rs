//! The receiving end of a dedupe context: expands references from the peer against the ring,
//! treating every one of them as untrusted input.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::ring::{self, CHUNK, Ring};
use super::{DedupeConfig, DedupeError, Place, unzigzag};
use crate::core::varint;

/// Positions a peer may name: below this (the encoder renews its epoch long before).
const MAX_POS: u64 = 1 << 48;

/// Counters of a [`DecoderCache`], summed over every shard that uses it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DecoderCacheStats {
    /// Blocks written to the ring.
    pub blocks_stored: u64,
    /// References resolved, and the bytes they restored from the ring.
    pub refs: u64,
    pub bytes_from_cache: u64,
    /// References refused (out of range, unacknowledged, overwritten, unknown epoch): their
    /// blocks were dropped.
    pub refs_rejected: u64,
    /// Blocks with references whose restored area failed the checksum: dropped.
    pub checksum_failures: u64,
    /// New epochs asked of the peer, and epochs adopted from its announcements.
    pub resets_requested: u64,
    pub epochs: u64,
}

#[derive(Default)]
struct AtomicStats {
    blocks_stored: AtomicU64,
    refs: AtomicU64,
    bytes_from_cache: AtomicU64,
    refs_rejected: AtomicU64,
    checksum_failures: AtomicU64,
    resets_requested: AtomicU64,
    epochs: AtomicU64,
}

/// The receiving end of one dedupe context, shared by every shard that receives from the peer.
pub struct DecoderCache {
    ring: Ring,
    /// The epoch references are accepted for, plus one (0: none announced yet).
    current: AtomicU32,
    /// The epoch a new one was last asked for, plus one (0: none).
    requested: AtomicU32,
    /// A request waiting for the control path: epoch plus one (0: none).
    pending: AtomicU32,
    stats: AtomicStats,
}

impl DecoderCache {
    /// A context with the given settings (the `cache` size must match the peer's encoder).
    /// It accepts references once an epoch is announced.
    pub fn new(config: DedupeConfig) -> DecoderCache {
        DecoderCache {
            ring: Ring::new(config.cache),
            current: AtomicU32::new(0),
            requested: AtomicU32::new(0),
            pending: AtomicU32::new(0),
            stats: AtomicStats::default(),
        }
    }

    /// Ring size in bytes.
    pub fn size(&self) -> u64 {
        self.ring.size()
    }

    /// Bytes of memory claimed so far.
    pub fn resident(&self) -> usize {
        self.ring.resident()
    }

    /// The epoch references are accepted for, once announced.
    pub fn epoch(&self) -> Option<u16> {
        match self.current.load(Ordering::Acquire) {
            0 => None,
            e => Some((e - 1) as u16),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> DecoderCacheStats {
        let s = &self.stats;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DecoderCacheStats {
            blocks_stored: get(&s.blocks_stored),
            refs: get(&s.refs),
            bytes_from_cache: get(&s.bytes_from_cache),
            refs_rejected: get(&s.refs_rejected),
            checksum_failures: get(&s.checksum_failures),
            resets_requested: get(&s.resets_requested),
            epochs: get(&s.epochs),
        }
    }

    /// The peer's encoder announced `epoch`: references of other epochs are refused from now.
    pub fn handle_announce(&self, epoch: u16) {
        let value = u32::from(epoch) + 1;
        if self.current.swap(value, Ordering::AcqRel) != value {
            self.stats.epochs.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A new-epoch request waiting for the control path, taken once.
    pub fn poll_request(&self) -> Option<u16> {
        match self.pending.swap(0, Ordering::AcqRel) {
            0 => None,
            e => Some((e - 1) as u16),
        }
    }

    /// True if `len` bytes at `place` are a placement the ring can hold.
    pub fn valid_place(&self, place: Place, len: usize) -> bool {
        place.pos % CHUNK as u64 == 0
            && place.pos < MAX_POS
            && self.ring.fits(place.pos, len.div_ceil(CHUNK) * CHUNK)
    }

    /// Expands `stream` (literals and references, see the module doc of `dedupe`) of a block
    /// at `place` into exactly `out.len()` bytes.
    ///
    /// # Errors
    /// [`DedupeError::Malformed`] for broken framing; [`DedupeError::BadReference`] for a
    /// reference this ring cannot satisfy (or an epoch that is not the current one), which is
    /// counted and makes the context ask for a new epoch. Either way `out` is not to be used.
    pub fn expand(&self, place: Place, stream: &[u8], out: &mut [u8]) -> Result<(), DedupeError> {
        let result = self.expand_inner(place, stream, out);
        if result == Err(DedupeError::BadReference) {
            self.stats.refs_rejected.fetch_add(1, Ordering::Relaxed);
            self.failed(place.epoch);
        }
        result
    }

    fn expand_inner(&self, place: Place, stream: &[u8], out: &mut [u8]) -> Result<(), DedupeError> {
        if !self.valid_place(place, out.len()) {
            return Err(DedupeError::Malformed);
        }
        if self.epoch() != Some(place.epoch) {
            return Err(DedupeError::BadReference);
        }
        let (mut s, mut o) = (0usize, 0usize);
        let (mut refs, mut from_cache) = (0u64, 0u64);
        loop {
            let (literal, used) = varint::read(&stream[s..]).map_err(|_| DedupeError::Malformed)?;
            s += used;
            let literal = usize::try_from(literal).map_err(|_| DedupeError::Malformed)?;
            if literal > stream.len() - s || literal > out.len() - o {
                return Err(DedupeError::Malformed);
            }
            out[o..o + literal].copy_from_slice(&stream[s..s + literal]);
            s += literal;
            o += literal;
            if s == stream.len() {
                break;
            }
            let (len, used) = varint::read(&stream[s..]).map_err(|_| DedupeError::Malformed)?;
            s += used;
            let (distance, used) =
                varint::read(&stream[s..]).map_err(|_| DedupeError::Malformed)?;
            s += used;
            let len = usize::try_from(len).map_err(|_| DedupeError::Malformed)?;
            if len == 0 || len > out.len() - o {
                return Err(DedupeError::Malformed);
            }
            let at = i128::from(place.pos) - i128::from(unzigzag(distance));
            if at < 0 || at >= i128::from(MAX_POS) {
                return Err(DedupeError::BadReference);
            }
            let at = at as u64;
            let tag = ring::tag(place.epoch, self.ring.round(at));
            if !self.ring.read(at, &mut out[o..o + len], tag) {
                return Err(DedupeError::BadReference);
            }
            o += len;
            refs += 1;
            from_cache += len as u64;
        }
        if o != out.len() {
            return Err(DedupeError::Malformed);
        }
        self.stats.refs.fetch_add(refs, Ordering::Relaxed);
        self.stats
            .bytes_from_cache
            .fetch_add(from_cache, Ordering::Relaxed);
        Ok(())
    }

    /// A block with references at `epoch` restored to an area that fails its checksum: the
    /// rings disagree. Counted; a new epoch is asked for.
    pub fn checksum_failed(&self, epoch: u16) {
        self.stats.checksum_failures.fetch_add(1, Ordering::Relaxed);
        self.failed(epoch);
    }

    /// Asks for a new epoch once per failing epoch, unless the failure is about an older epoch
    /// than the announced one (data still in flight from before a reset).
    fn failed(&self, epoch: u16) {
        if let Some(current) = self.epoch()
            && current != epoch
        {
            return;
        }
        let value = u32::from(epoch) + 1;
        if self.requested.swap(value, Ordering::AcqRel) != value {
            self.pending.store(value, Ordering::Release);
            self.stats.resets_requested.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Writes a verified area of a block at `place` (checked with
    /// [`DecoderCache::valid_place`]) to the ring, where references of its epoch can find it.
    pub fn store(&self, place: Place, area: &[u8]) {
        if !self.valid_place(place, area.len()) {
            return;
        }
        let tag = ring::tag(place.epoch, self.ring.round(place.pos));
        self.ring.store(place.pos, area, tag);
        self.stats.blocks_stored.fetch_add(1, Ordering::Relaxed);
    }
}
