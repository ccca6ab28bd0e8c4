//! The sending end of a dedupe context: placement, the anchor index and the scan that turns
//! a packet area into literals and references.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::ring::{self, CHUNK, Ring};
use super::{
    DedupeConfig, KEY_LEN, MIN_AREA, Place, SAMPLE_BITS, SPARSE_SAMPLE_BITS, push_literal,
    push_reference,
};

/// Multipliers of the anchor hash, one per byte pair of its window (odd; chosen by what they
/// do on text, see [`anchor_hash`]).
const ANCHOR_MUL: [u16; 2] = [0xA31D, 0xD357];

/// Bytes that decide whether a position is an anchor.
const ANCHOR_WINDOW: usize = 4;

/// Index slots per lazily claimed page.
const PAGE_SLOTS: usize = 1 << 16;

/// Slots per index bucket: the oldest copy still worth keeping, and the newest.
const WAYS: usize = 2;

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
    /// Comparisons with where an earlier reference's source continues (see
    /// [`CONTINUATION_TRIES`]).
    pub continuations: u64,
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
    continuations: AtomicU64,
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
    /// Hash-addressed buckets of [`WAYS`] slots, each `check << 32 | pass << offset_bits |
    /// ring offset` of an anchor with that key (0: empty), where `pass` is the low bits of
    /// the ring pass the anchor was written in, as many as fit above the offset. Claimed in
    /// pages on first insert.
    index: Box<[OnceLock<Box<[AtomicU64]>>]>,
    index_bits: u32,
    /// Bits of a slot's low half that hold the ring offset (32 for a 4 GiB ring: no pass).
    offset_bits: u32,
    /// `epoch << 48 | next free position`.
    state: AtomicU64,
    min_match: usize,
    /// The current epoch still has to be announced to the peer.
    announce: AtomicBool,
    stats: AtomicStats,
}

/// Where the previous area's last reference ended in the ring, kept by the caller from one
/// [`EncoderCache::encode_after`] to the next (one per encoder).
///
/// Data sent again arrives cut into packets at other places than the first time: an area
/// usually continues right where the previous one's source ended, a packet header further on.
/// Without this, an area's first match came from the index alone, which holds the newest
/// copies of a phrase: text that repeats itself (page boilerplate) was then taken from a recent
/// copy, in pieces, while the older copy of the whole transfer went on matching.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Trail(Option<u64>);

/// How many positions of an area are anchors (looked up and indexed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Density {
    /// One in 2^[`SAMPLE_BITS`]: data that compresses (text, markup, binaries), whose repeats
    /// are often phrases repeated inside the data itself, short and many.
    Dense,
    /// One in 2^[`SPARSE_SAMPLE_BITS`], a subset of the dense anchors: data the compressor
    /// found incompressible (compressed files, media, encrypted streams). It does not repeat
    /// inside itself, so one anchor still finds a whole earlier copy, which the match then
    /// extends over backwards and forwards; fewer anchors mean fewer index cache misses on
    /// bytes that, being encrypted, mostly never come again.
    Sparse,
}

impl Density {
    /// Anchor hashes below this mark anchors.
    const fn below(self) -> u16 {
        match self {
            Density::Dense => 1 << (16 - SAMPLE_BITS),
            Density::Sparse => 1 << (16 - SPARSE_SAMPLE_BITS),
        }
    }
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
            offset_bits: ring.size().next_power_of_two().trailing_zeros().min(32),
            ring,
            state: AtomicU64::new(0),
            min_match: config.min_match.max(KEY_LEN),
            announce: AtomicBool::new(true),
            stats: AtomicStats::default(),
        }
    }

    /// The low bits of `pos`'s ring pass, shifted above the ring offset in an index slot.
    fn pass_bits(&self, pos: u64) -> u32 {
        if self.offset_bits >= 32 {
            0
        } else {
            (self.ring.round(pos) << self.offset_bits) as u32
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
            continuations: get(&s.continuations),
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

    /// Stores `area` at `place` and scans it with [`Density::Dense`] anchors.
    /// [`Encoded::Stream`]: `out` holds literals and references, shorter than `area`;
    /// [`Encoded::Plain`]: send `area` itself.
    pub fn encode(&self, place: Place, area: &[u8], out: &mut Vec<u8>) -> Encoded {
        self.encode_after(place, area, out, &mut Trail::default(), Density::Dense)
    }

    /// [`EncoderCache::encode`] with anchors of the given `density`, first looking for the
    /// area's bytes where the previous area's last reference ended (`trail`), which it then
    /// updates.
    pub fn encode_after(
        &self,
        place: Place,
        area: &[u8],
        out: &mut Vec<u8>,
        trail: &mut Trail,
        density: Density,
    ) -> Encoded {
        self.ring.store(place.pos, area, 0);
        out.clear();
        let head = self.state.load(Ordering::Acquire);
        let mut scan = Scan {
            cache: self,
            place,
            head: head & POS_MASK,
            head_offset: self.ring.offset(head & POS_MASK) as u64,
            place_offset: self.ring.offset(place.pos),
            place_pass: self.pass_bits(place.pos),
            // A reset since the place was taken: nothing of this epoch is worth looking up.
            search: (head >> POS_BITS) as u16 == place.epoch,
            density,
            lookups: 0,
            hits: 0,
            continuations: 0,
            matched: 0,
            refs: 0,
            trail: trail.0,
        };
        let result = scan.run(area, out);
        trail.0 = scan.trail;
        let s = &self.stats;
        bump(&s.blocks, 1);
        bump(&s.bytes_in, area.len() as u64);
        bump(&s.lookups, scan.lookups);
        bump(&s.hits, scan.hits);
        bump(&s.continuations, scan.continuations);
        if result == Encoded::Stream {
            bump(&s.blocks_with_refs, 1);
            bump(&s.bytes_matched, scan.matched);
            bump(&s.refs, scan.refs);
            bump(&s.bytes_saved, (area.len() - out.len()) as u64);
        }
        result
    }

    /// Index of the first slot of `key`'s bucket.
    fn bucket_at(&self, key: u64) -> usize {
        (key >> (65 - self.index_bits)) as usize * WAYS
    }

    /// The two slots of `key`'s bucket (see [`Scan::insert`]), its page claimed if need be.
    fn bucket_or_claim(&self, key: u64) -> &[AtomicU64] {
        let i = self.bucket_at(key);
        let page = self.index[i / PAGE_SLOTS]
            .get_or_init(|| (0..PAGE_SLOTS).map(|_| AtomicU64::new(0)).collect());
        &page[i % PAGE_SLOTS..i % PAGE_SLOTS + WAYS]
    }
}

/// Hash deciding whether a position is an anchor: below [`Density::below`] (its top
/// [`SAMPLE_BITS`] or [`SPARSE_SAMPLE_BITS`] bits zero). The window's two little-endian byte
/// pairs times odd multipliers, so that the hashes of eight neighbouring positions of one
/// parity are 16-bit vector multiplies of the bytes as loaded, with no widening (see
/// [`anchor_mask`]); a byte per term with its own multiplier took twice the instructions.
///
/// On random data every odd pair of multipliers marks one position in 2^[`SAMPLE_BITS`]; on
/// text the rate and spacing depend on the pair, as text's windows are few. Over the Rust
/// docs, ten pairs gave from one anchor in 42 to one in 105 positions. 0x9E37 and 0x58A5:
/// one in 60, clustered (99th percentile gap 351 bytes), and `cargo bench --bench dedupe`'s
/// repeat transfer cost 0.0595 of the first one's bytes where the byte-wise hash before
/// (one in 47) gave 0.0440. These (those two times 0x7F4B): one in 53, the 99th percentile
/// gap 201, and 0.0456.
#[inline]
fn anchor_hash(w: &[u8]) -> u16 {
    pair(w, 0)
        .wrapping_mul(ANCHOR_MUL[0])
        .wrapping_add(pair(w, 2).wrapping_mul(ANCHOR_MUL[1]))
}

/// The two bytes at `at` as a little-endian `u16`.
#[inline]
fn pair(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
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

/// Which of the `count` (at most 64) positions from `start` are anchors (hash below `below`),
/// as bits; every position needs [`ANCHOR_WINDOW`] bytes of `area` from it. For a whole 64,
/// even and odd positions are hashed apart: the pairs at positions 0, 2, 4... are the bytes
/// read as `u16`s, so eight hashes are two multiplies and an add with no widening, and the
/// two tests of a position pair go into one `u16`, even in the low byte, which leaves one flag
/// byte per position in order; the flags are then packed eight at a time with a multiply.
#[inline]
fn anchor_mask(area: &[u8], start: usize, count: usize, below: u16) -> u64 {
    let mut mask = 0;
    if count == 64 {
        const SPAN: usize = 64 + ANCHOR_WINDOW - 1;
        let bytes: &[u8; SPAN] = area[start..start + SPAN].try_into().expect("span");
        let mut flags = [0u8; 64];
        for (i, two) in flags.chunks_exact_mut(2).enumerate() {
            let k = 2 * i;
            let even = anchor_hash(&bytes[k..k + ANCHOR_WINDOW]) < below;
            let odd = anchor_hash(&bytes[k + 1..k + 1 + ANCHOR_WINDOW]) < below;
            two.copy_from_slice(&(u16::from(even) | u16::from(odd) << 8).to_le_bytes());
        }
        for (j, eight) in flags.chunks_exact(8).enumerate() {
            // Bytes of 0 or 1: the multiply gathers bit 0 of byte i into bit 56 + i.
            let v = u64::from_le_bytes(eight.try_into().expect("8 flags"));
            mask |= (v.wrapping_mul(0x0102_0408_1020_4080) >> 56) << (8 * j);
        }
    } else {
        for k in 0..count {
            let at = start + k;
            mask |= u64::from(anchor_hash(&area[at..at + ANCHOR_WINDOW]) < below) << k;
        }
    }
    mask
}

/// How far past where a reference's source ended the bytes after it are looked for (see
/// [`Scan::near`]): a packet header and the padding to the next chunk.
const NEAR: usize = 256;

/// Bytes a reference covers are indexed again (at sparse anchors, so that this newer copy
/// takes over when the older one leaves the ring) only if the reference's source is at least
/// a `2^-REFRESH_AGE_SHIFT` part of the ring older than them. A younger source still stands
/// for them in the index for most of a ring: the new copy would outlive it by less than that
/// part, and only if the bytes do not come again in between (a later copy of them, from what
/// is then an older source, is indexed). Text repeats itself mostly from recent pages
/// (boilerplate, phrases): indexing such copies again took time (an experiment that indexed
/// no covered bytes at all encoded fresh text 12-15% faster) and, as the numbers suggest,
/// index slots from other anchors.
/// Measured with a quarter against every copy: `cargo bench --bench dedupe -- encode_fresh`
/// 4-7% faster (the commits' bench binaries alternated), `examples/dedupe_cpu` 7-10%; the
/// netns transfer test, six runs against three: the docs' first fetch 3% fewer WAN bytes on
/// average, the second fetch and the edited copy about 5% fewer (the copy's runs spread
/// wider: 78-98 KB against 90-91 KB).
const REFRESH_AGE_SHIFT: u32 = 2;

/// How many anchors after a reference (or after the area's start, for the trail) may compare
/// the bytes where its source continues, and where the longest reference's does, and fail,
/// before those two candidates are left alone until the next reference. Where a copy goes on
/// they match at once, or a few anchors on when bytes were changed in between; in text not
/// sent before they were compared at every anchor after a reference and almost never matched.
/// Counted over `cargo bench --bench dedupe`: of the matches the last source's continuation
/// found, 68% (`encode_fresh`) and 81% (the tables' transfers, min match 32 to 512) came at
/// its first comparison after the reference and 93% and 99% within four; the longest's, 98%
/// and 97% at its first. Later comparisons found a match one or two times in a thousand,
/// mostly one the index found as well: with these bounds the transfer table is unchanged but
/// for 335 bytes (0.03%) more for the first transfer, and `encode_fresh` matches 0.04% fewer
/// bytes and runs 6-7% faster (`examples/dedupe_cpu`: 4-8%; builds alternated).
pub(super) const CONTINUATION_TRIES: [u32; 2] = [4, 1];

/// The longer of two matches `(start, len, ring position)`, the first on a tie.
fn longer(
    a: Option<(usize, usize, u64)>,
    b: Option<(usize, usize, u64)>,
) -> Option<(usize, usize, u64)> {
    match (a, b) {
        (Some(x), Some(y)) if y.1 > x.1 => Some(y),
        (None, y) => y,
        (x, _) => x,
    }
}

/// Anchors looked up together (see [`Scan::run`]); room for one more window of 64 positions
/// is needed before a window is searched.
const BATCH: usize = 128;

/// An anchor of the current batch: its area position, index key, bucket and the bucket's
/// slots as loaded.
#[derive(Clone, Copy, Default)]
struct Anchor<'a> {
    at: usize,
    key: u64,
    bucket: &'a [AtomicU64],
    entries: [u64; WAYS],
}

/// One block's scan.
struct Scan<'a> {
    cache: &'a EncoderCache,
    place: Place,
    /// Next free position when the scan started: candidates lie before it.
    head: u64,
    /// Ring offsets of `head` and of the block's place (computed once per block).
    head_offset: u64,
    place_offset: usize,
    /// [`EncoderCache::pass_bits`] of the block's place.
    place_pass: u32,
    search: bool,
    density: Density,
    lookups: u64,
    hits: u64,
    continuations: u64,
    matched: u64,
    refs: u64,
    /// In: where the previous area's last reference ended. Out: this area's, or `None`.
    trail: Option<u64>,
}

impl Scan<'_> {
    fn run(&mut self, area: &[u8], out: &mut Vec<u8>) -> Encoded {
        if area.len() < KEY_LEN {
            return Encoded::Plain;
        }
        let last = area.len() - KEY_LEN;
        // Bytes before `covered` are literals already written or inside a reference.
        let mut covered = 0;
        // The last reference's source is young (see [`REFRESH_AGE_SHIFT`]): the bytes it
        // covers are not indexed again.
        let mut young_source = false;
        let mut literal_start = 0;
        // Next position the anchor search looks at.
        let mut next = 0;
        // Where the last reference's source continues, as the ring position of area index 0:
        // data sent again is mostly sent in the same order, so the bytes after a match are
        // first looked for right after its source (like an LZ "repeat offset"). Without it,
        // a range that occurs in many places (page boilerplate) is taken from the newest copy
        // and the match ends with it.
        // Before the first reference, where the previous area's last one ended (see [`Trail`]).
        let mut repeat: Option<i128> = self.trail.take().map(i128::from);
        // The same for the longest reference of the block so far, and its length.
        let mut long_repeat: Option<i128> = None;
        let mut longest = 0;
        // A reference was made (or a trail given) and no anchor after it has looked near its
        // source yet.
        let mut near_pending = repeat.is_some();
        // Failed comparisons each continuation candidate has left before the next reference
        // (see [`CONTINUATION_TRIES`]).
        let mut tries_left = CONTINUATION_TRIES;
        let mut batch = [Anchor::default(); BATCH];
        while next <= last {
            // Anchors are found a batch at a time and their index slots loaded back to back:
            // the slots are scattered over the index, and loads that do not wait for one
            // another overlap their cache misses.
            let mut n = 0;
            while next <= last && n + 64 <= BATCH {
                let mut count = (last + 1 - next).min(64);
                // Bytes a reference already covers are not looked up, only indexed, so the
                // newer copy takes over when the older one leaves the ring; sparse anchors
                // (a subset of the dense ones) are enough for that, as they are for
                // incompressible data: a later copy found at one of them is extended over
                // the rest. Each density gets its own copy of the test with the bound as a
                // constant. (Every dense anchor looked up and indexed inside references ran
                // `cargo bench --bench dedupe -- encode_repeat` at about half the speed.)
                // Bytes whose source is young are not indexed at all (see
                // [`REFRESH_AGE_SHIFT`]).
                if next < covered && young_source {
                    next = covered;
                    continue;
                }
                let density = if next < covered {
                    count = count.min(covered - next);
                    Density::Sparse
                } else {
                    self.density
                };
                let mut mask = match density {
                    Density::Dense => anchor_mask(area, next, count, Density::Dense.below()),
                    Density::Sparse => anchor_mask(area, next, count, Density::Sparse.below()),
                };
                while mask != 0 {
                    batch[n].at = next + mask.trailing_zeros() as usize;
                    n += 1;
                    mask &= mask - 1;
                }
                next += count;
            }
            for anchor in &mut batch[..n] {
                anchor.key = key_hash(
                    area[anchor.at..anchor.at + KEY_LEN]
                        .try_into()
                        .expect("key"),
                );
            }
            // Finding the buckets (a page claim check each) is a pass of its own: mixed into the
            // loads, it kept them from overlapping (encode_random: 170 MiB/s mixed, ~300 split;
            // more with a larger index).
            for anchor in &mut batch[..n] {
                anchor.bucket = self.cache.bucket_or_claim(anchor.key);
            }
            for anchor in &mut batch[..n] {
                anchor.entries = [
                    anchor.bucket[0].load(Ordering::Relaxed),
                    anchor.bucket[1].load(Ordering::Relaxed),
                ];
            }
            for anchor in &batch[..n] {
                let i = anchor.at;
                if i < covered {
                    // Inside a reference: only refresh the index, so this newer copy takes
                    // over once the older one ages out of the ring (not for a young source),
                    // and only at sparse anchors, like the bytes scanned after the reference
                    // was found. The batch gathered dense anchors before it was: in text not
                    // sent before half of them end up inside a reference, and indexing them
                    // too cost index writes and replaced the slots of older copies (the
                    // bench's repeat transfer: 0.0480 of the first's bytes with them, 0.0443
                    // without; `encode_repeat`'s streams 0.0059 and 0.0048).
                    if !young_source
                        && anchor_hash(&area[i..i + ANCHOR_WINDOW]) < Density::Sparse.below()
                    {
                        self.insert(anchor, i);
                    }
                    continue;
                }
                // Candidates: where the last reference's source continues, where the
                // longest one's does (a short match on a common phrase elsewhere must not lose
                // the stream being repeated), and the index; the longest match wins, and one
                // that reaches the end of the area ends the search.
                let to_end = area.len() - i;
                let mut found = None;
                for (which, base) in [repeat, long_repeat.filter(|&b| Some(b) != repeat)]
                    .into_iter()
                    .enumerate()
                {
                    let Some(base) = base.filter(|_| tries_left[which] > 0) else {
                        continue;
                    };
                    if let Some(cand) = u64::try_from(base + i as i128)
                        .ok()
                        .filter(|&c| c < self.head)
                    {
                        self.continuations += 1;
                        let verified =
                            self.verify(area, literal_start, i, cand, self.to_beat(found));
                        if verified.is_none() {
                            tries_left[which] -= 1;
                        }
                        found = longer(found, verified);
                    }
                }
                if found.is_none_or(|m| m.1 < to_end) {
                    found = longer(found, self.lookup(area, literal_start, i, anchor, found));
                }
                // The first anchor after a reference ended, not far from it, with no match to
                // the area's end: the bytes that follow are often just a little further on in
                // the source (a packet header there, or here, broke the match). Looked at even
                // when the index found a long match: that one is often a newer copy of a
                // repeated phrase, which ends with the phrase, where the source's own copy goes
                // on (the bench's repeat transfer: 0.0626 -> 0.0508 of the first's bytes with
                // this, against a 1 KiB "long enough" cut-off).
                if found.is_none_or(|m| m.1 < to_end)
                    && near_pending
                    && let Some(base) = repeat
                    && i - covered <= NEAR
                {
                    // After a reference only the first anchor looks; before the area's first,
                    // every anchor this close to its start looks near the trail (the first
                    // anchors may sit in a packet header).
                    near_pending = self.refs == 0;
                    let source_end = base + covered as i128;
                    found = longer(
                        found,
                        self.near(
                            area,
                            literal_start,
                            i,
                            source_end,
                            i - covered + NEAR,
                            self.to_beat(found),
                        ),
                    );
                }
                self.insert(anchor, i);
                let Some((start, len, ref_pos)) = found else {
                    continue;
                };
                self.hits += 1;
                repeat = Some(ref_pos as i128 - start as i128);
                if len > longest {
                    longest = len;
                    long_repeat = repeat;
                }
                near_pending = true;
                tries_left = CONTINUATION_TRIES;
                push_literal(out, &area[literal_start..start]);
                push_reference(out, len, self.place.pos as i64 - ref_pos as i64);
                self.refs += 1;
                self.trail = Some(ref_pos + len as u64);
                self.matched += len as u64;
                covered = start + len;
                // (A source placed after this block by another shard counts as young.)
                young_source = (self.place.pos + start as u64).saturating_sub(ref_pos)
                    < self.cache.ring.size() >> REFRESH_AGE_SHIFT;
                literal_start = covered;
                if out.len() >= area.len() {
                    return Encoded::Plain;
                }
            }
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

    /// Looks the anchor at `i` up in the index (its bucket already loaded). Returns the
    /// longest verified match `(start in area, len, ring position)` of at least `min_match`
    /// bytes that starts at or after `floor` and is longer than `found`, the best one so far.
    fn lookup(
        &mut self,
        area: &[u8],
        floor: usize,
        i: usize,
        anchor: &Anchor<'_>,
        found: Option<(usize, usize, u64)>,
    ) -> Option<(usize, usize, u64)> {
        if !self.search {
            return None;
        }
        let check = (anchor.key as u32) | 1;
        self.lookups += 1;
        let mut best = None;
        for (way, &entry) in anchor.entries.iter().enumerate() {
            if (entry >> 32) as u32 != check || (way > 0 && entry == anchor.entries[0]) {
                continue;
            }
            if let Some(cand) = self.position_of(entry as u32) {
                best = longer(
                    best,
                    self.verify(area, floor, i, cand, self.to_beat(longer(found, best))),
                );
            }
        }
        best
    }

    /// Records the anchor at `i` under `key` in both slots of its bucket. The second always
    /// takes the newest copy: data sent again in the same order continues there. The first
    /// keeps an older copy of the same bytes while it is less than half a ring old: it is
    /// acknowledged (or soon will be) while the newest is still in flight, and data that
    /// repeats within a round trip would otherwise always point at a copy nobody may
    /// reference yet.
    ///
    /// The first slot is judged as the batch loaded it (another anchor of the batch with the
    /// same key may have replaced it since: then an older copy is kept a little less often).
    /// Reading it again here, right after storing to its cache line, made every insert wait
    /// for that line (`cargo bench --bench dedupe -- encode_random`: 110 MiB/s with the
    /// second read, 170 without).
    fn insert(&self, anchor: &Anchor<'_>, i: usize) {
        let check = (anchor.key as u32) | 1;
        let entry =
            (u64::from(check) << 32) | u64::from(self.place_pass | (self.place_offset + i) as u32);
        anchor.bucket[1].store(entry, Ordering::Relaxed);
        let old = anchor.entries[0];
        if (old >> 32) as u32 == check
            && let Some(c) = self.position_of(old as u32)
            && self.head - c < self.cache.ring.size() / 2
            && c < self.place.pos
        {
            return;
        }
        anchor.bucket[0].store(entry, Ordering::Relaxed);
    }

    /// Looks for the eight bytes at `i` in the `span` bytes of the ring from `from` (where the
    /// last reference's source ended) and returns the first verified match there of at least
    /// `at_least` bytes.
    fn near(
        &self,
        area: &[u8],
        floor: usize,
        i: usize,
        from: i128,
        span: usize,
        at_least: usize,
    ) -> Option<(usize, usize, u64)> {
        let want = u64::from_le_bytes(area[i..i + 8].try_into().expect("8 bytes"));
        let mut from = u64::try_from(from).ok()?;
        let to = (from + span as u64).min(self.head.checked_sub(8)?);
        while from <= to {
            let pos = self
                .cache
                .ring
                .find8(from, (to - from + 1) as usize, want)?;
            if let Some(m) = self.verify(area, floor, i, pos, at_least) {
                return Some(m);
            }
            from = pos + 1;
        }
        None
    }

    /// The position an index slot's low half (`pass << offset_bits | ring offset`) points
    /// at: the newest absolute position before `head` with that ring offset, if it is less
    /// than a ring size behind and was written in the slot's pass. A slot whose bytes a later
    /// pass overwrote is known stale here, without a comparison that would miss the cache
    /// twice (tag and bytes): data sent again after its first copy left the ring finds such
    /// a slot at almost every anchor (`cargo bench --bench dedupe -- encode_random_sparse`,
    /// whose 160 MiB cycle through a 64 MiB ring: `Ring::match_forward` was a fifth of the
    /// samples there before this test). With few pass bits (large rings) a slot from as many
    /// passes ago is taken for current and only the comparison rejects it.
    fn position_of(&self, low: u32) -> Option<u64> {
        let cache = self.cache;
        let size = cache.ring.size();
        let offset_mask = u32::MAX >> (32 - cache.offset_bits);
        let offset = u64::from(low & offset_mask);
        let back = if offset <= self.head_offset {
            self.head_offset - offset
        } else {
            self.head_offset + size - offset
        };
        let pos = self.head.checked_sub(back)?;
        (cache.pass_bits(pos) == low & !offset_mask).then_some(pos)
    }

    /// How long a match must be to count: longer than `found`, the best one so far, or at
    /// least the minimum.
    fn to_beat(&self, found: Option<(usize, usize, u64)>) -> usize {
        found.map_or(self.cache.min_match, |m| m.1 + 1)
    }

    /// Compares the area around `i` with the ring around candidate position `cand`; returns
    /// the match if it is at least `at_least` (and `min_match`) bytes long.
    fn verify(
        &self,
        area: &[u8],
        floor: usize,
        i: usize,
        cand: u64,
        at_least: usize,
    ) -> Option<(usize, usize, u64)> {
        let cache = self.cache;
        let ring = &cache.ring;
        // Far enough from the head that no pass can overwrite it while the block is in
        // flight: an eighth of the ring of margin.
        if self.head - cand > ring.size() - ring.size() / 8 {
            return None;
        }
        // The match reaches back to `floor` at most, so it must reach at least `reach` bytes
        // forward to count. Where that is past the area's end it cannot; otherwise the eight
        // bytes just before that point are compared first (as LZ match finders look at the
        // byte that would make a candidate better before comparing it whole): candidates that
        // fall short, most of them, cost one load instead of a comparison up to where they
        // end. The load is a hint (tags are checked by the comparison that follows).
        let reach = at_least.max(cache.min_match).saturating_sub(i - floor);
        if reach > area.len() - i {
            return None;
        }
        if reach > KEY_LEN {
            let probe = i + reach - 8;
            let ours = u64::from_le_bytes(area[probe..probe + 8].try_into().expect("8 bytes"));
            if ring
                .peek8(cand + (reach - 8) as u64)
                .is_some_and(|theirs| theirs != ours)
            {
                return None;
            }
        }
        let tag = ring::tag(self.place.epoch, ring.round(cand));
        let forward = ring.match_forward(cand, &area[i..], tag);
        if forward < KEY_LEN {
            return None;
        }
        let backward = ring.match_backward(cand, &area[floor..i], tag);
        let len = forward + backward;
        if len < cache.min_match.max(at_least) {
            return None;
        }
        let ref_pos = cand - backward as u64;
        if !ring.still_tagged(ref_pos, len, tag) {
            return None;
        }
        Some((i - backward, len, ref_pos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scan of a block placed at `head` (nothing in flight).
    fn scan_at(cache: &EncoderCache, head: u64) -> Scan<'_> {
        Scan {
            cache,
            place: Place {
                epoch: 0,
                pos: head,
            },
            head,
            head_offset: cache.ring.offset(head) as u64,
            place_offset: cache.ring.offset(head),
            place_pass: cache.pass_bits(head),
            search: true,
            density: Density::Dense,
            lookups: 0,
            hits: 0,
            continuations: 0,
            matched: 0,
            refs: 0,
            trail: None,
        }
    }

    #[test]
    fn index_slots_whose_bytes_a_later_pass_overwrote_point_nowhere() {
        for size in [1 << 20, 3 << 20] {
            let cache = EncoderCache::new(DedupeConfig::with_cache(size));
            let size = cache.size();
            let head = 5 * size + size / 2;
            let scan = scan_at(&cache, head);
            let slot = |pos: u64| cache.pass_bits(pos) | cache.ring.offset(pos) as u32;
            // Behind the head in its own pass, and in the pass before past the head's offset:
            // the newest bytes at those offsets.
            for pos in [5 * size, 5 * size + 100, head - 1, 4 * size + size * 3 / 4] {
                assert_eq!(scan.position_of(slot(pos)), Some(pos), "size {size}, {pos}");
            }
            // The same offsets one or more passes earlier: overwritten since.
            for pos in [4 * size + 100, 3 * size + size * 3 / 4, 100, size / 2] {
                assert_eq!(scan.position_of(slot(pos)), None, "size {size}, {pos}");
            }
        }
    }

    #[test]
    fn bytes_copied_from_a_young_source_are_not_indexed_again_from_an_old_one_sparsely() {
        let cache = EncoderCache::new(DedupeConfig::with_cache(1 << 20));
        let data = crate::core::dedupe::tests::pseudo_random(16 * 1024, 9);
        let send = |area: &[u8]| {
            let place = cache.reserve(area.len());
            let mut out = Vec::new();
            let encoded = cache.encode(place, area, &mut out);
            cache.acked(place, area.len());
            (place.pos, encoded, out.len())
        };
        // A sparse anchor well inside the data (past the dense anchor where a copy's
        // reference is found, which is indexed like any looked-up anchor).
        let j = (1024..data.len() - 64)
            .find(|&j| anchor_mask(&data, j, 1, Density::Sparse.below()) == 1)
            .expect("a sparse anchor");
        // A dense anchor that is not a sparse one, past the first but within the first batch
        // of anchors, which are gathered (and their slots loaded) before the reference that
        // covers them is found.
        let dense_only = |k: usize| {
            anchor_mask(&data, k, 1, Density::Dense.below()) == 1
                && anchor_mask(&data, k, 1, Density::Sparse.below()) == 0
        };
        let first_anchor = (0..)
            .find(|&k| anchor_mask(&data, k, 1, Density::Dense.below()) == 1)
            .expect("an anchor");
        let d = (first_anchor + 1..2048)
            .find(|&k| dense_only(k))
            .expect("a dense anchor");
        // The newest position the index holds for the anchor at `j`, and the slot a position
        // makes.
        let newest = |j: usize| {
            let key = key_hash(data[j..j + KEY_LEN].try_into().expect("key"));
            let i = cache.bucket_at(key);
            let page = cache.index[i / PAGE_SLOTS].get().expect("claimed");
            page[i % PAGE_SLOTS + 1].load(Ordering::Relaxed) as u32
        };
        let slot = |pos: u64| cache.pass_bits(pos) | cache.ring.offset(pos) as u32;

        let (first, ..) = send(&data);
        assert_eq!(newest(j), slot(first + j as u64));
        assert_eq!(newest(d), slot(first + d as u64));
        // Again at once: one reference to a source 16 KiB older, a 64th of the ring.
        let (young, encoded, len) = send(&data);
        assert_eq!((encoded, len < 64), (Encoded::Stream, true), "{len} bytes");
        assert_eq!(
            newest(j),
            slot(first + j as u64),
            "the source still stands for it"
        );
        // Again after a third of the ring of other data: its source is old.
        for seed in 0..21 {
            send(&crate::core::dedupe::tests::pseudo_random(
                16 * 1024,
                100 + seed,
            ));
        }
        let (old, encoded, len) = send(&data);
        assert!(old - young > cache.size() / 4);
        assert_eq!((encoded, len < 64), (Encoded::Stream, true), "{len} bytes");
        assert_eq!(newest(j), slot(old + j as u64), "the new copy takes over");
        assert_eq!(
            newest(d),
            slot(first + d as u64),
            "only at sparse anchors: the first copy stands for the rest while it lasts"
        );
    }

    #[test]
    fn whole_window_mask_equals_the_test_per_position() {
        let mut bytes = crate::core::dedupe::tests::pseudo_random(16384, 7);
        // Text and a run of zeros too (every position of a zero run is an anchor).
        bytes.extend(
            b"<div class=\"docblock\"><p>Returns the number of elements.</p></div>\n".repeat(20),
        );
        bytes.extend([0u8; 200]);
        for (density, bits) in [
            (Density::Dense, SAMPLE_BITS),
            (Density::Sparse, SPARSE_SAMPLE_BITS),
        ] {
            let below = density.below();
            let mut anchors = 0;
            for start in 0..bytes.len() - 64 - ANCHOR_WINDOW {
                let fast = anchor_mask(&bytes, start, 64, below);
                let slow = (0..64).fold(0u64, |m, k| {
                    let at = start + k;
                    m | u64::from(anchor_hash(&bytes[at..at + ANCHOR_WINDOW]) < below) << k
                });
                assert_eq!(fast, slow, "at {start}");
                assert_eq!(
                    anchor_mask(&bytes, start, 17, below),
                    slow & ((1 << 17) - 1)
                );
                // Sparse anchors are dense anchors too: a copy indexed sparsely is found by
                // a dense scan, and the other way round.
                let dense = anchor_mask(&bytes, start, 64, Density::Dense.below());
                assert_eq!(fast & !dense, 0, "at {start}");
                anchors += (fast & 1) as usize;
            }
            // About one position in 2^bits on the random part: the bounds the test had at one
            // in 32 over 4000 positions (60..200 around 125), in proportion.
            let random = (0..16000)
                .filter(|&s| anchor_mask(&bytes, s, 1, below) == 1)
                .count();
            let expected = 16000 >> bits;
            assert!(
                (expected / 2..expected * 8 / 5).contains(&random),
                "{density:?}: {random} anchors in 16000 random positions, about {expected} expected"
            );
            assert!(anchors > 0);
        }
    }
}
