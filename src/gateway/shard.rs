//! A shard: one tokio task that owns one TUN queue and, for every connected peer, one
//! [`Encoder`] and the [`Decoder`]s of the peer's shards it serves.
//!
//! The kernel spreads flows over the TUN queues by flow hash, so a flow always reads on the
//! same queue and therefore the same shard: its packets stay in order and its state on one
//! core, with no hand-off between tasks on the hot path. Datagrams from a peer carry the
//! sending shard's index; remote shard `j` is served by local shard `j % shards`.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::counters::{ShardCounters, add};
use super::peers::{Link, Peers};
use crate::core::packet::{Ipv4Packet, Ipv6Packet};
use crate::core::wire::{self, Ack, MessageType, Reset, ResetKind};
use crate::core::{Decoder, DecoderConfig, Encoder, EncoderConfig, Timestamp};
use crate::tun::gso::{MAX_SEGMENT_HEADER, Segments};
use crate::tun::{GsoKind, GsoMeta, TunQueue};

/// Packets read from the TUN device per wake-up before the shard sends what it has: enough to
/// fill a 64 KiB batch with full-size packets, small enough to keep a wake-up short.
const READ_BURST: usize = 48;
/// Bytes read from the TUN device per wake-up before the shard sends what it has. With
/// offload a read can return a 64 KiB super-packet, and 48 of them would overflow the
/// encoder's queue (its `max_queue_bytes`, 1 MiB by default), which refuses (drops) what does
/// not fit: stop reading well before that, and let the TUN queue hold the rest.
const READ_BYTES: usize = 256 * 1024;
/// Size of each zeroed block datagrams are encoded into: room for a few 64 KiB batches.
const WAN_ARENA: usize = 256 * 1024;

/// Commands handled per wake-up before packets get their turn again.
const COMMAND_BURST: usize = 256;

/// What other tasks tell a shard.
#[derive(Debug)]
pub enum Command {
    /// A peer's connection is up (new, or replacing an older one). `resync` asks the peer to
    /// start new epochs for the shards this shard serves (used when the shard itself
    /// restarted while the connection stayed).
    LinkUp {
        peer: usize,
        link: Link,
        resync: bool,
    },
    /// A peer's connection of this generation is gone.
    LinkDown { peer: usize, generation: u64 },
    /// A datagram from a peer.
    Datagram {
        peer: usize,
        generation: u64,
        bytes: Bytes,
    },
    /// An ack or reset from a peer's control stream.
    Control {
        peer: usize,
        generation: u64,
        message: ControlMessage,
    },
}

/// Control messages a shard acts on.
#[derive(Clone, Copy, Debug)]
pub enum ControlMessage {
    /// Receive state of the peer's decoder for this shard's encoder.
    Ack(Ack),
    /// An epoch announcement (for one of our decoders) or request (for our encoder).
    Reset(Reset),
}

/// Per-peer state of a shard while the peer is connected.
struct PeerState {
    link: Link,
    encoder: Encoder,
    /// The encoder's bypass count already added to the shared counters.
    bypassed_reported: u64,
    /// The encoder's codec input and output bytes already added to the shared counters.
    codec_reported: (u64, u64),
    /// Decoders for the peer's shards, indexed by remote shard; only those this shard serves.
    decoders: Vec<Option<Decoder>>,
}

/// Everything a shard needs to run.
pub struct Shard {
    pub index: usize,
    pub shards: usize,
    pub tun: Arc<TunQueue>,
    pub peers: Arc<Peers>,
    pub encoder_config: EncoderConfig,
    pub decoder_config: DecoderConfig,
    /// Counters per peer.
    pub counters: Vec<Arc<ShardCounters>>,
    /// Origin of the core's time line.
    pub start: Instant,
}

/// What woke the shard.
enum Event {
    Shutdown,
    Command(Option<Command>),
    Packet(std::io::Result<crate::tun::Received>),
    Timer,
}

/// Logs malformed input at most once per [`MalformedLog::EVERY`], with the count since the
/// last line, so a hostile or broken peer cannot flood the log.
#[derive(Default)]
struct MalformedLog {
    last: Option<Timestamp>,
    suppressed: u64,
}

impl MalformedLog {
    const EVERY: std::time::Duration = std::time::Duration::from_secs(10);

    fn note(&mut self, now: Timestamp, error: crate::core::wire::WireError) {
        if self
            .last
            .is_some_and(|last| now.saturating_since(last) < Self::EVERY)
        {
            self.suppressed += 1;
            return;
        }
        tracing::warn!(
            %error,
            suppressed = self.suppressed,
            "malformed datagram from peer dropped (at most one line per 10 s)"
        );
        self.last = Some(now);
        self.suppressed = 0;
    }
}

/// The running shard: configuration plus per-peer state and scratch buffers.
struct Running {
    shard: Shard,
    states: Vec<Option<PeerState>>,
    malformed_log: MalformedLog,
    /// Zeroed memory the encoder writes datagrams into; each is split off as the `Bytes`
    /// quinn queues, so a datagram costs neither a copy nor an allocation of its own.
    wan: BytesMut,
    /// The datagrams of one flush, handed to quinn together (see [`Running::flush`]).
    datagrams: Vec<Bytes>,
    /// Scratch for control messages.
    control: Vec<u8>,
    /// Scratch for one segment of a super-packet cut in software.
    segment: Vec<u8>,
}

impl Shard {
    /// Runs until `shutdown` fires or the command channel closes, then flushes what is
    /// queued.
    pub async fn run(self, commands: &mut mpsc::Receiver<Command>, shutdown: CancellationToken) {
        let tun = self.tun.clone();
        let peers = self.peers.len();
        let mut running = Running {
            shard: self,
            states: (0..peers).map(|_| None).collect(),
            malformed_log: MalformedLog::default(),
            wan: BytesMut::new(),
            datagrams: Vec::new(),
            control: vec![0; 64],
            segment: Vec::with_capacity(65_536),
        };
        let mut buf = vec![0u8; 65_536];
        loop {
            let deadline = running.next_deadline();
            let event = tokio::select! {
                biased;
                _ = shutdown.cancelled() => Event::Shutdown,
                cmd = commands.recv() => Event::Command(cmd),
                r = tun.recv(&mut buf) => Event::Packet(r),
                _ = sleep_until(deadline) => Event::Timer,
            };
            let now = running.now();
            match event {
                Event::Shutdown | Event::Command(None) => break,
                Event::Command(Some(cmd)) => {
                    running.on_command(now, cmd);
                    for _ in 0..COMMAND_BURST {
                        match commands.try_recv() {
                            Ok(cmd) => running.on_command(now, cmd),
                            Err(_) => break,
                        }
                    }
                }
                Event::Packet(Ok(received)) => {
                    running.on_packet(now, &buf[..received.len], received.gso);
                    let mut read = received.len;
                    // Take whatever else is already waiting, without sleeping, so it joins
                    // the same batch.
                    for _ in 1..READ_BURST {
                        if read >= READ_BYTES {
                            break;
                        }
                        match tun.recv(&mut buf).now_or_never() {
                            Some(Ok(received)) => {
                                read += received.len;
                                running.on_packet(now, &buf[..received.len], received.gso)
                            }
                            Some(Err(e)) => {
                                tracing::warn!(shard = running.shard.index, error = %e, "TUN read failed");
                                break;
                            }
                            None => break,
                        }
                    }
                }
                Event::Packet(Err(e)) => {
                    tracing::warn!(shard = running.shard.index, error = %e, "TUN read failed");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                Event::Timer => running.on_timer(now),
            }
            running.flush(now).await;
        }
        let now = running.now();
        running.flush(now).await;
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

impl Running {
    fn now(&self) -> Timestamp {
        Timestamp::from_duration(self.shard.start.elapsed())
    }

    fn instant(&self, t: Timestamp) -> Instant {
        self.shard.start + t.since_origin()
    }

    fn next_deadline(&self) -> Option<Instant> {
        let mut next: Option<Timestamp> = None;
        let mut consider = |t: Option<Timestamp>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        for state in self.states.iter().flatten() {
            consider(state.encoder.poll_timeout());
            for decoder in state.decoders.iter().flatten() {
                consider(decoder.poll_timeout());
            }
        }
        next.map(|t| self.instant(t))
    }

    fn on_command(&mut self, now: Timestamp, cmd: Command) {
        match cmd {
            Command::LinkUp { peer, link, resync } => self.link_up(now, peer, link, resync),
            Command::LinkDown { peer, generation } => {
                if self.states[peer]
                    .as_ref()
                    .is_some_and(|s| s.link.generation == generation)
                {
                    self.states[peer] = None;
                }
            }
            Command::Datagram {
                peer,
                generation,
                bytes,
            } => self.on_datagram(now, peer, generation, &bytes),
            Command::Control {
                peer,
                generation,
                message,
            } => self.on_control(now, peer, generation, message),
        }
    }

    fn link_up(&mut self, _now: Timestamp, peer: usize, link: Link, resync: bool) {
        let epoch: u16 = rand::random();
        let mut encoder = match Encoder::new(
            self.shard.encoder_config.clone(),
            self.shard.index as u8,
            epoch,
        ) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(error = %e, "encoder settings rejected");
                return;
            }
        };
        encoder.set_dedupe(link.dedupe.as_ref().map(|d| d.encoder.clone()));
        if resync {
            // Ask the peer to restart the encoders whose decoders we lost.
            for remote in
                (self.shard.index..usize::from(link.remote_shards)).step_by(self.shard.shards)
            {
                let msg = Reset {
                    shard: remote as u8,
                    epoch: 0,
                    kind: ResetKind::Request,
                }
                .encode();
                let _ = link.control.try_send(msg.to_vec());
            }
        }
        let decoders = (0..usize::from(link.remote_shards)).map(|_| None).collect();
        self.states[peer] = Some(PeerState {
            link,
            encoder,
            bypassed_reported: 0,
            codec_reported: (0, 0),
            decoders,
        });
    }

    fn on_packet(&mut self, now: Timestamp, packet: &[u8], gso: Option<GsoMeta>) {
        #[cfg(feature = "test-hooks")]
        super::test_hooks::on_tun_packet(self.shard.index, packet);
        let Some(dst) = destination(packet) else {
            tracing::trace!("unparsable packet from TUN dropped");
            return;
        };
        let Some(peer) = self.shard.peers.route(dst) else {
            tracing::trace!(%dst, "no peer for destination");
            return;
        };
        let counters = &self.shard.counters[peer];
        let Some(state) = self.states[peer].as_mut() else {
            add(&counters.no_link, 1);
            return;
        };
        // On a lossy link the encoder keeps blocks to one datagram; a super-packet would still
        // span ~45 and be lost with any one of them, so queue its segments instead: one lost
        // datagram then costs the inner TCP about one segment. On a clean link the
        // super-packet stays whole (the cheapest read, the best compression block).
        if let Some(meta) = gso.filter(|g| g.kind != GsoKind::None)
            && state.encoder.small_blocks()
            && let Ok(mut segments) = Segments::new(packet, meta)
        {
            let mut header = [0u8; MAX_SEGMENT_HEADER];
            while let Some((len, payload)) = segments.next_segment(&mut header) {
                self.segment.clear();
                self.segment.extend_from_slice(&header[..len]);
                self.segment.extend_from_slice(&packet[payload]);
                queue(&mut state.encoder, counters, now, &self.segment, &[]);
            }
            return;
        }
        let mut meta = [0u8; GsoMeta::MAX_ENCODED_LEN];
        let meta_len = gso.map_or(0, |g| g.encode(&mut meta));
        queue(&mut state.encoder, counters, now, packet, &meta[..meta_len]);
    }

    fn on_datagram(&mut self, now: Timestamp, peer: usize, generation: u64, bytes: &[u8]) {
        let counters = &self.shard.counters[peer];
        let Some(state) = self.states[peer].as_mut() else {
            return;
        };
        if state.link.generation != generation {
            return;
        }
        add(&counters.wan_in_datagrams, 1);
        add(&counters.wan_in_bytes, bytes.len() as u64);
        if bytes.get(1) == Some(&(MessageType::Ack as u8)) {
            // An ack that rode beside the peer's data, for our encoder.
            match wire::parse(bytes) {
                Ok(wire::Message::Ack(ack)) => state.encoder.handle_ack(now, ack),
                _ => add(&counters.malformed, 1),
            }
            return;
        }
        let remote = bytes.get(2).copied().map(usize::from);
        let Some(slot) = remote.and_then(|r| state.decoders.get_mut(r)) else {
            add(&counters.malformed, 1);
            return;
        };
        if slot.is_none() {
            // Data for a remote shard whose epoch we never heard (say, this shard restarted):
            // a decoder without an epoch drops it and, after its grace period, asks the peer
            // for a new epoch, so the stream heals by itself.
            *slot = new_decoder(&self.shard.decoder_config, &state.link, bytes[2]);
        }
        let Some(decoder) = slot.as_mut() else {
            return;
        };
        if let Err(e) = decoder.handle_datagram(now, bytes) {
            add(&counters.malformed, 1);
            self.malformed_log.note(now, e);
        }
    }

    fn on_control(&mut self, now: Timestamp, peer: usize, generation: u64, msg: ControlMessage) {
        let Some(state) = self.states[peer].as_mut() else {
            return;
        };
        if state.link.generation != generation {
            return;
        }
        match msg {
            ControlMessage::Ack(ack) => state.encoder.handle_ack(now, ack),
            ControlMessage::Reset(reset) if reset.kind == ResetKind::Request => {
                tracing::info!(shard = self.shard.index, "peer asked for a new epoch");
                state.encoder.handle_reset(now, reset);
            }
            ControlMessage::Reset(reset) => {
                let Some(slot) = state.decoders.get_mut(usize::from(reset.shard)) else {
                    return;
                };
                if slot.is_none() {
                    *slot = new_decoder(&self.shard.decoder_config, &state.link, reset.shard);
                }
                if let Some(decoder) = slot {
                    decoder.handle_reset(now, reset);
                }
            }
        }
    }

    fn on_timer(&mut self, now: Timestamp) {
        for state in self.states.iter_mut().flatten() {
            state.encoder.handle_timeout(now);
            for decoder in state.decoders.iter_mut().flatten() {
                if decoder.poll_timeout().is_some_and(|t| t <= now) {
                    decoder.handle_timeout(now);
                }
            }
        }
    }

    /// Sends every datagram and control message that is ready and writes every restored
    /// packet to the TUN device.
    async fn flush(&mut self, now: Timestamp) {
        for (peer, slot) in self.states.iter_mut().enumerate() {
            let Some(state) = slot.as_mut() else {
                continue;
            };
            let counters = &self.shard.counters[peer];
            // Re-read the datagram size before each datagram: path MTU discovery changes it.
            while let Some(max) = state.link.conn.max_datagram_size() {
                if self.wan.len() < max {
                    self.wan = BytesMut::zeroed(WAN_ARENA);
                }
                let Some(n) = state.encoder.poll_datagram(now, max, &mut self.wan) else {
                    break;
                };
                add(&counters.wan_out_datagrams, 1);
                add(&counters.wan_out_bytes, n as u64);
                self.datagrams.push(self.wan.split_to(n).freeze());
            }
            // Data is going the peer's way: acks for what it sent us ride along, in the same
            // QUIC packet, instead of each costing a packet (and the peer's QUIC ack of it)
            // when their delay runs out.
            if state.link.ack_datagrams && !self.datagrams.is_empty() {
                for decoder in state.decoders.iter_mut().flatten() {
                    if let Some(n) = decoder.poll_ack(&mut self.control) {
                        add(&counters.acks_with_data, 1);
                        add(&counters.wan_out_datagrams, 1);
                        add(&counters.wan_out_bytes, n as u64);
                        self.datagrams
                            .push(Bytes::copy_from_slice(&self.control[..n]));
                    }
                }
            }
            // Encode first, send after: quinn's connection task, woken by the first send,
            // then finds the whole flush queued and can put it in one GSO send call, where
            // datagrams handed over one by one as they are encoded each went out on their own.
            for datagram in self.datagrams.drain(..) {
                // Wait for room in quinn's datagram buffer rather than have it drop queued
                // datagrams: back-pressure reaches the TUN queue and the inner TCP slows down,
                // instead of losing packets and retransmitting them over the WAN.
                if let Err(e) = state.link.conn.send_datagram_wait(datagram).await {
                    add(&counters.send_errors, 1);
                    tracing::debug!(error = %e, "datagram not sent");
                }
            }
            let bypassed = state.encoder.stats().packets_bypassed;
            add(
                &counters.bypassed_packets,
                bypassed - state.bypassed_reported,
            );
            state.bypassed_reported = bypassed;
            let codecs = &state.encoder.stats().codecs;
            let codec_in: u64 = codecs.iter().map(|c| c.area_bytes).sum();
            let codec_out: u64 = codecs.iter().map(|c| c.body_bytes).sum();
            add(&counters.codec_in_bytes, codec_in - state.codec_reported.0);
            add(
                &counters.codec_out_bytes,
                codec_out - state.codec_reported.1,
            );
            state.codec_reported = (codec_in, codec_out);
            while let Some(n) = state.encoder.poll_control(&mut self.control) {
                send_control(&state.link, &self.control[..n]);
            }
            for decoder in state.decoders.iter_mut().flatten() {
                while let Some(n) = decoder.poll_control(now, &mut self.control) {
                    if self.control[1] == MessageType::Ack as u8 {
                        add(&counters.acks_on_control, 1);
                    }
                    send_control(&state.link, &self.control[..n]);
                }
                while let Some(restored) = decoder.next_packet() {
                    let (packet, meta) = (restored.packet, restored.meta);
                    let allowed =
                        source(packet).is_some_and(|src| self.shard.peers.allows(peer, src));
                    if !allowed {
                        add(&counters.source_not_allowed, 1);
                        tracing::debug!(
                            "restored packet with a source outside allowed_ips dropped"
                        );
                        continue;
                    }
                    add(&counters.lan_out_packets, 1);
                    add(&counters.lan_out_bytes, packet.len() as u64);
                    let gso = if meta.is_empty() {
                        None
                    } else {
                        match GsoMeta::decode(meta) {
                            Ok((gso, _)) => Some(gso),
                            Err(_) => {
                                add(&counters.malformed, 1);
                                continue;
                            }
                        }
                    };
                    if let Err(e) = self.shard.tun.send(packet, gso).await {
                        tracing::debug!(error = %e, "TUN write failed");
                    }
                }
            }
        }
    }
}

/// Hands one packet to the encoder and counts it.
fn queue(
    encoder: &mut Encoder,
    counters: &ShardCounters,
    now: Timestamp,
    packet: &[u8],
    meta: &[u8],
) {
    match encoder.handle_packet_with_meta(now, packet, meta) {
        Ok(()) => {
            add(&counters.lan_in_packets, 1);
            add(&counters.lan_in_bytes, packet.len() as u64);
        }
        Err(e) => {
            add(&counters.refused, 1);
            tracing::debug!(error = %e, "packet refused by encoder");
        }
    }
}

/// A decoder for remote shard `remote` of the peer behind `link`, in its dedupe context.
fn new_decoder(config: &DecoderConfig, link: &Link, remote: u8) -> Option<Decoder> {
    match Decoder::new(config.clone(), remote) {
        Ok(mut d) => {
            d.set_dedupe(link.dedupe.as_ref().map(|d| d.decoder.clone()));
            Some(d)
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot create decoder");
            None
        }
    }
}

fn send_control(link: &Link, msg: &[u8]) {
    if link.control.try_send(msg.to_vec()).is_err() {
        tracing::debug!("control queue full; message dropped (acks are cumulative)");
    }
}

/// Destination address of an IPv4/IPv6 packet. Only the fixed header is checked: the
/// encoder validates the whole packet right after, so a full `inspect` here would parse it
/// twice.
fn destination(packet: &[u8]) -> Option<IpAddr> {
    match packet.first()? >> 4 {
        4 => Ipv4Packet::new_checked(packet)
            .ok()
            .map(|p| IpAddr::V4(p.dst_addr())),
        6 => Ipv6Packet::new_checked(packet)
            .ok()
            .map(|p| IpAddr::V6(p.dst_addr())),
        _ => None,
    }
}

/// Source address of a restored packet (already fully validated by the decoder).
fn source(packet: &[u8]) -> Option<IpAddr> {
    match packet.first()? >> 4 {
        4 => Ipv4Packet::new_checked(packet)
            .ok()
            .map(|p| IpAddr::V4(p.src_addr())),
        6 => Ipv6Packet::new_checked(packet)
            .ok()
            .map(|p| IpAddr::V6(p.src_addr())),
        _ => None,
    }
}

/// Parses a control frame from the peer into what a shard acts on, with the shard it is for:
/// acks and reset requests are for our encoder of that shard index; announcements for the
/// decoder of that remote shard.
pub fn route_control(frame: &[u8], shards: usize) -> Option<(usize, ControlMessage)> {
    match wire::parse(frame).ok()? {
        wire::Message::Ack(ack) => {
            let s = usize::from(ack.id.shard);
            (s < shards).then_some((s, ControlMessage::Ack(ack)))
        }
        wire::Message::Reset(reset) if reset.kind == ResetKind::Request => {
            let s = usize::from(reset.shard);
            (s < shards).then_some((s, ControlMessage::Reset(reset)))
        }
        wire::Message::Reset(reset) => Some((
            usize::from(reset.shard) % shards.max(1),
            ControlMessage::Reset(reset),
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::wire::{MAX_META_LEN, MAX_PACKET_LEN, area_entry_len};

    #[test]
    fn one_read_burst_fits_an_empty_encoder_queue() {
        // A burst stops once it has read READ_BYTES, so its last read can overshoot by one
        // largest packet; all of it must fit the queue the flush before it emptied.
        let burst = READ_BYTES + area_entry_len(MAX_PACKET_LEN, MAX_META_LEN);
        assert!(burst <= EncoderConfig::default().max_queue_bytes);
        // ...and a burst of full-size super-packets would not have.
        assert!(READ_BURST * MAX_PACKET_LEN > EncoderConfig::default().max_queue_bytes);
    }
}
