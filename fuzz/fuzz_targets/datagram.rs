//! Fuzzes everything that reads a peer's datagrams: the wire parser and one decoder.
//!
//! The whole input, and then each datagram of it, goes through `wire::parse`; a data message's
//! block through `wire::parse_block`, its body through the decompressor, and the packet area
//! through `wire::next_area_entry`. Then the input is read as a session (see `sluice_fuzz`):
//! a decoder whose epoch was announced takes the datagrams one by one while time passes, its
//! timers fire, and its packets and control messages are drained after every step.
//!
//! Invariants beyond "no panic":
//! - every packet `poll_packet` returns passes `packet::inspect` and fits the buffer;
//! - every control message parses, and is an ack for the decoder's shard and current epoch or
//!   a reset request for its shard;
//! - once timers that are due have run and control messages are drained, `poll_timeout` lies
//!   in the future (a caller driving the decoder never spins);
//! - `parse_block` accepts only headers within the wire bounds, and area entries never reach
//!   past the area.
#![no_main]

use std::cell::RefCell;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use sluice::core::compress::{Codec, Decompressor};
use sluice::core::packet;
use sluice::core::wire::{
    self, MAX_AREA_LEN, MAX_PACKET_LEN, MAX_PACKETS_PER_BLOCK, Message, ResetKind,
};
use sluice::core::{Decoder, DecoderConfig, Timestamp};
use sluice_fuzz::{FLAG_ACK_EACH, FLAG_NO_ANNOUNCE, FLAG_SHORT_BUFFER, FLAG_SMALL_BUDGET, Session};

/// Timer rounds per step before the decoder is considered to spin.
const MAX_TIMER_ROUNDS: usize = 256;

thread_local! {
    /// One decompressor for the stateless checks (creating a zstd context per input is slow).
    static DECOMPRESSOR: RefCell<Decompressor> =
        RefCell::new(Decompressor::new().expect("zstd context"));
    /// Scratch area for decompressed bodies.
    static AREA: RefCell<Vec<u8>> = RefCell::new(vec![0; MAX_AREA_LEN]);
}

/// Runs one message through the stateless parsers.
fn check_message(msg: &[u8]) {
    let Ok(Message::Data { block, .. }) = wire::parse(msg) else {
        return;
    };
    let Ok((header, body)) = wire::parse_block(block) else {
        return;
    };
    assert!((1..=MAX_PACKETS_PER_BLOCK).contains(&header.packet_count));
    assert!((1..=MAX_AREA_LEN).contains(&header.area_len));
    // `header.len()` is the minimal encoding; a peer may spend more bytes on a varint.
    assert!(header.len() + body.len() <= block.len());
    // With references the (decompressed) body is the dedupe stream, `stream_len` bytes long,
    // and only the dedupe decoder can turn it into an area; without, it is the area itself.
    let is_area = header.stream_len.is_none();
    if header.codec == Codec::Raw {
        assert_eq!(body.len(), header.body_len());
        if is_area {
            walk_area(body);
        }
        return;
    }
    // The compressed body is an area too as far as the walker is concerned: any bytes will do.
    walk_area(body);
    DECOMPRESSOR.with_borrow_mut(|decompressor| {
        AREA.with_borrow_mut(|area| {
            let area = &mut area[..header.body_len()];
            if decompressor.decompress(header.codec, body, area).is_ok() && is_area {
                walk_area(area);
            }
        });
    });
}

/// Walks a packet area entry by entry until it ends or an entry is malformed.
fn walk_area(mut area: &[u8]) {
    while !area.is_empty() {
        let Ok((entry, used)) = wire::next_area_entry(area) else {
            return;
        };
        let packet = entry.packet;
        assert!(!packet.is_empty() && packet.len() <= MAX_PACKET_LEN);
        assert!(entry.meta.len() <= wire::MAX_META_LEN);
        assert!(used <= area.len() && used > packet.len() + entry.meta.len());
        let _ = packet::inspect(packet);
        area = &area[used..];
    }
}

/// Everything a driven decoder needs besides itself.
struct Driver {
    decoder: Decoder,
    /// Where `poll_packet` copies packets.
    packet_buf: Vec<u8>,
    /// Where `poll_control` writes.
    control_buf: [u8; 64],
}

impl Driver {
    /// Drains restored packets and control messages, checking each.
    fn drain(&mut self, now: Timestamp) {
        while let Some(n) = self.decoder.poll_packet(&mut self.packet_buf) {
            assert!(n <= self.packet_buf.len());
            let packet = &self.packet_buf[..n];
            if let Err(e) = packet::inspect(packet) {
                panic!("decoder released a malformed packet ({e:?}): {packet:02x?}");
            }
        }
        while let Some(n) = self.decoder.poll_control(now, &mut self.control_buf) {
            let msg = &self.control_buf[..n];
            match wire::parse(msg) {
                Ok(Message::Ack(ack)) => {
                    assert_eq!(ack.id.shard, self.decoder.shard());
                    assert_eq!(Some(ack.id.epoch), self.decoder.epoch());
                }
                Ok(Message::Reset(reset)) => {
                    assert_eq!(reset.shard, self.decoder.shard());
                    assert_eq!(reset.kind, ResetKind::Request);
                }
                other => panic!("decoder sent {other:?} on the control path: {msg:02x?}"),
            }
        }
    }

    /// Runs the timers that are due at `now`, as an event loop would.
    fn run_timers(&mut self, now: Timestamp) {
        self.decoder.handle_timeout(now);
        self.drain(now);
        for _ in 0..MAX_TIMER_ROUNDS {
            match self.decoder.poll_timeout() {
                Some(deadline) if deadline <= now => {
                    self.decoder.handle_timeout(now);
                    self.drain(now);
                }
                _ => return,
            }
        }
        panic!(
            "decoder keeps asking for a timer at or before {now:?}: {:?}",
            self.decoder.poll_timeout()
        );
    }
}

fuzz_target!(|data: &[u8]| {
    check_message(data);

    let Some((session, records)) = Session::split(data) else {
        return;
    };
    let config = DecoderConfig {
        max_held_bytes: if session.has(FLAG_SMALL_BUDGET) {
            96 * 1024
        } else {
            DecoderConfig::default().max_held_bytes
        },
        ack_every: if session.has(FLAG_ACK_EACH) { 1 } else { 8 },
        ..DecoderConfig::default()
    };
    let mut driver = Driver {
        decoder: Decoder::new(config, session.shard).expect("zstd context"),
        packet_buf: vec![
            0;
            if session.has(FLAG_SHORT_BUFFER) {
                1500
            } else {
                MAX_PACKET_LEN
            }
        ],
        control_buf: [0; 64],
    };
    let mut now = Timestamp::ZERO;
    if !session.has(FLAG_NO_ANNOUNCE) {
        driver.decoder.handle_reset(
            now,
            wire::Reset {
                shard: session.shard,
                epoch: session.epoch,
                kind: ResetKind::Announce,
            },
        );
    }

    for record in records {
        check_message(record.datagram);
        if record.step > 0 {
            now = now + record.pause();
            driver.run_timers(now);
        }
        match wire::parse(record.datagram) {
            Ok(Message::Reset(reset)) => driver.decoder.handle_reset(now, reset),
            _ => {
                let _ = driver.decoder.handle_datagram(now, record.datagram);
            }
        }
        driver.drain(now);
    }

    // Long after the last datagram every timer has fired: nothing may be left waiting.
    now = now + Duration::from_secs(10);
    driver.run_timers(now);
    assert_eq!(
        driver.decoder.poll_timeout(),
        None,
        "a quiet decoder keeps a timer"
    );
});
