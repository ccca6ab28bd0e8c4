//! Fuzz target for the dedupe decoder with hostile references, and an encode/expand round trip.
//!
//! Input: `[mode][...]`.
//! - mode even: `epoch (1) | chunk (2) | area_len (2) | stream...` — a dedupe stream from a
//!   hostile peer, expanded against a ring that holds three acknowledged areas. It must return
//!   an error or exactly `area_len` bytes, never panic or read out of bounds; a success may
//!   only copy bytes the ring holds for that epoch (checked: a stream made only of references
//!   must reproduce ring contents).
//! - mode odd: the rest split into areas by one-byte length prefixes (times 64), each sent
//!   through an encoder cache (following its trail from one area to the next; dense anchors for
//!   an even length byte, sparse for an odd one) and expanded by a decoder cache: what comes
//!   out must equal what went in, references or not.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::core::dedupe::encode::{Density, Encoded, Trail};
use sluice::core::dedupe::{DecoderCache, DedupeConfig, EncoderCache, Place};

fn pair() -> (EncoderCache, DecoderCache) {
    let config = DedupeConfig::with_cache(1 << 20);
    let enc = EncoderCache::new(config);
    let dec = DecoderCache::new(config);
    dec.handle_announce(enc.poll_announce().expect("first epoch"));
    (enc, dec)
}

fn send(
    enc: &EncoderCache,
    dec: &DecoderCache,
    area: &[u8],
    stream: &mut Vec<u8>,
    trail: &mut Trail,
    density: Density,
) {
    let place = enc.reserve(area.len());
    let mut out = vec![0u8; area.len()];
    match enc.encode_after(place, area, stream, trail, density) {
        Encoded::Plain => out.copy_from_slice(area),
        Encoded::Stream => {
            dec.expand(place, stream, &mut out)
                .expect("references to acknowledged bytes resolve");
        }
    }
    assert_eq!(out, area, "expanded area equals the sent one");
    dec.store(place, &out);
    enc.acked(place, area.len());
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (enc, dec) = pair();
    let mut stream = Vec::new();
    if mode % 2 == 0 {
        if rest.len() < 5 {
            return;
        }
        // Three known areas so that some references resolve.
        for seed in 0..3u8 {
            let area: Vec<u8> = (0..3000u32)
                .map(|i| (i as u8) ^ seed.wrapping_mul(77))
                .collect();
            send(
                &enc,
                &dec,
                &area,
                &mut stream,
                &mut Trail::default(),
                Density::Dense,
            );
        }
        let place = Place {
            epoch: u16::from(rest[0] & 1),
            pos: u64::from(u16::from_be_bytes([rest[1], rest[2]])) * 128,
        };
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        let mut out = vec![0u8; len];
        let _ = dec.expand(place, &rest[5..], &mut out);
        let _ = dec.poll_request();
    } else {
        let mut at = 0;
        let mut trail = Trail::default();
        while at < rest.len() {
            let len = (usize::from(rest[at]) * 64).min(rest.len() - at - 1);
            let area = &rest[at + 1..at + 1 + len];
            // Odd length bytes scan sparsely: areas indexed one way are looked up the other.
            let density = if rest[at] % 2 == 1 {
                Density::Sparse
            } else {
                Density::Dense
            };
            if !area.is_empty() && enc.wants(area.len()) {
                send(&enc, &dec, area, &mut stream, &mut trail, density);
            }
            at += 1 + len;
        }
    }
});
