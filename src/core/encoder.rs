//! The encoder: IP packets in, WAN datagrams out, for one peer and one shard.
//!
//! ```text
//! handle_packet ──> queue (compressible) ─┐
//!              └──> queue (bypass)     ───┴─> batch ─> compress ─> block ─> data / fragments
//! ```
//!
//! - **Batching.** Every packet queued when [`Encoder::poll_datagram`] runs goes into the next
//!   block, up to [`EncoderConfig::max_batch_bytes`]. With `max_delay` zero nothing ever
//!   waits: an idle link adds no latency and a busy one batches by itself, because packets
//!   pile up while the previous block is being sent. With a positive `max_delay` a partial
//!   batch waits at most that long for company ([`Encoder::poll_timeout`] says until when).
//! - **Bypass.** The first packet of each flow (and every [`RECHECK_PACKETS`]th after) runs a
//!   cheap compression trial on its payload; flows that look incompressible (TLS, QUIC,
//!   archives) go to a separate queue whose blocks are sent raw, so they cost no compression
//!   work and do not dilute the compressible batch.
//! - **Never expand.** A block whose compressed body would not be smaller than its packet area
//!   is sent raw: incompressible data costs only framing.
//! - **Fragments.** A block larger than the datagram size is cut into fragments, each sized to
//!   the `max_datagram_size` of the call that sends it, so a path MTU change mid-block is fine.
//! - **Loss adaptation.** A block cut into k fragments is lost with any one of them: 1% datagram
//!   loss loses about 36% of 45-fragment (64 KiB) blocks, and the inner TCP sees bursts of
//!   loss instead of single ones. The encoder estimates the *datagram* loss rate from the
//!   peer's acks (lost blocks over the datagrams of the blocks accounted for, which does not
//!   depend on the block size in use), and while it is at least [`LOSSY_ENTER`] it caps each
//!   block at one datagram ([`Encoder::small_blocks`]; the IO layer then also cuts GSO
//!   super-packets into segments), so one lost datagram costs about one inner packet. Below
//!   [`LOSSY_EXIT`] it returns to big blocks and the best compression.
//! - **Epochs.** The encoder announces its epoch on the control path when created and whenever
//!   its peer's decoder asks for a new one ([`Encoder::poll_control`]).

use std::sync::Arc;
use std::time::Duration;

use super::Timestamp;
use super::compress::{Codec, Compressor};
use super::dedupe::encode::{Density, Encoded};
use super::dedupe::{self, EncoderCache, Place};
use super::packet;
use super::stats::EncoderStats;
use super::wire::{
    self, Ack, BlockHeader, BlockId, Fragment, MAX_AREA_LEN, MAX_BLOCK_LEN, MAX_PACKET_LEN,
    MAX_PACKETS_PER_BLOCK, MIN_DATAGRAM_SIZE, Reset, ResetKind,
};

/// Placed blocks remembered until their ack: one slot per sequence number modulo this. The
/// decoder acks within 64 blocks (its ack bitmap); older blocks stay unreferenced.
const IN_FLIGHT: usize = 256;

/// Bytes of a packet taken as headers when judging whether a block carries data worth
/// deduplicating (IPv6 + TCP with options fit).
const HEADER_ALLOWANCE: usize = 80;

/// Blocks whose datagram count is remembered for the loss estimate, by sequence number
/// modulo this: more than the decoder's reorder window holds, so an ack finds its block's
/// count unless the link lost track of over a thousand blocks.
const SENT_RING: usize = 1024;

/// A placed block waiting for its ack.
#[derive(Clone, Copy, Debug)]
struct InFlight {
    seq: u32,
    place: Place,
    len: u32,
    live: bool,
}

/// A flow's verdict is re-judged after this many packets, so a connection that switches from
/// compressed to plain content (HTTP keep-alive) is noticed...
pub const RECHECK_PACKETS: u16 = 256;

/// ...or after this many bytes, whichever comes first: one TUN read can be a 64 KiB GSO
/// super-packet, and the first one of a response often starts with plain-text headers.
pub const RECHECK_BYTES: u32 = 256 * 1024;

/// Slots in the per-flow bypass memory (direct-mapped by flow hash; a collision only costs an
/// extra trial).
const FLOW_SLOTS: usize = 4096;

/// How far behind the newest acknowledged block a block must be before a missing ack bit
/// counts it as lost (it may still be in flight, reordered).
const ACK_REORDER_SLACK: u32 = 16;

/// Estimated datagram loss rate at or above which blocks are capped at one datagram.
///
/// At this rate a 45-fragment block is lost 2.2% of the time, against 0.05% for a one-datagram
/// one; below it, the lost compression of small blocks costs more than the rare losses.
pub const LOSSY_ENTER: f64 = 0.0005;

/// Estimated datagram loss rate below which big blocks come back (hysteresis with
/// [`LOSSY_ENTER`], so the mode does not flip on every loss).
pub const LOSSY_EXIT: f64 = 0.0002;

/// The loss estimate counts datagrams with a decaying window: when this many are counted,
/// both counts are halved, so the estimate follows the last few tens of thousands of
/// datagrams (about a second at 200 Mbit/s) and 0.05% means several losses, not one.
const LOSS_WINDOW: f64 = 16_384.0;

/// Fewest datagrams counted before the estimate is trusted.
const LOSS_MIN_SAMPLE: f64 = 1_000.0;

/// Which codec to use for compressible batches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// Send every block raw.
    Off,
    /// lz4 for every compressible batch.
    Lz4,
    /// zstd at [`EncoderConfig::zstd_level`] for every compressible batch.
    Zstd,
    /// zstd at the configured level, switching to lz4 for a batch while the encoder is
    /// backlogged (more than two batches queued: the CPU, not the link, is the bottleneck).
    Auto,
}

/// Settings of one encoder.
#[derive(Clone, Debug, PartialEq)]
pub struct EncoderConfig {
    /// Codec choice.
    pub compression: Compression,
    /// zstd level (negative levels are faster and compress less).
    pub zstd_level: i32,
    /// Longest a partial batch waits for more packets; zero = never wait.
    pub max_delay: Duration,
    /// A batch is closed before it would exceed this many packet-area bytes (a single bigger
    /// packet still goes, alone). At most [`MAX_AREA_LEN`].
    pub max_batch_bytes: usize,
    /// Packets are refused ([`EncodeError::QueueFull`]) while this many bytes wait.
    pub max_queue_bytes: usize,
    /// Run the per-flow incompressibility trial and bypass flows that fail it.
    pub bypass: bool,
}

impl Default for EncoderConfig {
    fn default() -> Self {
        EncoderConfig {
            compression: Compression::Auto,
            zstd_level: 1,
            max_delay: Duration::ZERO,
            max_batch_bytes: 64 * 1024,
            max_queue_bytes: 1024 * 1024,
            bypass: true,
        }
    }
}

/// Why [`Encoder::new`] refused its settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// `max_batch_bytes` is zero or above [`MAX_AREA_LEN`].
    BatchSize,
    /// `max_queue_bytes` is smaller than one maximal packet.
    QueueSize,
    /// `zstd_level` is outside the supported range.
    ZstdLevel,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ConfigError::BatchSize => "max_batch_bytes must be between 1 and 67584",
            ConfigError::QueueSize => "max_queue_bytes must hold at least one 64 KiB packet",
            ConfigError::ZstdLevel => "zstd level out of range",
        })
    }
}

impl std::error::Error for ConfigError {}

/// Why [`Encoder::handle_packet`] refused a packet. Each case is also counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncodeError {
    /// Not a well-formed IPv4/IPv6 packet.
    Malformed(packet::PacketError),
    /// Longer than [`MAX_PACKET_LEN`] (or metadata longer than [`wire::MAX_META_LEN`]).
    TooLarge,
    /// The queue holds `max_queue_bytes` already; the caller should send before reading more.
    QueueFull,
}

impl std::fmt::Display for EncodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EncodeError::Malformed(e) => write!(f, "malformed packet: {e}"),
            EncodeError::TooLarge => f.write_str("packet longer than 65535 bytes"),
            EncodeError::QueueFull => f.write_str("encoder queue full"),
        }
    }
}

impl std::error::Error for EncodeError {}

/// Packets waiting for a batch: a packet area, consumed from the front.
#[derive(Debug, Default)]
struct Queue {
    /// Area entries (length prefix + packet); `area[start..]` is pending.
    area: Vec<u8>,
    /// First pending byte.
    start: usize,
    /// When the oldest pending packet arrived (conservatively: never later than it).
    oldest: Option<Timestamp>,
    /// Packets ever pushed.
    pushed: u64,
    /// Packets ever encoded into blocks.
    encoded: u64,
}

impl Queue {
    fn pending(&self) -> usize {
        self.area.len() - self.start
    }
}

/// What the bypass memory knows about one flow.
#[derive(Clone, Copy, Debug, Default)]
struct FlowVerdict {
    /// Full flow hash of the flow this slot describes.
    hash: u64,
    /// Packets left before the flow is judged again; 0 = unused or expired.
    packets_left: u16,
    /// Bytes left before the flow is judged again.
    bytes_left: u32,
    /// The queue the flow's last packet went to (its verdict).
    queue: usize,
    /// That queue's push count right after the flow's last packet: the flow has packets
    /// waiting while the queue has encoded fewer than this.
    pushed_at: u64,
}

/// The block being sent, possibly over several datagrams.
#[derive(Debug)]
struct Outgoing {
    /// Identity of the block.
    id: BlockId,
    /// Header and body; `MAX_BLOCK_LEN` long, allocated once.
    bytes: Vec<u8>,
    /// Length of the block in `bytes`.
    len: usize,
    /// Bytes already sent.
    sent: usize,
}

/// Queue index of compressible packets.
const COMPRESS: usize = 0;
/// Queue index of packets from flows judged incompressible.
const BYPASS: usize = 1;

/// Turns IP packets into WAN datagrams for one peer and one shard. See the module doc.
pub struct Encoder {
    config: EncoderConfig,
    shard: u8,
    epoch: u16,
    next_seq: u32,
    /// Oldest sequence number whose ack status is not yet counted.
    unaccounted: u32,
    compressor: Compressor,
    queues: [Queue; 2],
    flows: Box<[FlowVerdict]>,
    /// [`COMPRESS`]'s push count right after the last packet of a flow whose slot another
    /// flow held (see [`Encoder::route`]): such packets may still wait there while
    /// `encoded` is below it, and no slot remembers them.
    guests_pushed_at: u64,
    out: Outgoing,
    /// An epoch announcement waiting for the control path.
    announce: bool,
    /// The peer's dedupe context, shared with the other shards; `None`: dedupe off.
    dedupe: Option<Arc<EncoderCache>>,
    /// Scratch for one block's dedupe stream.
    dedupe_stream: Vec<u8>,
    /// Where this encoder's last reference ended (see [`dedupe::encode::Trail`]).
    dedupe_trail: dedupe::encode::Trail,
    /// Placed blocks not yet acked, by sequence number modulo [`IN_FLIGHT`].
    in_flight: Box<[InFlight]>,
    /// Datagrams each block was sent in, by sequence number modulo [`SENT_RING`], for the
    /// loss estimate.
    block_datagrams: Box<[u16]>,
    /// Datagrams of the blocks accounted for by acks, decaying (see [`LOSS_WINDOW`]).
    loss_datagrams: f64,
    /// Of those blocks, the ones lost (each lost at least one datagram), decaying alike.
    loss_blocks: f64,
    /// Blocks are capped at one datagram (the link is lossy).
    small_blocks: bool,
    stats: EncoderStats,
}

impl Encoder {
    /// An encoder for `shard`, starting at `epoch` (the caller picks it at random, so a
    /// restarted process does not reuse its predecessor's). The epoch announcement is waiting
    /// in [`Encoder::poll_control`].
    ///
    /// # Errors
    /// A [`ConfigError`] for settings out of range.
    pub fn new(config: EncoderConfig, shard: u8, epoch: u16) -> Result<Encoder, ConfigError> {
        if config.max_batch_bytes == 0 || config.max_batch_bytes > MAX_AREA_LEN {
            return Err(ConfigError::BatchSize);
        }
        if config.max_queue_bytes < wire::area_entry_len(MAX_PACKET_LEN, wire::MAX_META_LEN) {
            return Err(ConfigError::QueueSize);
        }
        let compressor = Compressor::new(config.zstd_level).map_err(|_| ConfigError::ZstdLevel)?;
        Ok(Encoder {
            shard,
            epoch,
            next_seq: 0,
            unaccounted: 0,
            compressor,
            queues: [Queue::default(), Queue::default()],
            flows: vec![FlowVerdict::default(); FLOW_SLOTS].into_boxed_slice(),
            guests_pushed_at: 0,
            out: Outgoing {
                id: BlockId {
                    shard,
                    epoch,
                    seq: 0,
                },
                bytes: vec![0; MAX_BLOCK_LEN],
                len: 0,
                sent: 0,
            },
            announce: true,
            dedupe: None,
            dedupe_stream: Vec::new(),
            dedupe_trail: Default::default(),
            in_flight: vec![
                InFlight {
                    seq: 0,
                    place: Place { epoch: 0, pos: 0 },
                    len: 0,
                    live: false,
                };
                IN_FLIGHT
            ]
            .into_boxed_slice(),
            block_datagrams: vec![0; SENT_RING].into_boxed_slice(),
            loss_datagrams: 0.0,
            loss_blocks: 0.0,
            small_blocks: false,
            stats: EncoderStats::default(),
            config,
        })
    }

    /// Takes part in the peer's dedupe context (shared by every shard sending to that peer);
    /// `None` turns dedupe off for blocks encoded from now on.
    pub fn set_dedupe(&mut self, cache: Option<Arc<EncoderCache>>) {
        self.dedupe = cache;
        for entry in self.in_flight.iter_mut() {
            entry.live = false;
        }
    }

    /// The shard this encoder serves.
    pub fn shard(&self) -> u8 {
        self.shard
    }

    /// The current epoch.
    pub fn epoch(&self) -> u16 {
        self.epoch
    }

    /// Counters so far.
    pub fn stats(&self) -> &EncoderStats {
        &self.stats
    }

    /// True while the link looks lossy and blocks are capped at one datagram. The IO layer
    /// should then queue GSO super-packets as their segments, so a lost datagram costs about
    /// one inner packet instead of a whole super-packet.
    pub fn small_blocks(&self) -> bool {
        self.small_blocks
    }

    /// The estimated datagram loss rate (0 until enough acks were seen).
    pub fn loss_estimate(&self) -> f64 {
        if self.loss_datagrams < LOSS_MIN_SAMPLE {
            0.0
        } else {
            self.loss_blocks / self.loss_datagrams
        }
    }

    /// True when nothing is queued or half sent.
    pub fn is_idle(&self) -> bool {
        self.out.sent >= self.out.len && self.queues.iter().all(|q| q.pending() == 0)
    }

    /// Queues one IP packet (a plain packet or a GSO super-packet of up to 65535 bytes).
    ///
    /// # Errors
    /// The packet is dropped, counted, and the reason returned: not IP, too large, or the
    /// queue is full (send what is queued first).
    pub fn handle_packet(&mut self, now: Timestamp, packet: &[u8]) -> Result<(), EncodeError> {
        self.handle_packet_with_meta(now, packet, &[])
    }

    /// Queues one IP packet with up to [`wire::MAX_META_LEN`] bytes of metadata that the
    /// peer's decoder hands back with it (the IO layer keeps TUN offload details there).
    ///
    /// # Errors
    /// As [`Encoder::handle_packet`]; metadata longer than the limit is
    /// [`EncodeError::TooLarge`].
    pub fn handle_packet_with_meta(
        &mut self,
        now: Timestamp,
        packet: &[u8],
        meta: &[u8],
    ) -> Result<(), EncodeError> {
        if packet.len() > MAX_PACKET_LEN || meta.len() > wire::MAX_META_LEN {
            self.stats.too_large += 1;
            return Err(EncodeError::TooLarge);
        }
        let info = match packet::inspect(packet) {
            Ok(info) => info,
            Err(e) => {
                self.stats.malformed[e.index()] += 1;
                return Err(EncodeError::Malformed(e));
            }
        };
        let entry = wire::area_entry_len(packet.len(), meta.len());
        if self.queues[COMPRESS].pending() + self.queues[BYPASS].pending() + entry
            > self.config.max_queue_bytes
        {
            self.stats.queue_full += 1;
            return Err(EncodeError::QueueFull);
        }
        let payload = packet.get(info.payload_offset..).unwrap_or_default();
        let qi = self.route(info.flow.hash(), payload);
        if qi == BYPASS {
            self.stats.packets_bypassed += 1;
            self.stats.bytes_bypassed += packet.len() as u64;
        }
        let queue = &mut self.queues[qi];
        if queue.start > 0 && queue.start == queue.area.len() {
            queue.area.clear();
            queue.start = 0;
        }
        wire::push_area_entry(&mut queue.area, packet, meta);
        queue.oldest.get_or_insert(now);
        queue.pushed += 1;
        self.stats.packets_in += 1;
        self.stats.bytes_in += packet.len() as u64;
        Ok(())
    }

    /// Picks the queue for a packet of flow `hash`: [`BYPASS`] if the flow looks
    /// incompressible, else [`COMPRESS`]. Runs a trial on `payload` when the bypass memory has
    /// no fresh verdict.
    ///
    /// Order within a flow: while a flow still has packets waiting in one queue, its packets
    /// keep going to that queue, and a slot is only taken over from another flow that has
    /// nothing waiting. A flow whose slot another flow holds with packets waiting (two
    /// hashes on one slot) goes to [`COMPRESS`] without a trial, as its earlier packets may
    /// have; a flow taking over a slot goes to [`BYPASS`] only once no such packet waits in
    /// [`COMPRESS`]. (Before, such a flow ran the trial each time and could alternate between
    /// the queues: `cargo fuzz run roundtrip` found a GRE flow delivered out of order.)
    ///
    /// With compression off the trial still runs while dedupe is on: its verdict then only
    /// picks the anchor density ([`Density`]), and incompressible flows (an encrypted VPN
    /// behind the tunnel) cost a quarter of the index lookups.
    fn route(&mut self, hash: u64, payload: &[u8]) -> usize {
        let judge = self.config.compression != Compression::Off || self.dedupe.is_some();
        if !judge || !self.config.bypass {
            return COMPRESS;
        }
        let slot_index = (hash as usize) % FLOW_SLOTS;
        let slot = self.flows[slot_index];
        let own = slot.hash == hash;
        let waiting = |q: &Queue| q.encoded < slot.pushed_at;
        let slot_waiting = waiting(&self.queues[slot.queue]);
        if !own && slot_waiting {
            // Another flow with packets waiting owns the slot: leave it, and keep this flow's
            // packets in one queue while the collision lasts.
            self.guests_pushed_at = self.queues[COMPRESS].pushed + 1;
            return COMPRESS;
        }
        let (queue, fresh_verdict) = if own && slot_waiting {
            // Keep order: follow the flow's own waiting packets.
            (slot.queue, None)
        } else if own && slot.packets_left > 0 && slot.bytes_left > 0 {
            (slot.queue, None)
        } else if !own && self.queues[COMPRESS].encoded < self.guests_pushed_at {
            // Taking over the slot: this flow may have packets waiting in COMPRESS from a
            // collision, which no verdict recorded; it stays there, unjudged, until they are
            // out.
            (COMPRESS, None)
        } else if payload.len() < MIN_TRIAL_PAYLOAD {
            // Too little to judge (pure acks, small requests): keep the flow's last verdict.
            (if own { slot.queue } else { COMPRESS }, None)
        } else {
            self.stats.trials += 1;
            let q = if self.compressor.looks_incompressible(payload) {
                BYPASS
            } else {
                COMPRESS
            };
            (q, Some(q))
        };
        let pushed_at = self.queues[queue].pushed + 1;
        let slot = &mut self.flows[slot_index];
        let len = payload.len().min(u32::MAX as usize) as u32;
        *slot = FlowVerdict {
            hash,
            packets_left: match fresh_verdict {
                Some(_) => RECHECK_PACKETS,
                None if own => slot.packets_left.saturating_sub(1),
                None => 0,
            },
            bytes_left: match fresh_verdict {
                Some(_) => RECHECK_BYTES,
                None if own => slot.bytes_left.saturating_sub(len),
                None => 0,
            },
            queue,
            pushed_at,
        };
        queue
    }

    /// Writes the next datagram into `buf` and returns its length, or `None` if there is
    /// nothing to send now. Call until `None` after queueing packets and on every timeout.
    ///
    /// `max_datagram_size` is what the transport can carry right now (it may change between
    /// calls); the datagram is at most that and at most `buf.len()` long. Below
    /// [`MIN_DATAGRAM_SIZE`] nothing is sent.
    pub fn poll_datagram(
        &mut self,
        now: Timestamp,
        max_datagram_size: usize,
        buf: &mut [u8],
    ) -> Option<usize> {
        let max = max_datagram_size.min(buf.len());
        if max < MIN_DATAGRAM_SIZE {
            return None;
        }
        let len = if self.out.sent >= self.out.len {
            let queue = self.ready_queue(now)?;
            match self.encode_batch(queue, max, buf) {
                Some(len) => len,
                None => self.write_datagram(max, buf),
            }
        } else {
            self.write_datagram(max, buf)
        };
        let sent = &mut self.block_datagrams[self.out.id.seq as usize % SENT_RING];
        *sent = sent.saturating_add(1);
        self.stats.datagrams_out += 1;
        self.stats.bytes_out += len as u64;
        Some(len)
    }

    /// When [`Encoder::poll_datagram`] will next have something to send because a partial
    /// batch stops waiting; `None` if no batch is waiting for time.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.queues
            .iter()
            .filter(|q| q.pending() > 0)
            .filter_map(|q| q.oldest)
            .min()
            .map(|oldest| oldest + self.config.max_delay)
    }

    /// Lets time pass. The encoder keeps no timers of its own beyond batch deadlines, which
    /// [`Encoder::poll_datagram`] checks against the `now` it is given, so this only exists to
    /// keep the shape of the API uniform; call [`Encoder::poll_datagram`] afterwards.
    pub fn handle_timeout(&mut self, _now: Timestamp) {}

    /// The queue whose batch should go now, if any: full, or past its deadline (the older
    /// first when both are).
    fn ready_queue(&self, now: Timestamp) -> Option<usize> {
        let mut best: Option<(usize, Timestamp)> = None;
        for (i, q) in self.queues.iter().enumerate() {
            let pending = q.pending();
            if pending == 0 {
                continue;
            }
            let oldest = q.oldest.unwrap_or(now);
            let ready = pending >= self.config.max_batch_bytes
                || now.saturating_since(oldest) >= self.config.max_delay;
            if ready && best.is_none_or(|(_, t)| oldest < t) {
                best = Some((i, oldest));
            }
        }
        best.map(|(i, _)| i)
    }

    /// Cuts the next batch off queue `qi` and encodes it into `self.out`, or, for a raw block
    /// that fits a datagram of `max` bytes, straight into `buf` as a data message whose length
    /// it returns: raw blocks (the bypass queue) then cost one copy of their packets, not two.
    fn encode_batch(&mut self, qi: usize, max: usize, buf: &mut [u8]) -> Option<usize> {
        let backlogged =
            self.queues.iter().map(Queue::pending).sum::<usize>() > 2 * self.config.max_batch_bytes;
        // On a lossy link a block is at most what one datagram carries raw (a single bigger
        // packet still goes, alone, in fragments).
        let limit = if self.small_blocks {
            let one_datagram = max.saturating_sub(wire::BLOCK_ID_LEN + wire::MAX_BLOCK_HEADER_LEN);
            self.config.max_batch_bytes.min(one_datagram)
        } else {
            self.config.max_batch_bytes
        };
        let queue = &mut self.queues[qi];
        let pending = &queue.area[queue.start..];
        let mut cut = 0;
        let mut count = 0;
        // Packet bytes past what headers take: a block of pure TCP acks has next to none and
        // is not worth a place in the dedupe ring.
        let mut payload = 0;
        while cut < pending.len() && count < MAX_PACKETS_PER_BLOCK {
            // The queue only holds entries written by push_area_entry.
            let (entry, used) =
                wire::next_area_entry(&pending[cut..]).expect("queue entries valid");
            if count > 0 && cut + used > limit {
                break;
            }
            cut += used;
            count += 1;
            payload += entry.packet.len().saturating_sub(HEADER_ALLOWANCE);
        }
        let area = &pending[..cut];
        let id = BlockId {
            shard: self.shard,
            epoch: self.epoch,
            seq: self.next_seq,
        };
        self.next_seq = self.next_seq.wrapping_add(1);
        self.block_datagrams[id.seq as usize % SENT_RING] = 0;

        let wanted = match (qi, self.config.compression) {
            (BYPASS, _) | (_, Compression::Off) => Codec::Raw,
            (_, Compression::Lz4) => Codec::Lz4,
            (_, Compression::Zstd) => Codec::Zstd,
            (_, Compression::Auto) if backlogged => Codec::Lz4,
            (_, Compression::Auto) => Codec::Zstd,
        };
        let mut header = BlockHeader {
            codec: wanted,
            packet_count: count,
            area_len: area.len(),
            // Set once the codec and the body are final.
            checksum: 0,
            place: None,
            stream_len: None,
        };
        // Dedupe first: the codec then sees the literals and references, or the plain area.
        let mut input = area;
        if let Some(cache) = self.dedupe.as_deref()
            && payload >= dedupe::MIN_AREA
            && cache.wants(area.len())
        {
            let place = cache.reserve(area.len());
            header.place = Some(place);
            // Flows the trial found incompressible are scanned sparsely (see [`Density`]).
            let density = if qi == BYPASS {
                Density::Sparse
            } else {
                Density::Dense
            };
            if cache.encode_after(
                place,
                area,
                &mut self.dedupe_stream,
                &mut self.dedupe_trail,
                density,
            ) == Encoded::Stream
            {
                header.stream_len = Some(self.dedupe_stream.len());
                input = &self.dedupe_stream;
            }
            self.in_flight[id.seq as usize % IN_FLIGHT] = InFlight {
                seq: id.seq,
                place,
                len: area.len() as u32,
                live: true,
            };
        }
        let body_at = header.len();
        let body = &mut self.out.bytes[body_at..];
        let compressed = self.compressor.compress(wanted, input, body);
        if compressed.is_none() {
            header.codec = Codec::Raw;
        }
        let body_len = compressed.unwrap_or(input.len());
        let covered = if header.checksum_covers_area() {
            area
        } else if compressed.is_some() {
            &self.out.bytes[body_at..body_at + body_len]
        } else {
            input
        };
        header.checksum = header.compute_checksum(id, covered);
        let mut direct = None;
        if compressed.is_none() {
            let data_len = wire::BLOCK_ID_LEN + body_at + input.len();
            if data_len <= max {
                let mut n = wire::write_data_header(id, buf);
                n += header.write(&mut buf[n..]);
                buf[n..data_len].copy_from_slice(input);
                direct = Some(data_len);
            } else {
                self.out.bytes[body_at..body_at + input.len()].copy_from_slice(input);
            }
        }
        self.out.id = id;
        if direct.is_some() {
            // Sent whole already: nothing left in `out`.
            self.out.len = 0;
        } else {
            header.write(&mut self.out.bytes);
            self.out.len = body_at + body_len;
        }
        self.out.sent = 0;

        let counters = &mut self.stats.codecs[header.codec.id() as usize];
        counters.blocks += 1;
        counters.area_bytes += input.len() as u64;
        counters.body_bytes += body_len as u64;
        self.stats.blocks += 1;

        queue.start += cut;
        queue.encoded += count as u64;
        if queue.pending() == 0 {
            queue.area.clear();
            queue.start = 0;
            queue.oldest = None;
        } else if queue.start > queue.area.len() / 2 {
            queue.area.copy_within(queue.start.., 0);
            queue.area.truncate(queue.area.len() - queue.start);
            queue.start = 0;
        }
        direct
    }

    /// Writes the next piece of `self.out` as a data or fragment message.
    fn write_datagram(&mut self, max: usize, buf: &mut [u8]) -> usize {
        let out = &mut self.out;
        if out.sent == 0 && wire::BLOCK_ID_LEN + out.len <= max {
            let n = wire::write_data_header(out.id, buf);
            buf[n..n + out.len].copy_from_slice(&out.bytes[..out.len]);
            out.sent = out.len;
            return n + out.len;
        }
        let fragment = Fragment {
            id: out.id,
            block_len: out.len,
            offset: out.sent,
        };
        let n = wire::write_fragment_header(&fragment, buf);
        // max >= MIN_DATAGRAM_SIZE > MAX_FRAGMENT_HEADER_LEN, so every piece carries bytes.
        let take = (max - n).min(out.len - out.sent);
        buf[n..n + take].copy_from_slice(&out.bytes[out.sent..out.sent + take]);
        out.sent += take;
        self.stats.fragments_out += 1;
        n + take
    }

    /// Takes an ack from the peer's decoder for this shard: counts acknowledged and lost
    /// blocks. Acks for another shard or epoch, or for blocks never sent, are ignored.
    pub fn handle_ack(&mut self, _now: Timestamp, ack: Ack) {
        if ack.id.shard != self.shard || ack.id.epoch != self.epoch {
            return;
        }
        let largest = ack.id.seq;
        // Acks for blocks never sent are bogus.
        if largest.wrapping_sub(self.next_seq) as i32 >= 0 {
            return;
        }
        self.stats.acks += 1;
        if let Some(cache) = self.dedupe.as_deref() {
            // Every block this ack shows as received becomes referenceable.
            let in_flight = &mut self.in_flight;
            let mut mark = |seq: u32| {
                let entry = &mut in_flight[seq as usize % IN_FLIGHT];
                if entry.live && entry.seq == seq {
                    entry.live = false;
                    cache.acked(entry.place, entry.len as usize);
                }
            };
            mark(largest);
            let mut bits = ack.received;
            while bits != 0 {
                let i = bits.trailing_zeros();
                mark(largest.wrapping_sub(1 + i));
                bits &= bits - 1;
            }
        }
        // How far the newest acknowledged block is ahead of the oldest uncounted one; an ack
        // older than what was already counted (negative distance) adds nothing.
        let ahead = largest.wrapping_sub(self.unaccounted) as i32;
        if ahead < 0 {
            return;
        }
        if ahead > 64 {
            // Blocks the 64-bit window cannot describe any more: their fate stays unknown.
            self.unaccounted = largest.wrapping_sub(64);
        }
        // Count every block at least ACK_REORDER_SLACK behind the newest: at most 64 a call.
        while largest.wrapping_sub(self.unaccounted) >= ACK_REORDER_SLACK
            && largest.wrapping_sub(self.unaccounted) <= 64
        {
            let behind = largest.wrapping_sub(self.unaccounted);
            let received = ack.received >> (behind - 1) & 1 == 1;
            if received {
                self.stats.blocks_acked += 1;
            } else {
                self.stats.blocks_lost += 1;
            }
            let datagrams = self.block_datagrams[self.unaccounted as usize % SENT_RING];
            self.account_loss(datagrams, received);
            self.unaccounted = self.unaccounted.wrapping_add(1);
        }
    }

    /// Adds one accounted block, sent in `datagrams` datagrams, to the loss estimate and
    /// switches between big and small blocks.
    fn account_loss(&mut self, datagrams: u16, received: bool) {
        // A block never sent (an abandoned one) counts as one datagram.
        self.loss_datagrams += f64::from(datagrams.max(1));
        if !received {
            // Most likely one datagram of it was lost.
            self.loss_blocks += 1.0;
        }
        if self.loss_datagrams >= LOSS_WINDOW {
            self.loss_datagrams /= 2.0;
            self.loss_blocks /= 2.0;
        }
        if self.loss_datagrams < LOSS_MIN_SAMPLE {
            return;
        }
        let rate = self.loss_blocks / self.loss_datagrams;
        if !self.small_blocks && rate >= LOSSY_ENTER {
            self.small_blocks = true;
            self.stats.small_block_switches += 1;
        } else if self.small_blocks && rate < LOSSY_EXIT {
            self.small_blocks = false;
        }
    }

    /// Takes a reset from the peer. A request for this shard starts a new epoch: the block
    /// being sent is abandoned (the peer dropped its state), queued packets go out in the new
    /// epoch, and an announcement waits in [`Encoder::poll_control`].
    pub fn handle_reset(&mut self, _now: Timestamp, reset: Reset) {
        if reset.shard != self.shard || reset.kind != ResetKind::Request {
            return;
        }
        self.epoch = self.epoch.wrapping_add(1);
        self.next_seq = 0;
        self.unaccounted = 0;
        self.out.sent = self.out.len;
        self.announce = true;
        for entry in self.in_flight.iter_mut() {
            entry.live = false;
        }
        self.stats.resets += 1;
    }

    /// Takes a dedupe message from the peer: a request for a new dedupe epoch goes to the
    /// shared context (announcements are for the decoder side and are ignored here).
    pub fn handle_dedupe(&mut self, _now: Timestamp, msg: wire::DedupeReset) {
        if let (Some(cache), ResetKind::Request) = (self.dedupe.as_deref(), msg.kind) {
            cache.handle_request(msg.epoch);
        }
    }

    /// Writes the next control message (an epoch announcement) into `buf`; `None` if there is
    /// none. Control messages must travel on a reliable, ordered path.
    ///
    /// # Panics
    /// If `buf` is shorter than [`wire::RESET_LEN`].
    pub fn poll_control(&mut self, buf: &mut [u8]) -> Option<usize> {
        if let Some(epoch) = self.dedupe.as_deref().and_then(EncoderCache::poll_announce) {
            let msg = wire::DedupeReset {
                epoch,
                kind: ResetKind::Announce,
            }
            .encode();
            buf[..msg.len()].copy_from_slice(&msg);
            return Some(msg.len());
        }
        if !self.announce {
            return None;
        }
        self.announce = false;
        let msg = Reset {
            shard: self.shard,
            epoch: self.epoch,
            kind: ResetKind::Announce,
        }
        .encode();
        buf[..msg.len()].copy_from_slice(&msg);
        Some(msg.len())
    }
}

/// Payloads shorter than this are not judged: too small for a trial to mean anything.
const MIN_TRIAL_PAYLOAD: usize = 64;
