//! The decoder: WAN datagrams in, the exact IP packets out, for one peer's shard.
//!
//! - **Strict.** Every datagram is parsed with [`wire::parse`]; every block is checked against
//!   its checksum and decompressed into a buffer of exactly its announced length, and every packet
//!   in it must be a well-formed IP packet, or the whole block is dropped and counted. Nothing
//!   malformed is ever returned by [`Decoder::poll_packet`].
//! - **In order per shard.** Blocks are released in sequence order, so packets of one flow
//!   (always on one shard) stay in order. A block that arrives early waits in a window of
//!   [`WINDOW`] sequence numbers for at most the reorder window; then the gap before it is
//!   given up, and the missing block, should it still come, is dropped as stale. A loss
//!   therefore costs only the packets of the lost block.
//! - **Adaptive reorder window** (in the spirit of TCP RACK, RFC 8985). The window starts at
//!   [`DecoderConfig::reorder_timeout`], small so a real loss costs little latency. It follows
//!   the reordering the link shows: how long complete blocks waited behind a gap that was then
//!   filled, and how late a block came whose gap had already been given up (a block dropped as
//!   stale is an artificial loss, so the window grows to cover it). It is bounded by
//!   [`DecoderConfig::max_reorder_timeout`] and decays back towards the base by an eighth every
//!   [`REORDER_DECAY_STEP`] when the link stops reordering. A jittery link (20 ms ± 5 ms
//!   reorders datagrams by up to 10 ms) then loses nothing instead of a block per late
//!   datagram.
//! - **Bounded.** At most [`WINDOW`] blocks (and one block far ahead of the window) are held,
//!   each at most [`MAX_BLOCK_LEN`] bytes, and no more than
//!   [`DecoderConfig::max_held_bytes`] in all; restored packets wait in a buffer of fixed size.
//!   Nothing is allocated in proportion to what a datagram claims.
//! - **Epochs.** Data is accepted only for the epoch the peer's encoder announced
//!   ([`Decoder::handle_reset`]). A decoder that has no epoch and keeps receiving data asks
//!   for a new one ([`Decoder::poll_control`]).
//! - **Acks.** The decoder acknowledges restored blocks, cumulatively, every
//!   [`DecoderConfig::ack_every`] blocks or after [`DecoderConfig::ack_delay`].
//! - **Dedupe.** With the peer's [`DecoderCache`] (shared by the shards), a placed block's
//!   references are resolved against the ring, the restored area (which for such a block is
//!   what the checksum covers) is checked against the block checksum, and only then is the
//!   area written to the ring and the block acked: the peer's encoder refers only to acked
//!   blocks, so every reference it makes can be resolved here.

use std::sync::Arc;
use std::time::Duration;

use super::Timestamp;
use super::compress::Decompressor;
use super::dedupe::{DecoderCache, DedupeError};
use super::packet;
use super::stats::DecoderStats;
use super::wire::{
    self, Ack, AreaEntry, BlockId, MAX_AREA_LEN, MAX_BLOCK_LEN, Message, Reset, ResetKind,
    WireError,
};

/// Sequence numbers the reorder window spans. Blocks of one datagram (a lossy link) at 20,000
/// a second (about 200 Mbit/s) and 25 ms of reordering still fit. A complete block beyond the
/// window proves the gaps at its front are losses (they are given up at once), and it waits
/// aside until the window reaches it.
pub const WINDOW: u32 = 512;

/// A slot keeps a block buffer of at most this capacity for reuse (a one-datagram block);
/// bigger ones are freed when the slot empties, so a window of [`WINDOW`] slots does not pin
/// [`WINDOW`] maximal blocks of memory. (Allocating 64 KiB per fragmented block costs far
/// less than decompressing it.)
const SLOT_KEEP_BYTES: usize = 2048;

/// The learned reordering shrinks by an eighth this often (it halves in about 1.3 s), so the
/// window returns to its base a few seconds after a link stops reordering, while any link that
/// keeps reordering refreshes it with every filled gap.
pub const REORDER_DECAY_STEP: Duration = Duration::from_millis(250);

/// Recent give-ups remembered, to tell a late block (its gap was given up) from a duplicate
/// and to measure how late it was.
const GIVEN_UP_RECORDS: usize = 8;

/// Bytes of restored packets the decoder keeps for the caller: two full blocks, so an
/// in-order block can be restored while the previous one is still being drained.
const READY_CAP: usize = 2 * MAX_AREA_LEN;

/// Most fragments one block may arrive in: a maximal block cut into pieces of the smallest
/// datagram the encoder produces, plus slack for one short last piece.
const MAX_FRAGMENTS: usize =
    MAX_BLOCK_LEN / (wire::MIN_DATAGRAM_SIZE - wire::MAX_FRAGMENT_HEADER_LEN) + 2;

/// Settings of one decoder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecoderConfig {
    /// Longest a complete block waits for a missing earlier one while the link shows no
    /// reordering: the base of the adaptive reorder window (see the module doc).
    pub reorder_timeout: Duration,
    /// Upper bound of the adaptive reorder window: the most latency a real loss can cost a
    /// shard's packets behind it on a link that reorders a lot.
    pub max_reorder_timeout: Duration,
    /// Longest the fragments of an incomplete block are kept.
    pub reassembly_timeout: Duration,
    /// Most bytes held in the reorder window and reassembly, all blocks together.
    pub max_held_bytes: usize,
    /// Send an ack after this many restored blocks...
    pub ack_every: u32,
    /// ...or this long after the first unacknowledged one. Before then, data going back to
    /// the peer usually takes the ack along ([`Decoder::poll_ack`]), so it costs no packet of
    /// its own; 25 ms by default, QUIC's default `max_ack_delay`.
    pub ack_delay: Duration,
    /// How long data without a known epoch is tolerated before asking for a reset, and the
    /// least time between two requests.
    pub reset_grace: Duration,
}

impl Default for DecoderConfig {
    fn default() -> Self {
        DecoderConfig {
            reorder_timeout: Duration::from_millis(5),
            max_reorder_timeout: Duration::from_millis(50),
            reassembly_timeout: Duration::from_millis(500),
            max_held_bytes: 2 * 1024 * 1024,
            ack_every: 8,
            ack_delay: Duration::from_millis(25),
            reset_grace: Duration::from_millis(100),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum SlotState {
    #[default]
    Empty,
    Partial,
    Complete,
}

/// One block in the reorder window (or far ahead of it).
#[derive(Debug, Default)]
struct Slot {
    state: SlotState,
    /// The block's sequence number (valid unless empty).
    seq: u32,
    /// The block's bytes; `block_len` long while in use. Its allocation is kept for reuse.
    buf: Vec<u8>,
    /// Length of the block.
    block_len: usize,
    /// Byte ranges received so far (start, end), for overlap checks.
    ranges: Vec<(usize, usize)>,
    /// Bytes received so far.
    received: usize,
    /// When the first piece arrived (partial) or when it became complete (complete).
    since: Timestamp,
}

impl Slot {
    fn clear(&mut self) {
        if self.buf.capacity() > SLOT_KEEP_BYTES {
            self.buf = Vec::new();
        }
        self.state = SlotState::Empty;
        self.ranges.clear();
        self.received = 0;
        self.block_len = 0;
    }

    /// Bytes this slot holds towards the budget.
    fn held(&self) -> usize {
        if self.state == SlotState::Empty {
            0
        } else {
            self.block_len
        }
    }

    /// Starts assembling block `seq` of `block_len` bytes.
    fn start(&mut self, seq: u32, block_len: usize, now: Timestamp) {
        self.state = SlotState::Partial;
        self.seq = seq;
        self.block_len = block_len;
        self.ranges.clear();
        self.received = 0;
        self.since = now;
        if self.buf.len() < block_len {
            self.buf.resize(block_len, 0);
        }
    }

    /// Adds one piece. Returns `Ok(true)` when the block just became complete.
    fn add(
        &mut self,
        block_len: usize,
        offset: usize,
        chunk: &[u8],
        now: Timestamp,
    ) -> Result<bool, Placement> {
        if self.state == SlotState::Complete {
            return Err(Placement::Duplicate);
        }
        if block_len != self.block_len {
            return Err(Placement::Mismatch);
        }
        let end = offset + chunk.len();
        for &(s, e) in &self.ranges {
            if s == offset && e == end {
                return Err(Placement::Duplicate);
            }
            if offset < e && s < end {
                return Err(Placement::Mismatch);
            }
        }
        if self.ranges.len() >= MAX_FRAGMENTS {
            return Err(Placement::Mismatch);
        }
        self.ranges.push((offset, end));
        self.buf[offset..end].copy_from_slice(chunk);
        self.received += chunk.len();
        if self.received == self.block_len {
            self.state = SlotState::Complete;
            self.since = now;
            return Ok(true);
        }
        Ok(false)
    }
}

/// A run of sequence numbers given up at once, remembered to recognise their late blocks.
#[derive(Clone, Copy, Debug, Default)]
struct GivenUp {
    /// First sequence number given up.
    start: u32,
    /// Number of sequence numbers given up from `start`.
    count: u32,
    /// When the oldest complete block behind the gap started waiting: a block of the run that
    /// arrives at `now` would have needed a window of `now - since`.
    since: Timestamp,
}

/// The adaptive reorder window: how long complete blocks wait behind a gap.
#[derive(Debug)]
struct ReorderWindow {
    /// Least window ([`DecoderConfig::reorder_timeout`]).
    base: Duration,
    /// Largest window ([`DecoderConfig::max_reorder_timeout`]).
    max: Duration,
    /// Reordering seen recently (a decaying maximum).
    observed: Duration,
    /// When `observed` last decayed.
    decayed_at: Option<Timestamp>,
    /// Recent give-ups, a ring written at `next_record`.
    given_up: [GivenUp; GIVEN_UP_RECORDS],
    next_record: usize,
}

impl ReorderWindow {
    fn new(config: &DecoderConfig) -> ReorderWindow {
        ReorderWindow {
            base: config.reorder_timeout,
            max: config.max_reorder_timeout.max(config.reorder_timeout),
            observed: Duration::ZERO,
            decayed_at: None,
            given_up: [GivenUp::default(); GIVEN_UP_RECORDS],
            next_record: 0,
        }
    }

    /// The current window: the reordering seen plus a quarter for margin, within bounds.
    fn current(&self) -> Duration {
        (self.observed + self.observed / 4).clamp(self.base, self.max)
    }

    /// Lets `observed` decay by an eighth per [`REORDER_DECAY_STEP`] since the last call.
    fn decay(&mut self, now: Timestamp) {
        let last = *self.decayed_at.get_or_insert(now);
        let steps = now.saturating_since(last).as_nanos() / REORDER_DECAY_STEP.as_nanos();
        if steps == 0 {
            return;
        }
        // 40 steps take any bounded window below a microsecond; more change nothing.
        for _ in 0..steps.min(40) {
            self.observed -= self.observed / 8;
        }
        self.decayed_at = Some(now);
    }

    /// Blocks waited `wait` behind a gap (filled or given up too early).
    fn observe(&mut self, wait: Duration) {
        self.observed = self.observed.max(wait.min(self.max));
    }

    /// Remembers that `count` sequence numbers from `start` were given up while blocks behind
    /// them had waited since `since`.
    fn record_give_up(&mut self, start: u32, count: u32, since: Timestamp) {
        if count == 0 {
            return;
        }
        self.given_up[self.next_record] = GivenUp {
            start,
            count,
            since,
        };
        self.next_record = (self.next_record + 1) % GIVEN_UP_RECORDS;
    }

    /// A piece of block `seq` arrived after its gap was given up, if it was: widens the
    /// window to cover it. Returns whether `seq` had been given up.
    fn late(&mut self, now: Timestamp, seq: u32) -> bool {
        let Some(record) = self
            .given_up
            .iter()
            .find(|r| seq.wrapping_sub(r.start) < r.count)
        else {
            return false;
        };
        let needed = now.saturating_since(record.since);
        self.observe(needed);
        true
    }
}

/// Why gaps are given up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum GiveUp {
    /// Complete blocks waited behind them for the reorder window.
    Timeout,
    /// A block arrived beyond the window.
    Overflow,
}

/// Why a piece could not be placed.
enum Placement {
    /// Already have these bytes.
    Duplicate,
    /// Conflicts with what is held.
    Mismatch,
}

/// Restores IP packets from the datagrams of one peer's encoder (one shard). See the module
/// doc.
pub struct Decoder {
    config: DecoderConfig,
    shard: u8,
    epoch: Option<u16>,
    /// Next sequence number to restore; everything before it was restored or given up.
    next: u32,
    /// The reorder window: slot `seq % WINDOW` holds block `seq` for `next <= seq < next + WINDOW`.
    slots: Vec<Slot>,
    /// One block beyond the window, assembled and verified before the window jumps to it.
    far: Slot,
    /// Bytes held by `slots` and `far`.
    held: usize,
    decompressor: Decompressor,
    /// How long complete blocks wait behind a gap.
    reorder: ReorderWindow,
    /// Restored packet-area entries; `ready[ready_start..ready_end]` waits for the caller.
    ready: Vec<u8>,
    ready_start: usize,
    ready_end: usize,
    /// Scratch area for verifying a block far ahead of the window.
    scratch: Vec<u8>,
    /// The peer's dedupe context, shared with the other shards; `None`: dedupe off.
    dedupe: Option<Arc<DecoderCache>>,
    /// Scratch for one block's decompressed dedupe stream.
    stream: Vec<u8>,
    /// Newest restored sequence number and the bitmap of the 64 before it.
    largest: Option<u32>,
    received: u64,
    /// Restored blocks not yet acknowledged, and when the oldest of them was restored.
    unacked: u32,
    ack_due: Option<Timestamp>,
    /// When data without a known epoch was first seen, and when a reset was last requested.
    orphan_since: Option<Timestamp>,
    last_request: Option<Timestamp>,
    request_pending: bool,
    stats: DecoderStats,
}

impl Decoder {
    /// A decoder for the peer encoder of `shard`. It has no epoch until the peer's
    /// announcement arrives through [`Decoder::handle_reset`].
    ///
    /// # Errors
    /// If the zstd decoding context cannot be created.
    pub fn new(
        config: DecoderConfig,
        shard: u8,
    ) -> Result<Decoder, super::compress::CompressError> {
        let reorder = ReorderWindow::new(&config);
        Ok(Decoder {
            config,
            shard,
            epoch: None,
            next: 0,
            slots: (0..WINDOW).map(|_| Slot::default()).collect(),
            far: Slot::default(),
            held: 0,
            decompressor: Decompressor::new()?,
            reorder,
            ready: vec![0; READY_CAP],
            ready_start: 0,
            ready_end: 0,
            scratch: Vec::new(),
            dedupe: None,
            stream: Vec::new(),
            largest: None,
            received: 0,
            unacked: 0,
            ack_due: None,
            orphan_since: None,
            last_request: None,
            request_pending: false,
            stats: DecoderStats::default(),
        })
    }

    /// Takes part in the peer's dedupe context (shared by every shard receiving from that
    /// peer); `None`: blocks with references are refused.
    pub fn set_dedupe(&mut self, cache: Option<Arc<DecoderCache>>) {
        if cache.is_some() && self.stream.is_empty() {
            self.stream = vec![0; MAX_AREA_LEN];
        }
        self.dedupe = cache;
    }

    /// Takes a dedupe message from the peer: an epoch announcement goes to the shared context
    /// (requests are for the encoder side and are ignored here).
    pub fn handle_dedupe(&mut self, _now: Timestamp, msg: wire::DedupeReset) {
        if let (Some(cache), ResetKind::Announce) = (self.dedupe.as_deref(), msg.kind) {
            cache.handle_announce(msg.epoch);
        }
    }

    /// The shard whose encoder this decoder follows.
    pub fn shard(&self) -> u8 {
        self.shard
    }

    /// The epoch data is accepted for, once announced.
    pub fn epoch(&self) -> Option<u16> {
        self.epoch
    }

    /// Counters so far.
    pub fn stats(&self) -> &DecoderStats {
        &self.stats
    }

    /// Takes one datagram from the peer. Restored packets are then available from
    /// [`Decoder::poll_packet`].
    ///
    /// # Errors
    /// The reason a malformed datagram or block was dropped (also counted). Stale,
    /// duplicate and wrong-epoch datagrams are not errors; they are only counted.
    pub fn handle_datagram(&mut self, now: Timestamp, datagram: &[u8]) -> Result<(), WireError> {
        self.stats.datagrams_in += 1;
        self.stats.bytes_in += datagram.len() as u64;
        let result = self.accept(now, datagram);
        if let Err(e) = result {
            self.stats.malformed[e.index()] += 1;
        }
        result
    }

    fn accept(&mut self, now: Timestamp, datagram: &[u8]) -> Result<(), WireError> {
        let (id, block_len, offset, chunk) = match wire::parse(datagram)? {
            Message::Data { id, block } => (id, block.len(), 0, block),
            Message::Fragment { fragment, chunk } => {
                (fragment.id, fragment.block_len, fragment.offset, chunk)
            }
            _ => return Err(WireError::UnknownType),
        };
        if id.shard != self.shard {
            self.stats.wrong_epoch += 1;
            return Ok(());
        }
        match self.epoch {
            Some(epoch) if epoch == id.epoch => {}
            Some(_) => {
                self.stats.wrong_epoch += 1;
                return Ok(());
            }
            None => {
                self.stats.wrong_epoch += 1;
                self.orphan(now);
                return Ok(());
            }
        }
        self.reorder.decay(now);
        let ahead = id.seq.wrapping_sub(self.next);
        if ahead as i32 <= -1 {
            self.stats.stale += 1;
            if self.reorder.late(now, id.seq) {
                self.stats.late += 1;
            }
            return Ok(());
        }
        let whole = chunk.len() == block_len;
        if ahead >= WINDOW {
            return self.accept_far(now, id, block_len, offset, chunk);
        }
        // Fast path: the next block, whole, and room to restore it straight from the datagram.
        if ahead == 0
            && whole
            && self.slots[self.slot_index(id.seq)].state == SlotState::Empty
            && self.ready_room() >= MAX_AREA_LEN
        {
            self.observe_fill(now, 0);
            self.restore_into_ready(now, id, chunk)?;
            self.next = self.next.wrapping_add(1);
            self.admit_far();
            return Ok(());
        }
        let index = self.slot_index(id.seq);
        let slot = &mut self.slots[index];
        if slot.state == SlotState::Empty {
            if self.held + block_len > self.config.max_held_bytes {
                self.stats.backlog += 1;
                return Ok(());
            }
            slot.start(id.seq, block_len, now);
            self.held += block_len;
        }
        match slot.add(block_len, offset, chunk, now) {
            Ok(true) if ahead == 0 => {
                self.observe_fill(now, block_len);
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(Placement::Duplicate) => {
                self.stats.stale += 1;
                Ok(())
            }
            Err(Placement::Mismatch) => Err(WireError::FragmentMismatch),
        }
    }

    /// The block at `next` just became complete: if complete blocks were waiting behind it,
    /// the link reordered by as long as the oldest of them waited. `own`: the bytes the block
    /// at `next` holds itself (0 when it is restored straight from its datagram).
    fn observe_fill(&mut self, now: Timestamp, own: usize) {
        if self.held <= own {
            // Nothing else is held, so nothing waited: skip the scan of the window.
            return;
        }
        if let Some(since) = self.oldest_waiting() {
            self.reorder.observe(now.saturating_since(since));
        }
    }

    /// When the oldest complete block in the window (other than one at `next`) became
    /// complete.
    fn oldest_waiting(&self) -> Option<Timestamp> {
        self.slots
            .iter()
            .filter(|s| s.state == SlotState::Complete && s.seq != self.next)
            .map(|s| s.since)
            .min()
    }

    /// A piece of a block at least [`WINDOW`] ahead: assemble it aside; once complete and
    /// verified, give up everything before it and move the window there. An unverified
    /// datagram (a corrupted sequence number, say) therefore never moves the window.
    fn accept_far(
        &mut self,
        now: Timestamp,
        id: BlockId,
        block_len: usize,
        offset: usize,
        chunk: &[u8],
    ) -> Result<(), WireError> {
        if self.far.state != SlotState::Empty && self.far.seq != id.seq {
            // A newer far block replaces an older incomplete one; an older one, or any while a
            // complete one waits for the window to reach it, is dropped.
            if (id.seq.wrapping_sub(self.far.seq) as i32) < 0
                || self.far.state == SlotState::Complete
            {
                self.stats.stale += 1;
                return Ok(());
            }
            self.held -= self.far.held();
            self.far.clear();
        }
        if self.far.state == SlotState::Empty {
            if self.held + block_len > self.config.max_held_bytes {
                self.stats.backlog += 1;
                return Ok(());
            }
            self.far.start(id.seq, block_len, now);
            self.held += block_len;
        }
        match self.far.add(block_len, offset, chunk, now) {
            Ok(true) => {}
            Ok(false) => return Ok(()),
            Err(Placement::Duplicate) => {
                self.stats.stale += 1;
                return Ok(());
            }
            Err(Placement::Mismatch) => return Err(WireError::FragmentMismatch),
        }
        // Verify by restoring into scratch; only a block that checks out moves the window.
        self.scratch.resize(MAX_AREA_LEN, 0);
        let mut scratch = std::mem::take(&mut self.scratch);
        let mut context = Restore {
            decompressor: &mut self.decompressor,
            dedupe: self.dedupe.as_deref(),
            stream: &mut self.stream,
            // Only verified here; it is stored when restored for delivery.
            store: false,
        };
        let verdict = context.restore(id, &self.far.buf[..block_len], &mut scratch);
        self.scratch = scratch;
        if let Err(e) = verdict {
            self.held -= self.far.held();
            self.far.clear();
            return Err(e);
        }
        if self.slots.iter().any(|s| s.state == SlotState::Complete) {
            // A whole window of later blocks arrived while the front gaps waited: they are not
            // reordered, they are lost. Give them up now so the complete blocks behind them can
            // go; the far block waits until the window reaches it ([`Decoder::admit_far`]).
            self.give_up_front(now, GiveUp::Overflow);
            return Ok(());
        }
        self.jump_to_far();
        Ok(())
    }

    /// Nothing complete in the window and a complete far block: everything before the far
    /// block is missing, give it up and move the window there.
    fn jump_to_far(&mut self) {
        let seq = self.far.seq;
        let skipped = seq.wrapping_sub(self.next);
        for slot in &mut self.slots {
            self.held -= slot.held();
            slot.clear();
        }
        self.stats.gaps += u64::from(skipped);
        self.next = seq;
        let index = self.slot_index(seq);
        std::mem::swap(&mut self.slots[index], &mut self.far);
    }

    fn slot_index(&self, seq: u32) -> usize {
        (seq % WINDOW) as usize
    }

    /// Free bytes at the end of `ready` after compacting it.
    fn ready_room(&mut self) -> usize {
        if self.ready_start == self.ready_end {
            self.ready_start = 0;
            self.ready_end = 0;
        } else if READY_CAP - self.ready_end < MAX_AREA_LEN && self.ready_start > 0 {
            self.ready.copy_within(self.ready_start..self.ready_end, 0);
            self.ready_end -= self.ready_start;
            self.ready_start = 0;
        }
        READY_CAP - self.ready_end
    }

    /// Restores one block into the free end of `ready` and records it as received.
    fn restore_into_ready(
        &mut self,
        now: Timestamp,
        id: BlockId,
        block: &[u8],
    ) -> Result<(), WireError> {
        let out = &mut self.ready[self.ready_end..];
        let mut context = Restore {
            decompressor: &mut self.decompressor,
            dedupe: self.dedupe.as_deref(),
            stream: &mut self.stream,
            store: true,
        };
        let restored = context.restore(id, block, out)?;
        self.ready_end += restored.area_len;
        let counters = &mut self.stats.codecs[restored.codec.id() as usize];
        counters.blocks += 1;
        counters.area_bytes += restored.area_len as u64;
        counters.body_bytes += restored.body_len as u64;
        self.stats.blocks += 1;
        self.record_received(now, id.seq);
        Ok(())
    }

    /// Notes a restored block for the next ack.
    fn record_received(&mut self, now: Timestamp, seq: u32) {
        match self.largest {
            None => {
                self.largest = Some(seq);
                self.received = 0;
            }
            Some(largest) => {
                let ahead = seq.wrapping_sub(largest) as i32;
                if ahead > 0 {
                    let ahead = ahead as u32;
                    self.received = if ahead > 64 {
                        0
                    } else {
                        // Shift in the old largest as received.
                        (self.received.checked_shl(ahead).unwrap_or(0)) | (1u64 << (ahead - 1))
                    };
                    self.largest = Some(seq);
                } else if (-64..0).contains(&ahead) {
                    self.received |= 1u64 << ((-ahead) as u32 - 1);
                }
            }
        }
        self.unacked += 1;
        self.ack_due.get_or_insert(now + self.config.ack_delay);
    }

    /// Data arrived for a shard whose epoch is unknown: after the grace period, ask for one.
    fn orphan(&mut self, now: Timestamp) {
        let since = *self.orphan_since.get_or_insert(now);
        let grace = self.config.reset_grace;
        let waited = now.saturating_since(since) >= grace;
        let spaced = self
            .last_request
            .is_none_or(|last| now.saturating_since(last) >= grace);
        if waited && spaced && !self.request_pending {
            self.request_pending = true;
            self.last_request = Some(now);
        }
    }

    /// Copies the next restored packet into `buf` and returns its length; `None` when no
    /// packet is ready. `buf` should hold 65535 bytes: a packet that does not fit is dropped
    /// and counted.
    pub fn poll_packet(&mut self, buf: &mut [u8]) -> Option<usize> {
        loop {
            let packet = self.next_packet()?.packet;
            if let Some(dst) = buf.get_mut(..packet.len()) {
                dst.copy_from_slice(packet);
                return Some(packet.len());
            }
            self.stats.short_buffer += 1;
        }
    }

    /// The next restored packet and its metadata, borrowed from the decoder (no copy);
    /// `None` when none is ready.
    pub fn next_packet(&mut self) -> Option<AreaEntry<'_>> {
        while self.ready_start >= self.ready_end {
            if !self.release_next() {
                return None;
            }
        }
        // Entries in `ready` were validated when their block was restored.
        let start = self.ready_start;
        let (entry, used) = wire::next_area_entry(&self.ready[start..self.ready_end]).ok()?;
        self.ready_start += used;
        self.stats.packets_out += 1;
        self.stats.bytes_out += entry.packet.len() as u64;
        Some(entry)
    }

    /// Restores the block at `next` if it is complete. Returns false if there is none.
    fn release_next(&mut self) -> bool {
        loop {
            let index = self.slot_index(self.next);
            if self.slots[index].state != SlotState::Complete || self.slots[index].seq != self.next
            {
                // A complete far block waits and nothing in the window can go before it.
                if self.far.state == SlotState::Complete
                    && !self.slots.iter().any(|s| s.state == SlotState::Complete)
                {
                    self.jump_to_far();
                    continue;
                }
                return false;
            }
            self.ready_room();
            let mut slot = std::mem::take(&mut self.slots[index]);
            let id = BlockId {
                shard: self.shard,
                epoch: self.epoch.unwrap_or_default(),
                seq: slot.seq,
            };
            let now = slot.since;
            let result = self.restore_into_ready(now, id, &slot.buf[..slot.block_len]);
            self.held -= slot.held();
            slot.clear();
            self.slots[index] = slot;
            self.next = self.next.wrapping_add(1);
            self.admit_far();
            match result {
                Ok(()) => return true,
                Err(e) => self.stats.malformed[e.index()] += 1,
            }
        }
    }

    /// When [`Decoder::handle_timeout`] should next run: a waiting block's reorder deadline,
    /// an incomplete block's reassembly deadline, or an ack that is due.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        let mut deadline = self.ack_due;
        let mut consider = |t: Timestamp| {
            deadline = Some(deadline.map_or(t, |d| d.min(t)));
        };
        if let Some(t) = self.reorder_deadline() {
            consider(t);
        }
        // Nothing held: no partial block either.
        let held = if self.held == 0 {
            &[][..]
        } else {
            &self.slots[..]
        };
        for slot in held.iter().chain(std::iter::once(&self.far)) {
            if slot.state == SlotState::Partial {
                consider(slot.since + self.config.reassembly_timeout);
            }
        }
        deadline
    }

    /// When the oldest complete block waiting behind a gap stops waiting.
    fn reorder_deadline(&self) -> Option<Timestamp> {
        if self.held == 0 {
            return None;
        }
        let head = &self.slots[self.slot_index(self.next)];
        if head.state == SlotState::Complete && head.seq == self.next {
            return None;
        }
        self.slots
            .iter()
            .filter(|s| s.state == SlotState::Complete)
            .map(|s| s.since + self.reorder.current())
            .min()
    }

    /// Lets time pass: gives up gaps that held complete blocks back for the reorder window,
    /// and incomplete blocks older than `reassembly_timeout`.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        self.reorder.decay(now);
        for slot in self.slots.iter_mut().chain(std::iter::once(&mut self.far)) {
            if slot.state == SlotState::Partial
                && now.saturating_since(slot.since) >= self.config.reassembly_timeout
            {
                self.held -= slot.held();
                slot.clear();
                self.stats.reassembly_timeouts += 1;
            }
        }
        while self.reorder_deadline().is_some_and(|d| d <= now) {
            self.give_up_front(now, GiveUp::Timeout);
        }
    }

    /// Gives up the gaps at the front of the window, up to the first complete block (the
    /// window must hold one). After a timeout they are remembered, so a block of theirs that
    /// still comes widens the reorder window; after an overflow they are not (a wider window
    /// would only overflow more).
    fn give_up_front(&mut self, now: Timestamp, why: GiveUp) {
        let since = self.oldest_waiting().unwrap_or(now);
        let start = self.next;
        // Skip to the first complete block; the window holds one, so this ends.
        for _ in 0..WINDOW {
            let index = self.slot_index(self.next);
            let slot = &mut self.slots[index];
            if slot.state == SlotState::Complete && slot.seq == self.next {
                break;
            }
            self.held -= slot.held();
            slot.clear();
            self.stats.gaps += 1;
            self.next = self.next.wrapping_add(1);
        }
        if why == GiveUp::Timeout {
            self.reorder
                .record_give_up(start, self.next.wrapping_sub(start), since);
        }
        self.admit_far();
    }

    /// Moves a complete, verified far block into the window once the window reaches it.
    fn admit_far(&mut self) {
        if self.far.state != SlotState::Complete {
            return;
        }
        let ahead = self.far.seq.wrapping_sub(self.next);
        if ahead as i32 <= -1 {
            // The window moved past it (its sequence number was given up): too late.
            self.held -= self.far.held();
            self.far.clear();
            self.stats.stale += 1;
            return;
        }
        if ahead >= WINDOW {
            return;
        }
        let index = self.slot_index(self.far.seq);
        // The slot is empty or holds the same block again, reassembled in the window.
        let slot = &mut self.slots[index];
        self.held -= slot.held();
        slot.clear();
        std::mem::swap(&mut self.slots[index], &mut self.far);
    }

    /// The current reorder window: how long a complete block waits behind a gap.
    pub fn reorder_window(&self) -> Duration {
        self.reorder.current()
    }

    /// Takes a reset from the peer's encoder. An announcement for this shard adopts its epoch:
    /// blocks held for the old one are dropped (restored packets already waiting are kept:
    /// they were verified).
    pub fn handle_reset(&mut self, _now: Timestamp, reset: Reset) {
        if reset.shard != self.shard || reset.kind != ResetKind::Announce {
            return;
        }
        if self.epoch == Some(reset.epoch) {
            return;
        }
        self.epoch = Some(reset.epoch);
        self.next = 0;
        for slot in self.slots.iter_mut().chain(std::iter::once(&mut self.far)) {
            slot.clear();
        }
        self.held = 0;
        // The learned window describes the link and stays; give-ups of the old epoch go.
        self.reorder.given_up = [GivenUp::default(); GIVEN_UP_RECORDS];
        self.largest = None;
        self.received = 0;
        self.unacked = 0;
        self.ack_due = None;
        self.orphan_since = None;
        self.request_pending = false;
        self.stats.epochs += 1;
    }

    /// Writes the next control message for the peer's encoder (a reset request or an ack)
    /// into `buf` and returns its length; `None` if nothing is due at `now`. Control messages
    /// must travel on a reliable, ordered path.
    ///
    /// # Panics
    /// If `buf` is shorter than [`wire::ACK_LEN`].
    pub fn poll_control(&mut self, now: Timestamp, buf: &mut [u8]) -> Option<usize> {
        if let Some(epoch) = self.dedupe.as_deref().and_then(DecoderCache::poll_request) {
            let msg = wire::DedupeReset {
                epoch,
                kind: ResetKind::Request,
            }
            .encode();
            buf[..msg.len()].copy_from_slice(&msg);
            return Some(msg.len());
        }
        if self.request_pending {
            self.request_pending = false;
            self.stats.reset_requests += 1;
            let msg = Reset {
                shard: self.shard,
                epoch: self.epoch.unwrap_or(0),
                kind: ResetKind::Request,
            }
            .encode();
            buf[..msg.len()].copy_from_slice(&msg);
            return Some(msg.len());
        }
        let due = self.unacked >= self.config.ack_every.max(1)
            || (self.unacked > 0 && self.ack_due.is_some_and(|t| t <= now));
        if !due {
            return None;
        }
        self.take_ack(buf)
    }

    /// Writes an ack for every restored block not yet acknowledged into `buf`, whatever
    /// [`DecoderConfig::ack_every`] and [`DecoderConfig::ack_delay`] would wait for, and returns
    /// its length; `None` when every restored block was already acknowledged. For the IO layer
    /// to send beside data going to the same peer, where the ack rides in a packet that goes
    /// anyway instead of costing one of its own (and the peer's ack of that one).
    ///
    /// Unlike [`Decoder::poll_control`]'s messages, this ack may travel unreliably: acks are
    /// cumulative, and the 64-bit bitmap of the next one covers a lost one.
    ///
    /// # Panics
    /// If `buf` is shorter than [`wire::ACK_LEN`].
    pub fn poll_ack(&mut self, buf: &mut [u8]) -> Option<usize> {
        if self.unacked == 0 {
            return None;
        }
        self.take_ack(buf)
    }

    /// Writes the ack of everything restored so far and clears what was waiting for one.
    fn take_ack(&mut self, buf: &mut [u8]) -> Option<usize> {
        let epoch = self.epoch?;
        let largest = self.largest?;
        self.unacked = 0;
        self.ack_due = None;
        self.stats.acks_sent += 1;
        let msg = Ack {
            id: BlockId {
                shard: self.shard,
                epoch,
                seq: largest,
            },
            received: self.received,
        }
        .encode();
        buf[..msg.len()].copy_from_slice(&msg);
        Some(msg.len())
    }
}

/// What [`restore`] found in a good block.
struct Restored {
    codec: super::compress::Codec,
    area_len: usize,
    body_len: usize,
}

/// What restoring a block needs besides the block.
struct Restore<'a> {
    decompressor: &'a mut Decompressor,
    dedupe: Option<&'a DecoderCache>,
    /// Scratch for a dedupe stream ([`MAX_AREA_LEN`] bytes once dedupe is on).
    stream: &'a mut [u8],
    /// Write a placed block's area to the dedupe ring once it checks out.
    store: bool,
}

impl Restore<'_> {
    /// Decompresses `block` (and expands its dedupe references) into the front of `out` and
    /// checks it completely: exact length, checksum, entry framing and that every entry is an
    /// IP packet. A placed block that checks out is then written to the dedupe ring.
    fn restore(
        &mut self,
        id: BlockId,
        block: &[u8],
        out: &mut [u8],
    ) -> Result<Restored, WireError> {
        let (header, body) = wire::parse_block(block)?;
        let area = out
            .get_mut(..header.area_len)
            .ok_or(WireError::BadAreaLength)?;
        let place = header.place.filter(|_| self.dedupe.is_some());
        if let (Some(place), Some(cache)) = (place, self.dedupe)
            && !cache.valid_place(place, header.area_len)
        {
            return Err(WireError::BadDedupe);
        }
        match (header.place, header.stream_len) {
            (Some(place), Some(stream_len)) => {
                let Some(cache) = self.dedupe else {
                    return Err(WireError::BadReference);
                };
                let stream = self
                    .stream
                    .get_mut(..stream_len)
                    .ok_or(WireError::BadDedupe)?;
                self.decompressor
                    .decompress(header.codec, body, stream)
                    .map_err(|_| WireError::Decompress)?;
                cache.expand(place, stream, area).map_err(|e| match e {
                    DedupeError::Malformed => WireError::BadDedupe,
                    DedupeError::BadReference => WireError::BadReference,
                })?;
                if header.compute_checksum(id, area) != header.checksum {
                    // The rings disagree: never deliver, and start over with a new epoch.
                    cache.checksum_failed(place.epoch);
                    return Err(WireError::Checksum);
                }
            }
            _ => {
                // Checked before it is decompressed: damaged input costs no codec work.
                if header.compute_checksum(id, body) != header.checksum {
                    return Err(WireError::Checksum);
                }
                self.decompressor
                    .decompress(header.codec, body, area)
                    .map_err(|_| WireError::Decompress)?;
            }
        }
        let mut at = 0;
        let mut count = 0;
        while at < area.len() {
            let (entry, used) = wire::next_area_entry(&area[at..])?;
            packet::inspect(entry.packet).map_err(|_| WireError::BadPacket)?;
            at += used;
            count += 1;
        }
        if count != header.packet_count {
            return Err(WireError::BadPacketArea);
        }
        if self.store
            && let (Some(place), Some(cache)) = (place, self.dedupe)
        {
            cache.store(place, area);
        }
        Ok(Restored {
            codec: header.codec,
            area_len: header.area_len,
            body_len: body.len(),
        })
    }
}
