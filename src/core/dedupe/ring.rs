//! The byte ring both ends of a dedupe context keep: the last `size` bytes of packet areas,
//! at absolute positions, with a tag per [`CHUNK`] saying which epoch and round of the ring
//! the chunk holds.
//!
//! Every shard of a peer writes and reads the same ring, so it is built from atomics only, with
//! no lock: bytes live in `AtomicU64` words (relaxed loads and stores compile to plain moves),
//! and each chunk's tag works as a seqlock. A writer invalidates the tags of the chunks it is
//! about to fill, writes, then publishes the new tag; a reader checks the tags before and after
//! it copies, so a copy that raced with a writer is noticed and thrown away, never used.
//! Memory is claimed a [`SEGMENT`] at a time, when first written, so an idle context costs
//! almost nothing and a busy one at most `size` bytes plus a sixteenth of that for tags (one
//! `u64` per 128-byte chunk).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering, fence};

/// Granularity of placement and of tags: every block's bytes start on a chunk boundary and the
/// rest of its last chunk is zero-filled on both ends, so a tag covers whole, identical chunks.
pub const CHUNK: usize = 128;

/// Bytes claimed at once; ring sizes are a multiple of it.
pub const SEGMENT: usize = 1 << 20;

const WORDS_PER_SEGMENT: usize = SEGMENT / 8;
const CHUNKS_PER_SEGMENT: usize = SEGMENT / CHUNK;

/// The tag of a chunk filled in `epoch` during `round` (ring pass) of that epoch. Never 0.
pub fn tag(epoch: u16, round: u64) -> u64 {
    (u64::from(epoch) << 48) | ((round + 1) & ((1 << 48) - 1))
}

struct Segment {
    words: Box<[AtomicU64]>,
    tags: Box<[AtomicU64]>,
}

impl Segment {
    fn new() -> Segment {
        Segment {
            words: (0..WORDS_PER_SEGMENT).map(|_| AtomicU64::new(0)).collect(),
            tags: (0..CHUNKS_PER_SEGMENT).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    #[inline]
    fn word(&self, i: usize) -> u64 {
        self.words[i].load(Ordering::Relaxed)
    }

    /// Eight bytes starting at byte `at` of the segment, little-endian; `at + 8 <= SEGMENT`.
    #[inline]
    fn load8(&self, at: usize) -> u64 {
        let (w, s) = (at / 8, (at % 8) * 8);
        if s == 0 {
            self.word(w)
        } else {
            (self.word(w) >> s) | (self.word(w + 1) << (64 - s))
        }
    }

    /// The first position in `lo..hi` (`hi + 7 <= SEGMENT`) whose eight bytes are `want`.
    /// A word at a time: the positions in a word whose byte equals `want`'s first byte and
    /// whose next byte equals its second are flagged together (a zero-byte test on the word,
    /// and on the word shifted by a byte, xor those bytes repeated) and only those are
    /// compared whole. In text most words have none (one position at a time, this search was
    /// a fifth of encoding text; with the first byte alone, a word in eight or so had a
    /// position to compare and the branch on it went wrong often).
    fn find8(&self, lo: usize, hi: usize, want: u64) -> Option<usize> {
        const ONES: u64 = 0x0101_0101_0101_0101;
        const HIGHS: u64 = 0x8080_8080_8080_8080;
        let first = (want & 0xff) * ONES;
        let second = ((want >> 8) & 0xff) * ONES;
        let mut word = lo / 8;
        let mut this = self.word(word);
        while word * 8 < hi {
            // Positions at or past `hi` need no next word; the last word of the segment has
            // none.
            let next = if word + 1 < WORDS_PER_SEGMENT {
                self.word(word + 1)
            } else {
                0
            };
            let x = (this ^ first) | (((this >> 8) | (next << 56)) ^ second);
            // High bit set in every zero byte of x (and, past a zero byte, maybe in others:
            // those are checked and passed over).
            let mut flags = x.wrapping_sub(ONES) & !x & HIGHS;
            while flags != 0 {
                let at = word * 8 + (flags.trailing_zeros() / 8) as usize;
                flags &= flags - 1;
                if at >= lo && at < hi && self.load8(at) == want {
                    return Some(at);
                }
            }
            this = next;
            word += 1;
        }
        None
    }

    #[inline]
    fn byte(&self, at: usize) -> u8 {
        (self.word(at / 8) >> ((at % 8) * 8)) as u8
    }
}

/// A ring of `size` bytes addressed by absolute position (see the module doc).
pub struct Ring {
    size: u64,
    segments: Box<[OnceLock<Segment>]>,
}

impl Ring {
    /// A ring of `size` bytes, rounded up to a whole number of segments (at least one).
    pub fn new(size: usize) -> Ring {
        let count = size.div_ceil(SEGMENT).max(1);
        Ring {
            size: (count * SEGMENT) as u64,
            segments: (0..count).map(|_| OnceLock::new()).collect(),
        }
    }

    /// Bytes the ring holds.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Bytes of memory claimed so far (ring bytes and tags).
    pub fn resident(&self) -> usize {
        let per = SEGMENT + CHUNKS_PER_SEGMENT * 8;
        self.segments.iter().filter(|s| s.get().is_some()).count() * per
    }

    /// Which pass over the ring `pos` belongs to.
    #[inline]
    pub fn round(&self, pos: u64) -> u64 {
        // A shift for the usual power-of-two sizes: a 64-bit division costs tens of cycles
        // and a candidate's comparison needed several (2.4% of `match_forward` in a profile
        // of encoding text).
        if self.size.is_power_of_two() {
            pos >> self.size.trailing_zeros()
        } else {
            pos / self.size
        }
    }

    /// Where `pos` lies inside the ring.
    #[inline]
    pub fn offset(&self, pos: u64) -> usize {
        if self.size.is_power_of_two() {
            (pos & (self.size - 1)) as usize
        } else {
            (pos % self.size) as usize
        }
    }

    /// True if `len` bytes from `pos` stay inside one pass (they never wrap).
    pub fn fits(&self, pos: u64, len: usize) -> bool {
        self.offset(pos) as u64 + len as u64 <= self.size
    }

    fn segment(&self, offset: usize) -> Option<&Segment> {
        self.segments[offset / SEGMENT].get()
    }

    fn segment_or_claim(&self, offset: usize) -> &Segment {
        self.segments[offset / SEGMENT].get_or_init(Segment::new)
    }

    /// Writes `data` at `pos` (a chunk boundary; the chunks must not wrap), zero-fills the rest
    /// of the last chunk, and leaves the chunks tagged `tag_after` (0: not readable yet).
    ///
    /// # Panics
    /// If `pos` is not chunk-aligned or the chunks would wrap (callers place blocks).
    pub fn store(&self, pos: u64, data: &[u8], tag_after: u64) {
        let start = self.offset(pos);
        let padded = data.len().div_ceil(CHUNK) * CHUNK;
        assert!(start % CHUNK == 0 && start + padded <= self.size as usize);
        let mut done = 0;
        while done < padded {
            let at = start + done;
            let seg = self.segment_or_claim(at);
            let in_seg = at % SEGMENT;
            let n = (SEGMENT - in_seg).min(padded - done);
            let chunks = in_seg / CHUNK..(in_seg + n) / CHUNK;
            for c in chunks.clone() {
                seg.tags[c].store(0, Ordering::Relaxed);
            }
            fence(Ordering::Release);
            let src = data.get(done..).unwrap_or_default();
            let src = &src[..src.len().min(n)];
            let words = &seg.words[in_seg / 8..(in_seg + n) / 8];
            let mut pieces = src.chunks_exact(8);
            let mut k = 0;
            for (word, piece) in words.iter().zip(&mut pieces) {
                word.store(
                    u64::from_le_bytes(piece.try_into().expect("8 bytes")),
                    Ordering::Relaxed,
                );
                k += 1;
            }
            let rest = pieces.remainder();
            if !rest.is_empty() {
                let mut bytes = [0u8; 8];
                bytes[..rest.len()].copy_from_slice(rest);
                words[k].store(u64::from_le_bytes(bytes), Ordering::Relaxed);
                k += 1;
            }
            for word in &words[k..] {
                word.store(0, Ordering::Relaxed);
            }
            if tag_after != 0 {
                for c in chunks {
                    seg.tags[c].store(tag_after, Ordering::Release);
                }
            }
            done += n;
        }
    }

    /// Tags the chunks of `len` bytes from `pos` (chunk-aligned, as stored) with `tag`: the
    /// encoder's way of marking a block acknowledged.
    pub fn set_tags(&self, pos: u64, len: usize, tag: u64) {
        let start = self.offset(pos);
        let padded = len.div_ceil(CHUNK) * CHUNK;
        if start % CHUNK != 0 || start + padded > self.size as usize {
            return;
        }
        let mut c = start / CHUNK;
        while c < (start + padded) / CHUNK {
            let Some(seg) = self.segment(c * CHUNK) else {
                return;
            };
            seg.tags[c % CHUNKS_PER_SEGMENT].store(tag, Ordering::Release);
            c += 1;
        }
    }

    /// True if every chunk touching `len` bytes from ring offset `start` carries `tag`.
    fn tags_are(&self, start: usize, len: usize, tag: u64) -> bool {
        if len == 0 {
            return true;
        }
        let first = start / CHUNK;
        let last = (start + len - 1) / CHUNK;
        (first..=last).all(|c| {
            self.segment(c * CHUNK)
                .is_some_and(|seg| seg.tags[c % CHUNKS_PER_SEGMENT].load(Ordering::Acquire) == tag)
        })
    }

    /// Copies `out.len()` bytes from `pos` into `out` if every chunk they touch carries `tag`
    /// before and after the copy. False (and `out` unspecified) otherwise, or if the range
    /// wraps.
    pub fn read(&self, pos: u64, out: &mut [u8], tag: u64) -> bool {
        if !self.fits(pos, out.len()) {
            return false;
        }
        let start = self.offset(pos);
        if !self.tags_are(start, out.len(), tag) {
            return false;
        }
        let mut done = 0;
        while done < out.len() {
            let at = start + done;
            let Some(seg) = self.segment(at) else {
                return false;
            };
            let in_seg = at % SEGMENT;
            let n = (SEGMENT - in_seg).min(out.len() - done);
            copy_from_segment(seg, in_seg, &mut out[done..done + n]);
            done += n;
        }
        fence(Ordering::Acquire);
        self.tags_are(start, out.len(), tag)
    }

    /// How many bytes from `pos` onwards equal `data`'s, at most `data.len()`, counting only
    /// chunks tagged `tag` and stopping at the end of the ring pass. The caller re-checks the
    /// tags with [`Ring::still_tagged`] before relying on the answer.
    pub fn match_forward(&self, pos: u64, data: &[u8], tag: u64) -> usize {
        let start = self.offset(pos);
        let limit = data.len().min(self.size as usize - start);
        let mut n = 0;
        while n < limit {
            let at = start + n;
            let chunk_end = (at / CHUNK + 1) * CHUNK;
            let Some(seg) = self.segment(at) else {
                return n;
            };
            if seg.tags[(at % SEGMENT) / CHUNK].load(Ordering::Acquire) != tag {
                return n;
            }
            let stop = (chunk_end - start).min(limit);
            // Eight bytes at a time while a whole word fits in this chunk: one unaligned
            // comparison up to the ring's next word boundary, then whole ring words, one load
            // each (a shifted pair of loads per step ran encode_repeat at ~790 MiB/s), taken
            // from one slice of the segment so that the loop has no bounds checks.
            let skew = (start + n) % 8;
            if skew != 0 && n + 8 <= stop {
                let ours = u64::from_le_bytes(data[n..n + 8].try_into().expect("8 bytes"));
                let diff = seg.load8((start + n) % SEGMENT) ^ ours;
                if diff != 0 {
                    return n + (diff.trailing_zeros() / 8) as usize;
                }
                n += 8 - skew;
            }
            let whole = (stop.saturating_sub(n)) / 8;
            if whole > 0 {
                let first = (start + n) % SEGMENT / 8;
                let words = &seg.words[first..first + whole];
                let ours = data[n..n + whole * 8].chunks_exact(8);
                for (k, (word, ours)) in words.iter().zip(ours).enumerate() {
                    let ours = u64::from_le_bytes(ours.try_into().expect("8 bytes"));
                    let diff = word.load(Ordering::Relaxed) ^ ours;
                    if diff != 0 {
                        return n + k * 8 + (diff.trailing_zeros() / 8) as usize;
                    }
                }
                n += whole * 8;
            }
            while n < stop {
                if seg.byte((start + n) % SEGMENT) != data[n] {
                    return n;
                }
                n += 1;
            }
        }
        n
    }

    /// How many bytes just before `pos` equal the end of `data`, at most `data.len()`, on
    /// chunks tagged `tag` and not before the start of the ring pass.
    pub fn match_backward(&self, pos: u64, data: &[u8], tag: u64) -> usize {
        let start = self.offset(pos);
        let limit = data.len().min(start);
        let mut n = 0;
        while n < limit {
            // The next byte to compare is `start - n - 1`; its chunk bounds this pass.
            let at = start - n - 1;
            let Some(seg) = self.segment(at) else {
                return n;
            };
            if seg.tags[(at % SEGMENT) / CHUNK].load(Ordering::Acquire) != tag {
                return n;
            }
            let stop = (start - at / CHUNK * CHUNK).min(limit);
            // Eight bytes at a time while a whole word fits in this chunk: the highest byte of
            // the word is the one nearest `pos`, so matching bytes are the leading zeros of
            // the difference (byte by byte, this was a tenth of encoding text).
            while n + 8 <= stop {
                let ours = u64::from_le_bytes(
                    data[data.len() - n - 8..data.len() - n]
                        .try_into()
                        .expect("8 bytes"),
                );
                let diff = seg.load8((start - n - 8) % SEGMENT) ^ ours;
                if diff != 0 {
                    return n + (diff.leading_zeros() / 8) as usize;
                }
                n += 8;
            }
            while n < stop {
                if seg.byte((start - n - 1) % SEGMENT) != data[data.len() - n - 1] {
                    return n;
                }
                n += 1;
            }
        }
        n
    }

    /// The first of the `count` positions from `from` where the eight bytes are `want` as they
    /// are now (tags not checked: a hint for [`Ring::match_forward`]). Positions whose eight
    /// bytes would cross a segment or the end of the pass, or lie in unclaimed memory, are
    /// skipped.
    pub fn find8(&self, from: u64, count: usize, want: u64) -> Option<u64> {
        let start = self.offset(from);
        let end = (start + count).min(self.size as usize);
        let mut at = start;
        while at < end {
            let in_seg = at % SEGMENT;
            let seg_end = (at - in_seg + SEGMENT).min(end);
            if let Some(seg) = self.segment(at) {
                let last = (seg_end - at).min((SEGMENT - 7).saturating_sub(in_seg));
                if let Some(k) = seg.find8(in_seg, in_seg + last, want) {
                    return Some(from + (at + k - in_seg - start) as u64);
                }
            }
            at = seg_end;
        }
        None
    }

    /// The eight bytes at `pos` as they are now (tags not checked: a hint for
    /// [`Ring::match_forward`]), or `None` where they would cross a segment or lie in
    /// unclaimed memory.
    pub fn peek8(&self, pos: u64) -> Option<u64> {
        let at = self.offset(pos);
        let in_seg = at % SEGMENT;
        if in_seg + 8 > SEGMENT {
            return None;
        }
        self.segment(at).map(|seg| seg.load8(in_seg))
    }

    /// Second half of the seqlock check for a range found by the `match_*` functions: true if
    /// its chunks still carry `tag`, so the bytes compared were the tagged ones.
    pub fn still_tagged(&self, pos: u64, len: usize, tag: u64) -> bool {
        fence(Ordering::Acquire);
        self.fits(pos, len) && self.tags_are(self.offset(pos), len, tag)
    }
}

fn copy_from_segment(seg: &Segment, at: usize, out: &mut [u8]) {
    let mut i = 0;
    // Head up to a word boundary, then whole words, then the tail.
    while i < out.len() && (at + i) % 8 != 0 {
        out[i] = seg.byte(at + i);
        i += 1;
    }
    let words = &seg.words[(at + i) / 8..];
    let mut copied = 0;
    for (piece, word) in out[i..].chunks_exact_mut(8).zip(words) {
        piece.copy_from_slice(&word.load(Ordering::Relaxed).to_le_bytes());
        copied += 8;
    }
    i += copied;
    while i < out.len() {
        out[i] = seg.byte(at + i);
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn stored_bytes_read_back_only_under_their_tag() {
        let ring = Ring::new(3 * SEGMENT);
        let data = bytes(5000, 7);
        let pos = SEGMENT as u64 - 1024; // crosses a segment boundary
        ring.store(pos, &data, tag(1, 0));
        let mut out = vec![0; 333];
        assert!(ring.read(pos + 17, &mut out, tag(1, 0)));
        assert_eq!(out, data[17..350]);
        assert!(!ring.read(pos + 17, &mut out, tag(2, 0)));
        assert!(!ring.read(pos + 17, &mut out, tag(1, 1)));
        // Padding after the data is zero on every ring, so it may be referenced too.
        let mut tail = vec![1; 8];
        assert!(ring.read(pos + 5000, &mut tail, tag(1, 0)));
        assert_eq!(tail, [0; 8]);
        // Past the padded end: another chunk, untagged.
        let mut past = vec![0; 200];
        assert!(!ring.read(pos + 5000, &mut past, tag(1, 0)));
    }

    #[test]
    fn untagged_until_marked_and_overwrite_invalidates() {
        let ring = Ring::new(SEGMENT);
        let data = bytes(1000, 1);
        ring.store(256, &data, 0);
        let mut out = vec![0; 100];
        assert!(!ring.read(256, &mut out, tag(0, 0)));
        ring.set_tags(256, data.len(), tag(0, 0));
        assert!(ring.read(256, &mut out, tag(0, 0)));
        assert_eq!(ring.match_forward(256, &data, tag(0, 0)), 1000);
        // The next round writes the same place: the old tag no longer matches.
        ring.store(ring.size() + 256, &bytes(1000, 2), 0);
        assert!(!ring.read(256, &mut out, tag(0, 0)));
        assert_eq!(ring.match_forward(256, &data, tag(0, 0)), 0);
    }

    #[test]
    fn matches_stop_at_the_first_difference_and_untagged_chunks() {
        let ring = Ring::new(SEGMENT);
        let data = bytes(4096, 3);
        ring.store(0, &data, tag(5, 0));
        let mut other = data.clone();
        other[1234] ^= 1;
        assert_eq!(ring.match_forward(0, &other, tag(5, 0)), 1234);
        assert_eq!(ring.match_forward(3, &other[3..], tag(5, 0)), 1231);
        assert_eq!(ring.match_backward(4000, &data[..4000], tag(5, 0)), 4000);
        assert_eq!(
            ring.match_backward(4000, &other[..4000], tag(5, 0)),
            4000 - 1235
        );
        // Un-tag one chunk in the middle: both directions stop at it.
        ring.set_tags(1024, CHUNK, 0);
        assert_eq!(ring.match_forward(0, &data, tag(5, 0)), 1024);
        assert_eq!(
            ring.match_backward(2048, &data[..2048], tag(5, 0)),
            2048 - 1152
        );
        assert!(!ring.still_tagged(0, 2048, tag(5, 0)));
        assert!(ring.still_tagged(0, 1024, tag(5, 0)));
    }

    /// The byte-by-byte definition of [`Ring::match_backward`].
    fn match_backward_bytewise(ring: &Ring, pos: u64, data: &[u8], tag: u64) -> usize {
        let mut n = 0;
        while n < data.len().min(ring.offset(pos)) {
            let mut byte = [0u8];
            if !ring.read(pos - n as u64 - 1, &mut byte, tag) {
                break;
            }
            if byte[0] != data[data.len() - n - 1] {
                break;
            }
            n += 1;
        }
        n
    }

    #[test]
    fn match_backward_word_at_a_time_equals_byte_by_byte() {
        let ring = Ring::new(2 * SEGMENT);
        let data = crate::core::dedupe::tests::pseudo_random(6000, 3);
        // Across the segment boundary, with one chunk untagged further back.
        let pos0 = SEGMENT as u64 - 3072;
        ring.store(pos0, &data, tag(2, 0));
        ring.set_tags(pos0 + 256, CHUNK, 0);
        let mut probe = data.clone();
        for flip in [4000usize, 3077, 3071, 1500, 700] {
            probe[flip] ^= 0x40;
        }
        for end in (0..6000usize).step_by(7).chain(5990..6000) {
            for from in [0, end.saturating_sub(1), end.saturating_sub(9), end / 2] {
                let pos = pos0 + end as u64;
                for bytes in [&data[from..end], &probe[from..end]] {
                    assert_eq!(
                        ring.match_backward(pos, bytes, tag(2, 0)),
                        match_backward_bytewise(&ring, pos, bytes, tag(2, 0)),
                        "end {end} from {from}"
                    );
                }
            }
        }
        // Near the start of the ring pass: never below position 0.
        ring.store(0, &data[..300], tag(2, 0));
        for end in 0..300 {
            assert_eq!(
                ring.match_backward(end as u64, &data[..end], tag(2, 0)),
                end
            );
            // Data reaching further back than the pass does.
            let mut longer = vec![0xAA; 50];
            longer.extend_from_slice(&data[..end]);
            assert_eq!(ring.match_backward(end as u64, &longer, tag(2, 0)), end);
        }
    }

    #[test]
    fn find8_finds_the_first_copy_and_never_reads_past_a_segment() {
        let ring = Ring::new(2 * SEGMENT);
        // Bytes that do not repeat (`bytes` has a period of 256).
        let data = crate::core::dedupe::tests::pseudo_random(4096, 1);
        let pos = SEGMENT as u64 - 2048;
        ring.store(pos, &data, tag(0, 0));
        let want = u64::from_le_bytes(data[1000..1008].try_into().unwrap());
        assert_eq!(ring.find8(pos, 4096, want), Some(pos + 1000));
        assert_eq!(ring.find8(pos + 1001, 100, want), None);
        // The eight bytes straddling the segment boundary are skipped, the ones after found.
        let straddle = u64::from_le_bytes(data[2044..2052].try_into().unwrap());
        assert_eq!(ring.find8(pos + 2040, 20, straddle), None);
        let after = u64::from_le_bytes(data[2050..2058].try_into().unwrap());
        assert_eq!(ring.find8(pos + 2040, 20, after), Some(pos + 2050));
        // Every start near the end of a segment or of the ring, any count: no panic.
        for start in SEGMENT as u64 - 16..SEGMENT as u64 + 16 {
            for count in 0..40 {
                let _ = ring.find8(start, count, want);
                let _ = ring.find8(ring.size() - 20 + start % 20, count, want);
            }
        }
    }

    #[test]
    fn find8_word_at_a_time_equals_position_by_position() {
        let ring = Ring::new(2 * SEGMENT);
        // Text-like bytes with many repeats of each byte value, so first-byte candidates that
        // are not matches abound, across the segment boundary.
        let data: Vec<u8> = crate::core::dedupe::tests::pseudo_random(5000, 4)
            .into_iter()
            .map(|b| b"etaoin shrdlu"[usize::from(b) % 13])
            .collect();
        let pos0 = SEGMENT as u64 - 2560;
        ring.store(pos0, &data, tag(0, 0));
        let slow = |from: u64, count: usize, want: u64| {
            (from..from + count as u64).find(|&p| {
                let at = ring.offset(p);
                at % SEGMENT + 8 <= SEGMENT
                    && at + 8 <= ring.size() as usize
                    && ring.segment(at).is_some()
                    && ring.segment(at).unwrap().load8(at % SEGMENT) == want
            })
        };
        for (i, w) in (0..data.len() - 8).step_by(13).enumerate() {
            let want = u64::from_le_bytes(data[w..w + 8].try_into().unwrap());
            let from = pos0 + (i * 37 % 3000) as u64;
            for count in [0, 1, 7, 8, 9, 300, 2600] {
                assert_eq!(
                    ring.find8(from, count, want),
                    slow(from, count, want),
                    "want at {w}, from {from}, count {count}"
                );
            }
        }
    }

    #[test]
    fn nothing_wraps_and_unclaimed_memory_reads_as_absent() {
        let ring = Ring::new(2 * SEGMENT);
        assert_eq!(ring.resident(), 0);
        let mut out = vec![0; 64];
        assert!(!ring.read(0, &mut out, tag(0, 0)));
        assert!(!ring.read(ring.size() - 10, &mut out, tag(0, 0)));
        assert_eq!(ring.match_forward(SEGMENT as u64, &out, tag(0, 0)), 0);
        ring.store(ring.size() - CHUNK as u64, &[9; CHUNK], tag(0, 0));
        assert_eq!(ring.match_forward(ring.size() - 8, &[9; 64], tag(0, 0)), 8);
        assert!(ring.resident() > 0);
    }

    #[test]
    fn offsets_and_rounds_of_any_ring_size() {
        for segments in [1u64, 2, 3, 4, 5, 64] {
            let ring = Ring::new(segments as usize * SEGMENT);
            let size = segments * SEGMENT as u64;
            for pos in [
                0,
                1,
                size - 1,
                size,
                size + 7,
                5 * size + 12345,
                u64::MAX / 3,
            ] {
                assert_eq!(
                    ring.offset(pos) as u64,
                    pos % size,
                    "{segments} segments, {pos}"
                );
                assert_eq!(ring.round(pos), pos / size, "{segments} segments, {pos}");
            }
            assert!(ring.fits(size - 8, 8) && !ring.fits(size - 8, 9));
        }
    }

    #[test]
    fn peek8_reads_any_offset_inside_one_claimed_segment() {
        let ring = Ring::new(2 * SEGMENT);
        assert_eq!(ring.peek8(0), None, "unclaimed");
        let data = bytes(4 * CHUNK, 3);
        ring.store(SEGMENT as u64 - 2 * CHUNK as u64, &data, 0);
        for skew in 0..16 {
            let pos = SEGMENT - 2 * CHUNK + skew;
            let want = u64::from_le_bytes(data[skew..skew + 8].try_into().unwrap());
            // Untagged bytes too: it is a hint.
            assert_eq!(ring.peek8(pos as u64), Some(want), "at {pos}");
        }
        // Eight bytes across two segments are never read.
        for back in 1..8 {
            assert_eq!(ring.peek8((SEGMENT - back) as u64), None);
        }
        assert!(ring.peek8((SEGMENT - 8) as u64).is_some());
        assert!(ring.peek8(SEGMENT as u64).is_some());
        assert_eq!(ring.peek8(ring.size() - 3), None);
    }
}
