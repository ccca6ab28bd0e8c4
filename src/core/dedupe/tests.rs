//! Unit tests of one dedupe context: an encoder cache and a decoder cache side by side.

use super::encode::{Density, Encoded, Trail};
use super::*;

/// Bytes that do not repeat (xorshift), the same for the same `seed`.
pub(super) fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

struct Pair {
    enc: EncoderCache,
    dec: DecoderCache,
    stream: Vec<u8>,
}

impl Pair {
    fn new(cache: usize) -> Pair {
        let config = DedupeConfig::with_cache(cache);
        let pair = Pair {
            enc: EncoderCache::new(config),
            dec: DecoderCache::new(config),
            stream: Vec::new(),
        };
        pair.dec
            .handle_announce(pair.enc.poll_announce().expect("first epoch"));
        pair
    }

    /// Sends one area through both ends; `ack` says whether the decoder's ack reaches the
    /// encoder. Returns the bytes on the wire (stream or area) and the restored area.
    fn send(&mut self, area: &[u8], ack: bool) -> (usize, Vec<u8>) {
        self.send_after(area, ack, &mut Trail::default(), Density::Dense)
    }

    /// [`Pair::send`] through [`EncoderCache::encode_after`].
    fn send_after(
        &mut self,
        area: &[u8],
        ack: bool,
        trail: &mut Trail,
        density: Density,
    ) -> (usize, Vec<u8>) {
        let place = self.enc.reserve(area.len());
        let kind = self
            .enc
            .encode_after(place, area, &mut self.stream, trail, density);
        let mut restored = vec![0; area.len()];
        let wire = match kind {
            Encoded::Plain => {
                restored.copy_from_slice(area);
                area.len()
            }
            Encoded::Stream => {
                self.dec
                    .expand(place, &self.stream, &mut restored)
                    .expect("references resolve");
                self.stream.len()
            }
        };
        assert_eq!(restored, area);
        self.dec.store(place, &restored);
        if ack {
            self.enc.acked(place, area.len());
        }
        (wire, restored)
    }
}

#[test]
fn a_repeated_area_costs_a_few_bytes_once_acknowledged() {
    let mut pair = Pair::new(1 << 20);
    let data = pseudo_random(8000, 1);
    let (first, _) = pair.send(&data, true);
    assert_eq!(first, data.len());
    let (second, _) = pair.send(&data, true);
    assert!(second < 40, "repeat took {second} bytes");
    let stats = pair.enc.stats();
    assert_eq!(stats.blocks, 2);
    assert_eq!(stats.blocks_with_refs, 1);
    assert!(stats.bytes_matched >= 7900);
    assert_eq!(pair.dec.stats().refs, stats.refs);
}

/// `data` cut into packet-like areas of `payload` bytes, each behind a 64-byte header of its
/// own (seeded by `seed`), as a TCP transfer through the tunnel is.
fn packets(data: &[u8], payload: usize, seed: u64) -> Vec<Vec<u8>> {
    data.chunks(payload)
        .enumerate()
        .map(|(k, chunk)| {
            let mut area = pseudo_random(64, seed * 1000 + k as u64);
            area.extend_from_slice(chunk);
            area
        })
        .collect()
}

#[test]
fn a_repeat_cut_elsewhere_follows_its_first_copy_not_newer_copies_of_its_phrases() {
    // Forty "pages" built from the same ten 300-byte phrases (page boilerplate), each phrase
    // followed by eight bytes of the page's own (a title, a link), then 1000 bytes of text of
    // the page's own; sent once in 5000-byte packets, then again in 6100-byte packets.
    let phrases: Vec<Vec<u8>> = (0..10).map(|j| pseudo_random(300, 7 + j)).collect();
    let mut data = Vec::new();
    for k in 0..40 {
        let own = pseudo_random(10 * 8 + 1000, 100 + k);
        for (j, phrase) in phrases.iter().enumerate() {
            data.extend_from_slice(phrase);
            data.extend_from_slice(&own[j * 8..j * 8 + 8]);
        }
        data.extend_from_slice(&own[80..]);
    }
    let mut pair = Pair::new(4 << 20);
    let mut trail = Trail::default();
    for area in packets(&data, 5000, 1) {
        pair.send_after(&area, true, &mut trail, Density::Dense);
    }
    let before = pair.enc.stats().refs;
    let areas = packets(&data, 6100, 2);
    for area in &areas {
        pair.send_after(area, true, &mut trail, Density::Dense);
    }
    let refs = pair.enc.stats().refs - before;
    // A 6100-byte payload lies across at most three packets of the first copy: three
    // references cover it. Without the trail, an area that starts among the phrases took each
    // from the newest copy (the previous page's), which ends at the next eight bytes of its
    // own: a reference per phrase until the page's own text.
    assert!(
        refs <= 3 * areas.len() as u64,
        "{refs} references for {} areas",
        areas.len()
    );
}

#[test]
fn a_sparsely_scanned_incompressible_transfer_is_found_again_almost_whole() {
    // A 600 KB compressed file fetched twice, cut into one-packet areas (a lossy link's
    // blocks: a 64-byte header and 1300 to 1400 payload bytes) at different places each time,
    // both copies scanned with sparse anchors, one in 256 positions: a packet's payload often
    // holds five anchors or fewer, and a match must still cover it from its first byte.
    let file = pseudo_random(600_000, 9);
    let cut = |seed: u64| {
        let mut areas = Vec::new();
        let (mut at, mut k) = (0, 0);
        while at < file.len() {
            let len = (1300 + (seed * 37 + k * 53) as usize % 101).min(file.len() - at);
            let mut area = pseudo_random(64, seed * 100_000 + k);
            area.extend_from_slice(&file[at..at + len]);
            areas.push(area);
            at += len;
            k += 1;
        }
        areas
    };
    // (second copy's wire bytes, matched bytes, total bytes) for the densities of both copies.
    let run = |first: Density, second: Density| {
        let mut pair = Pair::new(4 << 20);
        let mut trail = Trail::default();
        for area in cut(1) {
            pair.send_after(&area, true, &mut trail, first);
        }
        let areas = cut(2);
        let before = pair.enc.stats().bytes_matched;
        let wire: usize = areas
            .iter()
            .map(|area| pair.send_after(area, true, &mut trail, second).0)
            .sum();
        let matched = pair.enc.stats().bytes_matched - before;
        (
            wire,
            matched as usize,
            areas.iter().map(Vec::len).sum::<usize>(),
        )
    };
    let (dense_wire, ..) = run(Density::Dense, Density::Dense);
    for (first, second) in [
        (Density::Sparse, Density::Sparse),
        (Density::Sparse, Density::Dense),
        (Density::Dense, Density::Sparse),
    ] {
        let (wire, matched, total) = run(first, second);
        // Headers, 64 of every ~1414 bytes, never match; nor does the odd stretch between
        // where a first-copy packet ended and the next anchor. Measured: 0.903 to 0.918 of
        // all bytes matched, 0.918 with dense anchors on both copies.
        assert!(
            matched as f64 > 0.88 * total as f64,
            "{first:?}/{second:?}: {matched} of {total} bytes matched"
        );
        // Measured: sparse on both copies sent 1.12 times the bytes of dense on both.
        assert!(
            wire * 4 < dense_wire * 5,
            "{first:?}/{second:?}: {wire} bytes on the wire, dense {dense_wire}"
        );
    }
}

#[test]
fn data_sent_again_after_its_first_copy_left_the_ring_is_found_in_its_second() {
    // A 1 MiB ring. The data (9 areas of 16 KiB, GSO super-packets) goes at 0, fresh data
    // after it, the data again at about 560,000 (each area one reference to the first copy),
    // fresh data until the head is past 1,250,000: the first copy is overwritten, the second
    // is still well inside the ring. A third copy, in 1400-byte pieces sent last to first
    // (so that no piece is found by following the one before), must be found in the second,
    // although most pieces hold none of the anchors where the second copy's references
    // began: inside references the encoder indexes sparse anchors.
    let mut pair = Pair::new(1 << 20);
    let data = pseudo_random(9 * 16 * 1024, 41);
    let send = |pair: &mut Pair, pieces: Vec<&[u8]>| -> usize {
        let mut trail = Trail::default();
        pieces
            .into_iter()
            .map(|p| pair.send_after(p, true, &mut trail, Density::Dense).0)
            .sum()
    };
    let first = send(&mut pair, data.chunks(16 * 1024).collect());
    assert_eq!(first, data.len(), "nothing to find the first time");
    let fresh = pseudo_random(300 * 1400, 42);
    send(&mut pair, fresh.chunks(1400).collect());
    let second = send(&mut pair, data.chunks(16 * 1024).collect());
    assert!(second * 20 < data.len(), "second copy: {second} bytes");
    let fresh = pseudo_random(400 * 1400, 43);
    send(&mut pair, fresh.chunks(1400).collect());
    let head = pair.enc.reserve(1400).pos;
    assert!(
        head > (1 << 20) + data.len() as u64,
        "the first copy is overwritten (head {head})"
    );
    let third = send(&mut pair, data.chunks(1400).rev().collect());
    assert!(
        third * 10 < data.len(),
        "the third copy must be found in the second: {third} of {} bytes",
        data.len()
    );
}

#[test]
fn matches_are_found_at_any_offset_inside_other_data() {
    let mut pair = Pair::new(1 << 20);
    let file = pseudo_random(6000, 2);
    pair.send(&file, true);
    // The same bytes shifted by an odd amount, with fresh bytes around them.
    let mut area = pseudo_random(333, 3);
    area.extend_from_slice(&file[1001..5002]);
    area.extend_from_slice(&pseudo_random(777, 4));
    let (wire, _) = pair.send(&area, true);
    assert!(wire < 333 + 777 + 40, "took {wire} bytes");
}

#[test]
fn where_a_source_continues_is_given_up_after_a_few_anchors_until_the_next_reference() {
    let mut pair = Pair::new(1 << 20);
    let old = pseudo_random(16 * 1024, 21);
    pair.send(&old, true);
    // Two pieces of it, each followed by 6 KiB not sent before, whose anchors compare the
    // bytes where the piece's source continues in vain. The second piece is the longer, so
    // the continuation of the longest reference is always the last one's and adds no tries;
    // after the second piece the old data ends 3 KiB on (later candidates are not compared).
    let mut area = old[..4096].to_vec();
    area.extend(pseudo_random(6 * 1024, 22));
    area.extend_from_slice(&old[8192..13312]);
    area.extend(pseudo_random(6 * 1024, 23));
    let before = pair.enc.stats();
    let (wire, _) = pair.send(&area, true);
    let stats = pair.enc.stats();
    assert_eq!(stats.refs - before.refs, 2, "both pieces found");
    assert!(wire < 12 * 1024 + 64, "took {wire} bytes");
    // Without the bound, every anchor of the new bytes compares (193); without
    // starting over at the second reference, only the first stretch does.
    let tries = stats.continuations - before.continuations;
    assert_eq!(tries, 2 * u64::from(encode::CONTINUATION_TRIES[0]));
}

#[test]
fn unacknowledged_bytes_are_never_referenced() {
    let mut pair = Pair::new(1 << 20);
    let data = pseudo_random(4000, 5);
    let (first, _) = pair.send(&data, false);
    let (second, _) = pair.send(&data, false);
    assert_eq!((first, second), (data.len(), data.len()));
    assert_eq!(pair.enc.stats().refs, 0);
}

#[test]
fn a_decoder_that_lost_its_ring_refuses_and_asks_for_a_new_epoch() {
    let mut pair = Pair::new(1 << 20);
    let data = pseudo_random(4000, 6);
    pair.send(&data, true);
    // The decoder restarts: a fresh ring with no epoch.
    pair.dec = DecoderCache::new(DedupeConfig::with_cache(1 << 20));
    let place = pair.enc.reserve(data.len());
    assert_eq!(
        pair.enc.encode(place, &data, &mut pair.stream),
        Encoded::Stream
    );
    let mut out = vec![0; data.len()];
    assert_eq!(
        pair.dec.expand(place, &pair.stream, &mut out),
        Err(DedupeError::BadReference)
    );
    let asked = pair.dec.poll_request().expect("a request");
    assert_eq!(pair.dec.poll_request(), None, "asked once");
    pair.enc.handle_request(asked);
    let epoch = pair.enc.poll_announce().expect("new epoch announced");
    assert_eq!(epoch, asked.wrapping_add(1));
    pair.dec.handle_announce(epoch);
    // The new epoch starts from nothing: first plain, then references again.
    let (first, _) = pair.send(&data, true);
    assert_eq!(first, data.len());
    let (second, _) = pair.send(&data, true);
    assert!(second < 40);
    assert_eq!(pair.dec.stats().refs_rejected, 1);
    assert_eq!(pair.enc.stats().resets, 1);
}

#[test]
fn a_request_for_an_old_epoch_changes_nothing() {
    let pair = Pair::new(1 << 20);
    let epoch = pair.enc.epoch();
    pair.enc.handle_request(epoch.wrapping_add(5));
    assert_eq!(pair.enc.epoch(), epoch);
    assert_eq!(pair.enc.poll_announce(), None);
}

#[test]
fn the_ring_wraps_and_old_passes_are_not_referenced() {
    // A 1 MiB ring filled several times over with fresh data, then a repeat of something
    // overwritten long ago and of something recent.
    let mut pair = Pair::new(1 << 20);
    let old = pseudo_random(3000, 7);
    pair.send(&old, true);
    let mut recent = Vec::new();
    for seed in 0..400u64 {
        recent = pseudo_random(9000, 100 + seed);
        pair.send(&recent, true);
    }
    let (old_again, _) = pair.send(&old, true);
    assert_eq!(old_again, old.len());
    let (recent_again, _) = pair.send(&recent, true);
    assert!(recent_again < 40);
}

#[test]
fn hostile_streams_are_errors_not_panics() {
    let pair = Pair::new(1 << 20);
    let place = pair.enc.reserve(1000);
    let mut out = vec![0; 1000];
    let cases: &[&[u8]] = &[
        &[],
        &[0x40],             // truncated varint
        &[5, 1, 2],          // literal past the stream
        &[0, 10, 0],         // reference to position 0 of nothing
        &[0, 0x50, 0x00, 0], // reference longer than the area
        &[0, 10, 0xc0],      // truncated distance
        &[0, 10, 0x3f],      // reference past the ring's start
        &[1, 7],             // short of the area
    ];
    for stream in cases {
        assert!(
            pair.dec.expand(place, stream, &mut out).is_err(),
            "{stream:?}"
        );
    }
    // Misaligned or wrapping placements.
    let bad = Place {
        epoch: place.epoch,
        pos: 3,
    };
    assert_eq!(
        pair.dec.expand(bad, &[0], &mut out[..0]),
        Err(DedupeError::Malformed)
    );
    let wraps = Place {
        epoch: place.epoch,
        pos: (1 << 20) - 128,
    };
    assert!(!pair.dec.valid_place(wraps, 1000));
}
