//! Fuzzes the encoder and decoder together: arbitrary packets, encoder settings and link
//! behaviour, one datagram at a time.
//!
//! Each scenario builds well-formed IPv4/IPv6 packets (every one unique: its payload starts
//! with a serial number), feeds them to an `Encoder` with arbitrary settings, sends the
//! datagrams at an arbitrary size (256..=1500) per send over a link that drops, duplicates,
//! swaps or corrupts each one as the input says, and feeds a `Decoder`. The control path
//! (epoch announcement, acks) is reliable; in some scenarios acks are also taken at once with
//! `poll_ack`, as the gateway sends them beside data.
//!
//! Invariants:
//! - every delivered packet is byte-identical to a sent one, and none is delivered twice;
//! - the packets of one flow are delivered in the order they were sent;
//! - on a link that neither drops nor corrupts (duplicates and swaps allowed) every packet is
//!   delivered, nothing is counted malformed or skipped, and no block is counted lost.
#![no_main]

use std::collections::HashMap;
use std::time::Duration;

use libfuzzer_sys::arbitrary::{self, Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use sluice::core::encoder::{Compression, EncodeError};
use sluice::core::packet::{self, FlowKey, testing};
use sluice::core::wire::{self, MAX_AREA_LEN, MAX_PACKET_LEN, Message};
use sluice::core::{Decoder, DecoderConfig, Encoder, EncoderConfig, Timestamp};

/// Most packets in one scenario.
const MAX_PACKETS: usize = 64;
/// Most packet bytes in one scenario, so one run stays in the milliseconds.
const MAX_SCENARIO_BYTES: usize = 512 * 1024;
/// Most link decisions in one scenario; later datagrams are delivered untouched.
const MAX_HOPS: usize = 256;
/// Datagram size for sends beyond the scenario's link decisions.
const DEFAULT_DATAGRAM_SIZE: usize = 1200;

/// One flow's addresses, protocol and ports.
#[derive(Clone, Copy, Debug)]
struct FlowSpec {
    v6: bool,
    /// One of TCP, UDP, ICMP echo (ICMPv6 on IPv6) or GRE (carried without a transport
    /// header).
    protocol: u8,
    src: [u8; 16],
    dst: [u8; 16],
    src_port: u16,
    dst_port: u16,
}

impl<'a> Arbitrary<'a> for FlowSpec {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let v6 = u.arbitrary()?;
        let protocol = match u.int_in_range(0..=3)? {
            0 => packet::PROTO_TCP,
            1 => packet::PROTO_UDP,
            2 if v6 => packet::PROTO_ICMPV6,
            2 => packet::PROTO_ICMP,
            _ => 47,
        };
        Ok(FlowSpec {
            v6,
            protocol,
            src: u.arbitrary()?,
            dst: u.arbitrary()?,
            src_port: u.arbitrary()?,
            dst_port: u.arbitrary()?,
        })
    }
}

impl FlowSpec {
    /// IP and transport header bytes in front of the payload.
    fn header_len(&self) -> usize {
        let ip = if self.v6 { 40 } else { 20 };
        ip + match self.protocol {
            packet::PROTO_TCP => 20,
            packet::PROTO_UDP | packet::PROTO_ICMP | packet::PROTO_ICMPV6 => 8,
            _ => 0,
        }
    }

    /// A packet of this flow carrying `payload`.
    fn packet(&self, payload: &[u8]) -> Vec<u8> {
        if self.v6 {
            testing::ipv6_packet(
                self.src,
                self.dst,
                self.protocol,
                self.src_port,
                self.dst_port,
                payload,
            )
        } else {
            let src = [self.src[0], self.src[1], self.src[2], self.src[3]];
            let dst = [self.dst[0], self.dst[1], self.dst[2], self.dst[3]];
            testing::ipv4_packet(
                src,
                dst,
                self.protocol,
                self.src_port,
                self.dst_port,
                payload,
            )
        }
    }
}

/// What fills a payload after its serial number.
#[derive(Clone, Debug)]
enum Filler {
    /// A short pattern repeated: compresses well.
    Pattern(Vec<u8>),
    /// Pseudo-random bytes from a seed: incompressible, so bypass and raw fallback run.
    Noise(u64),
}

impl<'a> Arbitrary<'a> for Filler {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(if u.arbitrary()? {
            let len = u.int_in_range(1..=16)?;
            Filler::Pattern(u.bytes(len)?.to_vec())
        } else {
            Filler::Noise(u.arbitrary()?)
        })
    }
}

impl Filler {
    fn fill(&self, out: &mut Vec<u8>, len: usize) {
        match self {
            Filler::Pattern(pattern) if !pattern.is_empty() => {
                out.extend(pattern.iter().cycle().take(len));
            }
            Filler::Pattern(_) => out.resize(out.len() + len, 0),
            Filler::Noise(seed) => {
                // xorshift64*: cheap, and far beyond what lz4 or zstd can find structure in.
                let mut state = seed | 1;
                out.extend((0..len).map(|_| {
                    state ^= state >> 12;
                    state ^= state << 25;
                    state ^= state >> 27;
                    (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
                }));
            }
        }
    }
}

/// One packet to send, and what happens after it is queued.
#[derive(Clone, Debug)]
struct PacketSpec {
    /// Index into the scenario's flows (taken modulo their count).
    flow: usize,
    /// IP packet length wanted (raised to the flow's headers plus the serial number).
    len: usize,
    filler: Filler,
    /// After queueing, let this much time pass and send everything the encoder has.
    flush: Option<Duration>,
}

impl<'a> Arbitrary<'a> for PacketSpec {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let len = match u.int_in_range(0..=3)? {
            0 => u.int_in_range(20..=200)?,
            1 => u.int_in_range(200..=1500)?,
            2 => u.int_in_range(1500..=MAX_PACKET_LEN)?,
            _ => MAX_PACKET_LEN,
        };
        Ok(PacketSpec {
            flow: u.arbitrary::<u8>()?.into(),
            len,
            filler: u.arbitrary()?,
            flush: if u.arbitrary()? {
                Some(Duration::from_micros(u.int_in_range(0..=20_000)?))
            } else {
                None
            },
        })
    }
}

/// What the link does to one datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    Deliver,
    Drop,
    Duplicate,
    /// Held back and delivered right after the next datagram of the same burst.
    SwapWithNext,
    /// Byte `at` (modulo the length) is XORed with a non-zero `mask`.
    Flip {
        at: u16,
        mask: u8,
    },
}

/// How one send goes: the datagram size offered to the encoder and the link's decision.
#[derive(Clone, Copy, Debug)]
struct Hop {
    size: usize,
    fate: Fate,
}

impl<'a> Arbitrary<'a> for Hop {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let size = u.int_in_range(wire::MIN_DATAGRAM_SIZE..=1500)?;
        let fate = match u.int_in_range(0..=7)? {
            0..=3 => Fate::Deliver,
            4 => Fate::Drop,
            5 => Fate::Duplicate,
            6 => Fate::SwapWithNext,
            _ => Fate::Flip {
                at: u.arbitrary()?,
                mask: u.int_in_range(1..=255)?,
            },
        };
        Ok(Hop { size, fate })
    }
}

/// Everything one run does.
#[derive(Debug)]
struct Scenario {
    shard: u8,
    epoch: u16,
    config: EncoderConfig,
    flows: Vec<FlowSpec>,
    hops: Vec<Hop>,
    /// Acks also go the way the gateway sends them beside data: taken with `poll_ack`
    /// whenever packets were restored, besides the timer's on the control path.
    acks_beside_data: bool,
    packets: Vec<PacketSpec>,
}

impl<'a> Arbitrary<'a> for Scenario {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let compression = match u.int_in_range(0..=3)? {
            0 => Compression::Off,
            1 => Compression::Lz4,
            2 => Compression::Zstd,
            _ => Compression::Auto,
        };
        let config = EncoderConfig {
            compression,
            zstd_level: u.int_in_range(-3..=3)?,
            max_delay: Duration::from_micros(u.choose(&[0, 0, 200, 2_000])?.to_owned()),
            max_batch_bytes: u.int_in_range(1..=MAX_AREA_LEN)?,
            bypass: u.arbitrary()?,
            ..EncoderConfig::default()
        };
        let shard = u.arbitrary()?;
        let epoch = u.arbitrary()?;
        let flows = (0..u.int_in_range(1..=8)?)
            .map(|_| u.arbitrary())
            .collect::<arbitrary::Result<_>>()?;
        let hops = (0..u.int_in_range(0..=MAX_HOPS)?)
            .map(|_| u.arbitrary())
            .collect::<arbitrary::Result<_>>()?;
        let acks_beside_data = u.arbitrary()?;
        let mut packets = Vec::new();
        let mut bytes = 0;
        while packets.len() < MAX_PACKETS && !u.is_empty() {
            let spec: PacketSpec = u.arbitrary()?;
            bytes += spec.len;
            if bytes > MAX_SCENARIO_BYTES {
                break;
            }
            packets.push(spec);
        }
        Ok(Scenario {
            shard,
            epoch,
            config,
            flows,
            hops,
            acks_beside_data,
            packets,
        })
    }
}

/// A sent packet as the receiver checks it.
struct Sent {
    flow: FlowKey,
    serial: u32,
    delivered: bool,
}

/// Encoder, link and decoder, with the bookkeeping the invariants need.
struct Run<'s> {
    scenario: &'s Scenario,
    now: Timestamp,
    encoder: Encoder,
    decoder: Decoder,
    /// Datagrams sent so far; picks the next hop.
    sends: usize,
    /// A datagram held back by [`Fate::SwapWithNext`].
    held: Option<Vec<u8>>,
    /// A datagram was dropped or corrupted.
    impaired: bool,
    sent: HashMap<Vec<u8>, Sent>,
    /// Serial number of the last packet delivered per flow.
    last_serial: HashMap<FlowKey, u32>,
    delivered: usize,
    /// Where the encoder writes datagrams.
    datagram_buf: Vec<u8>,
    /// Where the decoder copies packets.
    buf: Vec<u8>,
}

impl Run<'_> {
    /// Queues one packet, making room by sending when the encoder's queue is full.
    fn queue(&mut self, packet: &[u8]) {
        for _ in 0..2 {
            match self.encoder.handle_packet(self.now, packet) {
                Ok(()) => return,
                Err(EncodeError::QueueFull) => self.flush(),
                Err(e) => panic!("encoder refused a well-formed packet: {e:?}"),
            }
        }
        panic!("encoder queue still full after sending everything");
    }

    /// Sends everything the encoder has, waiting out its batch delay if it has one.
    fn flush(&mut self) {
        for _ in 0..64 {
            loop {
                let hop = self.scenario.hops.get(self.sends).copied().unwrap_or(Hop {
                    size: DEFAULT_DATAGRAM_SIZE,
                    fate: Fate::Deliver,
                });
                let mut buf = std::mem::take(&mut self.datagram_buf);
                let sent = self.encoder.poll_datagram(self.now, hop.size, &mut buf);
                if let Some(n) = sent {
                    assert!(
                        n <= hop.size,
                        "{n}-byte datagram for a {}-byte hop",
                        hop.size
                    );
                    self.sends += 1;
                    self.transmit(hop.fate, &buf[..n]);
                }
                self.datagram_buf = buf;
                if sent.is_none() {
                    break;
                }
            }
            // A swapped datagram whose burst ended goes now: a swap reorders, never delays.
            if let Some(held) = self.held.take() {
                self.deliver(&held);
            }
            if self.encoder.is_idle() {
                return;
            }
            let deadline = self
                .encoder
                .poll_timeout()
                .expect("an encoder with packets waiting has a deadline");
            self.advance(deadline);
        }
        panic!("encoder never became idle");
    }

    fn transmit(&mut self, fate: Fate, datagram: &[u8]) {
        match fate {
            Fate::Deliver => self.deliver(datagram),
            Fate::Drop => self.impaired = true,
            Fate::Duplicate => {
                self.deliver(datagram);
                self.deliver(datagram);
            }
            Fate::SwapWithNext => {
                if let Some(earlier) = self.held.replace(datagram.to_vec()) {
                    self.deliver(&earlier);
                }
                return;
            }
            Fate::Flip { at, mask } => {
                self.impaired = true;
                let mut bytes = datagram.to_vec();
                let at = usize::from(at) % bytes.len();
                bytes[at] ^= mask;
                self.deliver(&bytes);
            }
        }
        if let Some(held) = self.held.take() {
            self.deliver(&held);
        }
    }

    fn deliver(&mut self, datagram: &[u8]) {
        let _ = self.decoder.handle_datagram(self.now, datagram);
        self.drain();
    }

    /// Lets time pass to `to` (never backwards) and runs the decoder's timers.
    fn advance(&mut self, to: Timestamp) {
        self.now = self.now.max(to);
        for _ in 0..256 {
            match self.decoder.poll_timeout() {
                Some(deadline) if deadline <= self.now => {
                    self.decoder.handle_timeout(self.now);
                    self.drain();
                }
                _ => return,
            }
        }
        panic!("decoder timers never settle");
    }

    /// Checks every restored packet and carries control messages both ways.
    fn drain(&mut self) {
        while let Some(n) = self.decoder.poll_packet(&mut self.buf) {
            let packet = &self.buf[..n];
            let Some(sent) = self.sent.get_mut(packet) else {
                panic!("delivered a packet that was never sent: {packet:02x?}");
            };
            assert!(!sent.delivered, "packet {} delivered twice", sent.serial);
            sent.delivered = true;
            if let Some(last) = self.last_serial.insert(sent.flow, sent.serial) {
                assert!(
                    last < sent.serial,
                    "flow {:?}: packet {} delivered after {last}",
                    sent.flow,
                    sent.serial
                );
            }
            self.delivered += 1;
        }
        if self.scenario.acks_beside_data {
            let mut msg = [0u8; 64];
            while let Some(n) = self.decoder.poll_ack(&mut msg) {
                match wire::parse(&msg[..n]) {
                    Ok(Message::Ack(ack)) => self.encoder.handle_ack(self.now, ack),
                    other => panic!("poll_ack gave {other:?}"),
                }
            }
        }
        self.pump_control();
    }

    /// Moves control messages between the endpoints (reliable and in order, like QUIC
    /// streams).
    fn pump_control(&mut self) {
        let mut msg = [0u8; 64];
        for _ in 0..16 {
            let mut moved = false;
            while let Some(n) = self.encoder.poll_control(&mut msg) {
                moved = true;
                match wire::parse(&msg[..n]) {
                    Ok(Message::Reset(reset)) => self.decoder.handle_reset(self.now, reset),
                    other => panic!("encoder sent {other:?} on the control path"),
                }
            }
            while let Some(n) = self.decoder.poll_control(self.now, &mut msg) {
                moved = true;
                match wire::parse(&msg[..n]) {
                    Ok(Message::Ack(ack)) => self.encoder.handle_ack(self.now, ack),
                    Ok(Message::Reset(reset)) => self.encoder.handle_reset(self.now, reset),
                    other => panic!("decoder sent {other:?} on the control path"),
                }
            }
            if !moved {
                return;
            }
        }
        panic!("control messages keep flowing");
    }
}

fuzz_target!(|scenario: Scenario| {
    let Ok(encoder) = Encoder::new(scenario.config.clone(), scenario.shard, scenario.epoch) else {
        panic!("valid settings refused: {:?}", scenario.config);
    };
    let mut run = Run {
        scenario: &scenario,
        now: Timestamp::ZERO,
        encoder,
        decoder: Decoder::new(DecoderConfig::default(), scenario.shard).expect("zstd context"),
        sends: 0,
        held: None,
        impaired: false,
        sent: HashMap::new(),
        last_serial: HashMap::new(),
        delivered: 0,
        datagram_buf: vec![0; 1500],
        buf: vec![0; MAX_PACKET_LEN],
    };
    run.pump_control();

    let mut payload = Vec::new();
    for (serial, spec) in (0u32..).zip(&scenario.packets) {
        let flow = scenario.flows[spec.flow % scenario.flows.len()];
        payload.clear();
        payload.extend_from_slice(&serial.to_be_bytes());
        let fill = spec.len.saturating_sub(flow.header_len() + payload.len());
        spec.filler.fill(&mut payload, fill);
        let packet = flow.packet(&payload);
        let key = packet::inspect(&packet)
            .expect("generated packets are IP")
            .flow;
        run.queue(&packet);
        let sent = Sent {
            flow: key,
            serial,
            delivered: false,
        };
        assert!(
            run.sent.insert(packet, sent).is_none(),
            "serials make packets unique"
        );
        if let Some(pause) = spec.flush {
            let to = run.now + pause;
            run.advance(to);
            run.flush();
        }
    }
    run.flush();
    let end = run.now + Duration::from_secs(10);
    run.advance(end);
    assert_eq!(
        run.decoder.poll_timeout(),
        None,
        "a quiet decoder keeps a timer"
    );

    if !run.impaired {
        let stats = *run.decoder.stats();
        assert_eq!(
            run.delivered,
            run.sent.len(),
            "clean link lost packets: {stats:?}"
        );
        assert_eq!(stats.malformed_total(), 0, "{stats:?}");
        assert_eq!(stats.gaps, 0, "{stats:?}");
        assert_eq!(
            run.encoder.stats().blocks_lost,
            0,
            "{:?}",
            run.encoder.stats()
        );
    }
});
