//! The sending end of a dedupe context: placement, the anchor index and the scan that turns
//! a packet area into literals and references.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::ring::{self, CHUNK, Ring};
use super::{DedupeConfig, KEY_LEN, MIN_AREA, Place, SAMPLE_BITS, push_literal, push_reference};

/// Multiplier of the anchor hash (a 64-bit odd constant with well-spread bits).
const ANCHOR_MUL: u64 = 0x9E37_79B9_7F4A_7C15;

/// Index slots per lazily claimed page.
const PAGE_SLOTS: usize = 1 << 16;

/// Positions live in the low 48 bits of the state word, the epoch in the high 16.
const POS_BITS: u32 = 48;
const POS_MASK: u64 = (1 << POS_BITS) - 1;

/// An epoch is renewed before its positions reach this (never in practice: 128 TiB).
const POS_LIMIT: u64 = 1 << 47;

/// Counters of an [`EncoderCache`], summed over every shard that uses it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EncoderCacheStats {
    /// Blocks placed in the ring.
    pub blocks: u64,
    /// Packet-area bytes placed (scanned).
    pub bytes_in: u64,
    /// Of those, bytes replaced by references.
    pub bytes_matched: u64,
    /// References made.
    pub refs: u64,
    /// Blocks sent with references (the others went as plain areas).
    pub blocks_with_refs: u64,
    /// Area bytes of those blocks minus their stream bytes: what dedupe saved before
    /// compression.
    pub bytes_saved: u64,
    /// Anchors looked up, and how many led to a reference.
    pub lookups: u64,
    pub hits: u64,
    /// Blocks the peer acknowledged (their bytes became referenceable).
    pub blocks_acked: u64,
    /// Epochs started after the first (the peer asked, or positions ran out).
    pub resets: u64,
}

#[derive(Default)]
struct AtomicStats {
    blocks: AtomicU64,
    bytes_in: AtomicU64,
    bytes_matched: AtomicU64,
    refs: AtomicU64,
    blocks_with_refs: AtomicU64,
    bytes_saved: AtomicU64,
    lookups: AtomicU64,
    hits: AtomicU64,
    blocks_acked: AtomicU64,
    resets: AtomicU64,
}

fn bump(counter: &AtomicU64, n: u64) {
    if n > 0 {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// The sending end of one dedupe context, shared by every shard that sends to the peer.
pub struct EncoderCache {
    ring: Ring,
    /// Hash-addressed slots: `check << 32 | ring offset` of the latest anchor with that key
    /// (0: empty). Claimed in pages on first insert.
    index: Box<[OnceLock<Box<[AtomicU64]>>]>,
    index_bits: u32,
    /// `epoch << 48 | next free position`.
    state: AtomicU64,
    min_match: usize,
    /// The current epoch still has to be announced to the peer.
    announce: AtomicBool,
    stats: AtomicStats,
}

/// Outcome of [`EncoderCache::encode`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoded {
    /// No reference worth sending: send the plain area (it is placed all the same).
    Plain,
    /// `out` holds a stream shorter than the area.
    Stream,
}

impl EncoderCache {
    /// A context with the given settings, starting at epoch 0 (announced through
    /// [`EncoderCache::poll_announce`]).
    pub fn new(config: DedupeConfig) -> EncoderCache {
        let ring = Ring::new(config.cache);
        let slots = (ring.size() as usize / 32)
            .next_power_of_two()
            .max(PAGE_SLOTS);
        EncoderCache {
            index: (0..slots / PAGE_SLOTS).map(|_| OnceLock::new()).collect(),
            index_bits: slots.trailing_zeros(),
            ring,
            state: AtomicU64::new(0),
            min_match: config.min_match.max(KEY_LEN),
            announce: AtomicBool::new(true),
            stats: AtomicStats::default(),
        }
    }

    /// Ring size in bytes.
    pub fn size(&self) -> u64 {
        self.ring.size()
    }

    /// Bytes of memory claimed so far (ring, tags and index pages).
    pub fn resident(&self) -> usize {
        let pages = self.index.iter().filter(|p| p.get().is_some()).count();
        self.ring.resident() + pages * PAGE_SLOTS * 8
    }

    /// The current epoch.
    pub fn epoch(&self) -> u16 {
        (self.state.load(Ordering::Acquire) >> POS_BITS) as u16
    }

    /// Counters so far.
    pub fn stats(&self) -> EncoderCacheStats {
        let s = &self.stats;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        EncoderCacheStats {
            blocks: get(&s.blocks),
            bytes_in: get(&s.bytes_in),
            bytes_matched: get(&s.bytes_matched),
            refs: get(&s.refs),
            blocks_with_refs: get(&s.blocks_with_refs),
            bytes_saved: get(&s.bytes_saved),
            lookups: get(&s.lookups),
            hits: get(&s.hits),
            blocks_acked: get(&s.blocks_acked),
            resets: get(&s.resets),
        }
    }

    /// True if an area of `len` bytes takes part in dedupe.
    pub fn wants(&self, len: usize) -> bool {
        len >= MIN_AREA && (len as u64) <= self.ring.size()
    }

    /// Reserves a place for an area of `len` bytes (see [`EncoderCache::wants`]): the next
    /// chunk-aligned position, moved to the start of the next ring pass if the area would wrap.
    pub fn reserve(&self, len: usize) -> Place {
        let need = (len.div_ceil(CHUNK) * CHUNK) as u64;
        let mut current = self.state.load(Ordering::Acquire);
        loop {
            let mut epoch = (current >> POS_BITS) as u16;
            let mut pos = current & POS_MASK;
            if !self.ring.fits(pos, need as usize) {
                pos = (self.ring.round(pos) + 1) * self.ring.size();
            }
            let mut renewed = false;
            if pos + need >= POS_LIMIT {
                epoch = epoch.wrapping_add(1);
                pos = 0;
                renewed = true;
            }
            let next = (u64::from(epoch) << POS_BITS) | (pos + need);
            match self.state.compare_exchange_weak(
                current,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    if renewed {
                        self.announce.store(true, Ordering::Release);
                        bump(&self.stats.resets, 1);
                    }
                    return Place { epoch, pos };
                }
                Err(actual) => current = actual,
            }
        }
    }

    /// Marks the `len` bytes placed at `place` as held by the peer's decoder (it acked their
    /// block): from now on they may be referenced.
    pub fn acked(&self, place: Place, len: usize) {
        let tag = ring::tag(place.epoch, self.ring.round(place.pos));
        self.ring.set_tags(place.pos, len, tag);
        bump(&self.stats.blocks_acked, 1);
    }

    /// The peer's decoder cannot follow `epoch` (it lost its ring, or restored a wrong area):
    /// if that is still the current epoch, start the next one at position 0 and announce it.
    pub fn handle_request(&self, epoch: u16) {
        let current = self.state.load(Ordering::Acquire);
        if (current >> POS_BITS) as u16 != epoch {
            return;
        }
        let next = u64::from(epoch.wrapping_add(1)) << POS_BITS;
        if self
            .state
            .compare_exchange(current, next, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.announce.store(true, Ordering::Release);
            bump(&self.stats.resets, 1);
        }
    }

    /// The epoch to announce to the peer, once per change; `None` if it knows it already.
    pub fn poll_announce(&self) -> Option<u16> {
        self.announce
            .swap(false, Ordering::AcqRel)
            .then(|| self.epoch())
    }

    /// Stores `area` at `place` and scans it. [`Encoded::Stream`]: `out` holds literals and
    /// references, shorter than `area`; [`Encoded::Plain`]: send `area` itself.
    pub fn encode(&self, place: Place, area: &[u8], out: &mut Vec<u8>) -> Encoded {
        self.ring.store(place.pos, area, 0);
        out.clear();
        let head = self.state.load(Ordering::Acquire);
        let mut scan = Scan {
            cache: self,
            place,
            head: head & POS_MASK,
            // A reset since the place was taken: nothing of this epoch is worth looking up.
            search: (head >> POS_BITS) as u16 == place.epoch,
            lookups: 0,
            hits: 0,
            matched: 0,
            refs: 0,
        };
        let result = scan.run(area, out);
        let s = &self.stats;
        bump(&s.blocks, 1);
        bump(&s.bytes_in, area.len() as u64);
        bump(&s.lookups, scan.lookups);
        bump(&s.hits, scan.hits);
        if result == Encoded::Stream {
            bump(&s.blocks_with_refs, 1);
            bump(&s.bytes_matched, scan.matched);
            bump(&s.refs, scan.refs);
            bump(&s.bytes_saved, (area.len() - out.len()) as u64);
        }
        result
    }

    fn slot(&self, key: u64) -> Option<&AtomicU64> {
        let i = (key >> (64 - self.index_bits)) as usize;
        self.index[i / PAGE_SLOTS]
            .get()
            .map(|page| &page[i % PAGE_SLOTS])
    }

    fn slot_or_claim(&self, key: u64) -> &AtomicU64 {
        let i = (key >> (64 - self.index_bits)) as usize;
        let page = self.index[i / PAGE_SLOTS]
            .get_or_init(|| (0..PAGE_SLOTS).map(|_| AtomicU64::new(0)).collect());
        &page[i % PAGE_SLOTS]
    }

    /// The newest absolute position at or before `head` whose ring offset is `offset`, if it
    /// is less than a ring size behind.
    fn position_of(&self, head: u64, offset: usize) -> Option<u64> {
        let size = self.ring.size();
        let back = (self.ring.offset(head) as u64 + size - offset as u64) % size;
        head.checked_sub(back)
    }
}

/// Hash deciding whether a position is an anchor (top [`SAMPLE_BITS`] bits zero).
#[inline]
fn anchor_hash(window: u64) -> u64 {
    window.wrapping_mul(ANCHOR_MUL)
}

/// Index key of the [`KEY_LEN`] bytes at an anchor.
#[inline]
fn key_hash(bytes: &[u8; KEY_LEN]) -> u64 {
    let w = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
    let mut h = w(0).wrapping_mul(0xA076_1D64_78BD_642F)
        ^ w(8).wrapping_mul(0xE703_7ED1_A0B4_28DB)
        ^ w(16).wrapping_mul(0x8EBC_6AF0_9C88_C6E3)
        ^ w(24).wrapping_mul(0x5899_65CC_7537_4CC3);
    h ^= h >> 29;
    h = h.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h ^ (h >> 32)
}

#[inline]
fn window(area: &[u8], i: usize) -> u64 {
    u64::from_le_bytes(area[i..i + 8].try_into().expect("8 bytes"))
}

/// One block's scan.
struct Scan<'a> {
    cache: &'a EncoderCache,
    place: Place,
    /// Next free position when the scan started: candidates lie before it.
    head: u64,
    search: bool,
    lookups: u64,
    hits: u64,
    matched: u64,
    refs: u64,
}

impl Scan<'_> {
    fn run(&mut self, area: &[u8], out: &mut Vec<u8>) -> Encoded {
        if area.len() < KEY_LEN {
            return Encoded::Plain;
        }
        let last = area.len() - KEY_LEN;
        let mut literal_start = 0;
        let mut i = 0;
        // Where the last reference's source continues, as the ring position of area index 0:
        // data sent again is mostly sent in the same order, so the bytes after a match are
        // first looked for right after its source (like an LZ "repeat offset"). Without it,
        // a range that occurs in many places (page boilerplate) is taken from the newest copy
        // and the match ends with it.
        let mut repeat: Option<i128> = None;
        while i <= last {
            if anchor_hash(window(area, i)) >> (64 - SAMPLE_BITS) != 0 {
                i += 1;
                continue;
            }
            let key = key_hash(area[i..i + KEY_LEN].try_into().expect("KEY_LEN bytes"));
            let continued = repeat
                .and_then(|base| u64::try_from(base + i as i128).ok())
                .filter(|&cand| cand < self.head)
                .and_then(|cand| self.verify(area, literal_start, i, cand));
            let found = match continued {
                Some(m) => {
                    self.hits += 1;
                    Some(m)
                }
                None => self.lookup(area, literal_start, i, key),
            };
            if let Some((start, len, ref_pos)) = found {
                repeat = Some(ref_pos as i128 - start as i128);
                push_literal(out, &area[literal_start..start]);
                push_reference(out, len, self.place.pos as i64 - ref_pos as i64);
                self.refs += 1;
                self.matched += len as u64;
                // Refresh the index over the matched range too, so this newer copy takes over
                // once the older one ages out of the ring.
                let end = start + len;
                let mut j = i + 1;
                while j < end.min(last + 1) {
                    if anchor_hash(window(area, j)) >> (64 - SAMPLE_BITS) == 0 {
                        let key = key_hash(area[j..j + KEY_LEN].try_into().expect("KEY_LEN"));
                        self.insert(key, j);
                    }
                    j += 1;
                }
                literal_start = end;
                i = end;
                if out.len() >= area.len() {
                    return Encoded::Plain;
                }
                continue;
            }
            i += 1;
        }
        if self.refs == 0 {
            return Encoded::Plain;
        }
        push_literal(out, &area[literal_start..]);
        if out.len() >= area.len() {
            return Encoded::Plain;
        }
        Encoded::Stream
    }

    /// Looks `key` (the anchor at `i`) up and records this anchor in the index. Returns a
    /// verified match `(start in area, len, ring position)` of at least `min_match` bytes that
    /// starts at or after `floor`.
    fn lookup(
        &mut self,
        area: &[u8],
        floor: usize,
        i: usize,
        key: u64,
    ) -> Option<(usize, usize, u64)> {
        let cache = self.cache;
        let check = (key as u32) | 1;
        let found = if self.search {
            cache.slot(key).map(|s| s.load(Ordering::Relaxed))
        } else {
            None
        };
        let candidate = found
            .filter(|e| (e >> 32) as u32 == check)
            .and_then(|e| cache.position_of(self.head, e as u32 as usize));
        self.lookups += 1;
        let result = candidate.and_then(|cand| self.verify(area, floor, i, cand));
        if result.is_some() {
            self.hits += 1;
        }
        self.insert(key, i);
        result
    }

    /// Records the anchor at `i` under `key`, unless the slot already holds the same bytes at
    /// a position less than half a ring old: the older copy is kept. It is acknowledged (or
    /// soon will be) while this one is still in flight, and data that repeats within a round
    /// trip would otherwise always point at a copy nobody may reference yet.
    fn insert(&self, key: u64, i: usize) {
        let cache = self.cache;
        let check = (key as u32) | 1;
        let slot = cache.slot_or_claim(key);
        let old = slot.load(Ordering::Relaxed);
        if (old >> 32) as u32 == check
            && let Some(c) = cache.position_of(self.head, old as u32 as usize)
            && self.head - c < cache.ring.size() / 2
            && c < self.place.pos
        {
            return;
        }
        let offset = cache.ring.offset(self.place.pos + i as u64) as u64;
        slot.store((u64::from(check) << 32) | offset, Ordering::Relaxed);
    }

    /// Compares the area around `i` with the ring around candidate position `cand`.
    fn verify(
        &self,
        area: &[u8],
        floor: usize,
        i: usize,
        cand: u64,
    ) -> Option<(usize, usize, u64)> {
        let cache = self.cache;
        let ring = &cache.ring;
        // Far enough from the head that no pass can overwrite it while the block is in
        // flight: an eighth of the ring of margin.
        if self.head - cand > ring.size() - ring.size() / 8 {
            return None;
        }
        let tag = ring::tag(self.place.epoch, ring.round(cand));
        let forward = ring.match_forward(cand, &area[i..], tag);
        if forward < KEY_LEN {
            return None;
        }
        let backward = ring.match_backward(cand, &area[floor..i], tag);
        let len = forward + backward;
        if len < cache.min_match {
            return None;
        }
        let ref_pos = cand - backward as u64;
        if !ring.still_tagged(ref_pos, len, tag) {
            return None;
        }
        Some((i - backward, len, ref_pos))
    }
}
