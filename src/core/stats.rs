//! Counters kept by the encoder and decoder.
//!
//! Plain integers, bumped on the hot path without synchronisation; the IO layer copies them
//! out (they are `Copy`) to report them. Counters only grow, except when a whole endpoint is
//! replaced.

use super::compress::Codec;
use super::packet::PacketError;
use super::wire::WireError;

/// Work done by one codec.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CodecCounters {
    /// Blocks encoded (or decoded) with this codec.
    pub blocks: u64,
    /// Packet-area bytes before compression (after decompression).
    pub area_bytes: u64,
    /// Body bytes on the wire.
    pub body_bytes: u64,
}

/// What an [`Encoder`](super::Encoder) has done.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EncoderStats {
    /// IP packets accepted from the LAN side.
    pub packets_in: u64,
    /// Bytes of those packets.
    pub bytes_in: u64,
    /// Packets sent without a compression attempt because their flow looks incompressible.
    pub packets_bypassed: u64,
    /// Bytes of those packets.
    pub bytes_bypassed: u64,
    /// Incompressibility trials run (per flow, not per packet).
    pub trials: u64,
    /// Blocks (batches) encoded.
    pub blocks: u64,
    /// Datagrams produced (whole blocks and fragments).
    pub datagrams_out: u64,
    /// Of those, fragments.
    pub fragments_out: u64,
    /// Bytes of all datagrams produced, headers included.
    pub bytes_out: u64,
    /// Per codec, indexed by [`Codec::id`].
    pub codecs: [CodecCounters; Codec::ALL.len()],
    /// Packets refused because they are not well-formed IP, per [`PacketError::index`].
    pub malformed: [u64; PacketError::ALL.len()],
    /// Packets refused because they are longer than the wire carries.
    pub too_large: u64,
    /// Packets refused because the queue was full.
    pub queue_full: u64,
    /// Acks received for the current epoch.
    pub acks: u64,
    /// Blocks the peer acknowledged.
    pub blocks_acked: u64,
    /// Blocks the peer's acks show as never received.
    pub blocks_lost: u64,
    /// Times the loss estimate switched the encoder to blocks of one datagram.
    pub small_block_switches: u64,
    /// Epochs started after the first (on the peer's request).
    pub resets: u64,
}

impl EncoderStats {
    /// Counters of one codec.
    pub fn codec(&self, codec: Codec) -> &CodecCounters {
        &self.codecs[codec.id() as usize]
    }

    /// All malformed packets, every reason together.
    pub fn malformed_total(&self) -> u64 {
        self.malformed.iter().sum()
    }
}

/// What a [`Decoder`](super::Decoder) has done.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DecoderStats {
    /// Datagrams handed in.
    pub datagrams_in: u64,
    /// Bytes of those datagrams.
    pub bytes_in: u64,
    /// Blocks restored and checked.
    pub blocks: u64,
    /// IP packets restored.
    pub packets_out: u64,
    /// Bytes of those packets.
    pub bytes_out: u64,
    /// Per codec, indexed by [`Codec::id`].
    pub codecs: [CodecCounters; Codec::ALL.len()],
    /// Malformed input, per [`WireError::index`].
    pub malformed: [u64; WireError::ALL.len()],
    /// Datagrams for blocks already delivered or given up (duplicates and late arrivals).
    pub stale: u64,
    /// Of those, datagrams of blocks whose gap had already been given up: reordering longer
    /// than the reorder window at the time (each one widens it).
    pub late: u64,
    /// Datagrams of an epoch other than the current one.
    pub wrong_epoch: u64,
    /// Blocks given up because the caller did not drain restored packets.
    pub backlog: u64,
    /// Partial blocks whose missing fragments never came.
    pub reassembly_timeouts: u64,
    /// Sequence numbers skipped because their block never arrived complete.
    pub gaps: u64,
    /// Acks produced.
    pub acks_sent: u64,
    /// Epochs adopted from the peer's announcements.
    pub epochs: u64,
    /// Reset requests produced.
    pub reset_requests: u64,
    /// Packets dropped because the caller's buffer was too small for them.
    pub short_buffer: u64,
}

impl DecoderStats {
    /// Counters of one codec.
    pub fn codec(&self, codec: Codec) -> &CodecCounters {
        &self.codecs[codec.id() as usize]
    }

    /// All malformed input, every reason together.
    pub fn malformed_total(&self) -> u64 {
        self.malformed.iter().sum()
    }
}
