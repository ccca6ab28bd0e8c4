//! Wire format v1: the bytes sluice puts in each WAN datagram and control message.
//!
//! Every message starts with the same two bytes:
//!
//! | offset | size | field   | meaning                                                  |
//! |-------:|-----:|---------|----------------------------------------------------------|
//! | 0      | 1    | version | [`VERSION`] (1). Anything else is [`WireError::UnknownVersion`]. |
//! | 1      | 1    | type    | [`MessageType`]: 1 data, 2 fragment, 3 ack, 4 reset, 5 hello, 6 dedupe. |
//!
//! Multi-byte integers are big-endian. `varint` is a QUIC variable-length integer
//! ([`crate::core::varint`]): sluice writes at most four bytes for one.
//!
//! # Block identity (data, fragment, ack and reset messages)
//!
//! | offset | size | field | meaning |
//! |-------:|-----:|-------|---------|
//! | 2      | 1    | shard | the sending encoder's shard (one encoder per peer and shard) |
//! | 3      | 2    | epoch | the encoder's epoch; a restart or reset starts a new one |
//! | 5      | 4    | seq   | batch sequence number, per shard and epoch, from 0, +1 per block (wraps) |
//!
//! # 1: data — one whole block in one datagram
//!
//! `version, type=1, shard, epoch, seq` (9 bytes), then the [block](#block) to the end of the
//! datagram.
//!
//! # 2: fragment — one piece of a block too big for one datagram
//!
//! `version, type=2, shard, epoch, seq` (9 bytes), then:
//!
//! | size   | field     | meaning |
//! |-------:|-----------|---------|
//! | varint | block_len | length of the whole block, 1..=[`MAX_BLOCK_LEN`] |
//! | varint | offset    | where this piece starts inside the block |
//! | rest   | chunk     | at least one byte; `offset + chunk.len() <= block_len` |
//!
//! Pieces are cut to whatever datagram size the transport allows at the moment of sending (the
//! QUIC path MTU can change mid-block), so they are placed by byte offset, not by index. The
//! receiver reassembles them with a bounded buffer and a timeout.
//!
//! # Block
//!
//! | size   | field        | meaning |
//! |-------:|--------------|---------|
//! | 1      | codec        | low nibble: [`Codec`] id (0 raw, 1 lz4, 2 zstd); high nibble: flags [`FLAG_PLACED`] (0x10), [`FLAG_REFS`] (0x20); other flags are errors |
//! | varint | packet_count | packets in the block, 1..=[`MAX_PACKETS_PER_BLOCK`] |
//! | varint | raw_len      | length of the packet area once restored, 1..=[`MAX_AREA_LEN`] |
//! | 4      | checksum     | low 32 bits of xxh3-64 of the body (with `REFS`: of the restored packet area), seeded with the block identity and the other header fields |
//! | 2      | dedupe_epoch | only with `PLACED`: the dedupe epoch of the block's place |
//! | varint | chunk        | only with `PLACED`: its position in the dedupe ring, in 128-byte chunks |
//! | varint | stream_len   | only with `REFS` (which needs `PLACED`): length of the dedupe stream once decompressed, 1..=[`MAX_AREA_LEN`] |
//! | rest   | body         | compressed with `codec` (raw: as is): the packet area, or with `REFS` the dedupe stream of literals and references that restores it (see [`crate::core::dedupe`]) |
//!
//! A `PLACED` block's area is written to the receiver's dedupe ring at its place once it is
//! restored and verified; later blocks may refer to it once the receiver has acked it.
//!
//! The **packet area** is `packet_count` entries, and must be consumed exactly. One entry:
//!
//! | size   | field    | meaning |
//! |-------:|----------|---------|
//! | 1      | meta_len | 0..=[`MAX_META_LEN`]: bytes of per-packet metadata that follow (high bits 0) |
//! | meta_len | meta   | opaque to the core; the IO layer keeps TUN offload (GSO) details here so the far side writes a super-packet back |
//! | varint | length   | 1..=65535 |
//! | length | packet   | one IP packet |
//!
//! The checksum covers, through its seed, the shard, epoch and sequence number and every other
//! header field, and the bytes that can go wrong: the body as sent, which decompresses
//! deterministically, or, for a block with dedupe references, the restored area, which also
//! depends on the receiver's ring. A corrupted or misassembled block, or one restored from a
//! ring that disagrees with the sender's, is detected and never delivered (the tunnel
//! normally authenticates datagrams too). The body is checked before it is decompressed; it
//! is usually several times smaller than the area, so the check costs less.
//!
//! # 3: ack — what a decoder has received (decoder → encoder)
//!
//! `version, type=3, shard, epoch, largest` (9 bytes; `largest` is the highest sequence number
//! received complete in that epoch), then `received`: 8 bytes, bit `i` set when block
//! `largest - 1 - i` was received complete. 17 bytes in all. Acks are cumulative: a lost ack
//! costs nothing once a later one arrives. An ack goes on the control path, or, to a peer that
//! announced [`Capabilities::ACK_DATAGRAMS`], as a datagram beside data going the same way;
//! `shard` (byte 2, where a data message has its shard) is the shard of the encoder it is for.
//!
//! # 4: reset — start a new epoch
//!
//! `version, type=4, shard, epoch` (5 bytes), then `kind` (1 byte): 0 = announce (encoder →
//! decoder: "from now on I send `epoch`, from sequence 0; drop what you hold of older ones"),
//! 1 = request (decoder → encoder: "I have no usable state for your shard; start a new epoch";
//! `epoch` is the one the decoder last knew). 6 bytes in all.
//!
//! # 5: hello — what a peer can do (first message on the control path)
//!
//! | offset | size | field        | meaning |
//! |-------:|-----:|--------------|---------|
//! | 2      | 4    | capabilities | bit set, [`Capabilities`]; unknown bits are ignored |
//! | 6      | 1    | shards       | how many encoders (shards) the sender runs, 1..=255 |
//! | 7      | 8    | instance     | random per process start: a new value means the peer restarted |
//! | 15     | 4    | dedupe_cache | the sender's dedupe cache in KiB (0: off); both ends use the smaller |
//!
//! # 6: dedupe — a dedupe epoch change (control path, per peer and direction)
//!
//! `version, type=6, epoch` (2 bytes), then `kind` (1 byte): 0 = announce (encoder → decoder:
//! "my references are of `epoch` from now on"), 1 = request (decoder → encoder: "I cannot
//! follow `epoch`; start a new one"). 5 bytes in all.
//!
//! # Bounds
//!
//! Parsing never allocates, never loops over more than the input and never panics; every
//! length is checked before it is used. The largest block is [`MAX_BLOCK_LEN`] bytes, so a
//! receiver never buffers more than that per block in reassembly.

use super::compress::Codec;
use super::varint;

/// The only wire version this build speaks.
pub const VERSION: u8 = 1;

/// Bytes in the common header of data, fragment, ack and reset messages (version, type, shard,
/// epoch, seq; reset has no seq but the same prefix).
pub const BLOCK_ID_LEN: usize = 9;

/// Largest IP packet sluice carries (the IPv4/IPv6 length fields' limit, and the size of a TUN
/// GSO super-packet).
pub const MAX_PACKET_LEN: usize = 65_535;

/// Largest packet area (decompressed batch). One maximum packet with its length prefix fits;
/// batches of smaller packets are cut well before this by the encoder's batch limit.
pub const MAX_AREA_LEN: usize = 66 * 1024;

/// Most packets in one block: a full area of the smallest IP packets (20 bytes + 2 bytes of
/// entry framing) stays under it.
pub const MAX_PACKETS_PER_BLOCK: usize = 4096;

/// Longest block header: codec byte, two 4-byte varints, checksum, dedupe epoch, an 8-byte
/// chunk varint and a 4-byte stream length.
pub const MAX_BLOCK_HEADER_LEN: usize = 1 + 4 + 4 + 4 + 2 + 8 + 4;

/// Codec-byte flag: the block has a place in the dedupe ring (epoch and chunk follow).
pub const FLAG_PLACED: u8 = 0x10;

/// Codec-byte flag: the body is a dedupe stream (its length follows the place).
pub const FLAG_REFS: u8 = 0x20;

/// Bytes per unit of the `chunk` field ([`crate::core::dedupe::ring::CHUNK`]).
const PLACE_UNIT: u64 = 128;

/// Largest block on the wire. Compression never expands a block (it goes raw instead), so the
/// body is at most [`MAX_AREA_LEN`].
pub const MAX_BLOCK_LEN: usize = MAX_BLOCK_HEADER_LEN + MAX_AREA_LEN;

/// Longest fragment header: block identity plus two 4-byte varints.
pub const MAX_FRAGMENT_HEADER_LEN: usize = BLOCK_ID_LEN + 4 + 4;

/// Smallest datagram size the encoder works with. Below it a maximal block would need more
/// than about 300 fragments; QUIC never offers less than 1200 bytes anyway.
pub const MIN_DATAGRAM_SIZE: usize = 256;

/// Length of an encoded ack message.
pub const ACK_LEN: usize = 17;

/// Length of an encoded reset message.
pub const RESET_LEN: usize = 6;

/// Length of an encoded hello message.
pub const HELLO_LEN: usize = 19;

/// Length of an encoded dedupe message.
pub const DEDUPE_LEN: usize = 5;

/// Message type, the second byte of every message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum MessageType {
    /// A whole block.
    Data = 1,
    /// A piece of a block.
    Fragment = 2,
    /// Cumulative receive state of one decoder.
    Ack = 3,
    /// Epoch announcement or request.
    Reset = 4,
    /// Capabilities and shard count.
    Hello = 5,
    /// Dedupe epoch announcement or request.
    Dedupe = 6,
}

impl MessageType {
    /// The type for a wire byte.
    pub const fn from_byte(b: u8) -> Option<MessageType> {
        match b {
            1 => Some(MessageType::Data),
            2 => Some(MessageType::Fragment),
            3 => Some(MessageType::Ack),
            4 => Some(MessageType::Reset),
            5 => Some(MessageType::Hello),
            6 => Some(MessageType::Dedupe),
            _ => None,
        }
    }
}

/// Why bytes from the wire were rejected. Each reason is counted separately by the decoder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireError {
    /// The message was empty.
    Empty,
    /// The version byte is not [`VERSION`].
    UnknownVersion,
    /// The type byte names no message.
    UnknownType,
    /// The message ended before a field it needs.
    Truncated,
    /// A fixed-size message had bytes after its last field.
    TrailingBytes,
    /// A block or fragment length is zero or above [`MAX_BLOCK_LEN`].
    BadBlockLength,
    /// A fragment's chunk is empty or reaches past its block's length.
    BadFragment,
    /// A fragment disagrees with the pieces already held for its block (another length, or an
    /// overlapping range).
    FragmentMismatch,
    /// The codec id is unknown or a v1-reserved flag is set.
    UnknownCodec,
    /// The packet count is zero or above [`MAX_PACKETS_PER_BLOCK`].
    BadPacketCount,
    /// The packet area length is zero or above [`MAX_AREA_LEN`].
    BadAreaLength,
    /// The body did not decompress to exactly the announced length.
    Decompress,
    /// The restored packet area does not match the block's checksum.
    Checksum,
    /// The packet area's entries do not add up (bad length prefix, count or leftover bytes).
    BadPacketArea,
    /// A restored packet is not a well-formed IPv4/IPv6 packet.
    BadPacket,
    /// The reset kind byte is unknown.
    BadResetKind,
    /// A hello announces zero shards.
    BadShardCount,
    /// A block's dedupe place or stream is malformed (misaligned or wrapping place, broken
    /// stream framing, `REFS` without `PLACED`).
    BadDedupe,
    /// A dedupe reference names bytes the receiver does not hold for its epoch (out of range,
    /// unacknowledged, overwritten, another epoch, or dedupe is off).
    BadReference,
}

impl WireError {
    /// Every reason, in [`WireError::index`] order.
    pub const ALL: [WireError; 19] = [
        WireError::Empty,
        WireError::UnknownVersion,
        WireError::UnknownType,
        WireError::Truncated,
        WireError::TrailingBytes,
        WireError::BadBlockLength,
        WireError::BadFragment,
        WireError::FragmentMismatch,
        WireError::UnknownCodec,
        WireError::BadPacketCount,
        WireError::BadAreaLength,
        WireError::Decompress,
        WireError::Checksum,
        WireError::BadPacketArea,
        WireError::BadPacket,
        WireError::BadResetKind,
        WireError::BadShardCount,
        WireError::BadDedupe,
        WireError::BadReference,
    ];

    /// Position in [`WireError::ALL`], for per-reason counters.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// Short name for logs and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            WireError::Empty => "empty",
            WireError::UnknownVersion => "unknown_version",
            WireError::UnknownType => "unknown_type",
            WireError::Truncated => "truncated",
            WireError::TrailingBytes => "trailing_bytes",
            WireError::BadBlockLength => "bad_block_length",
            WireError::BadFragment => "bad_fragment",
            WireError::FragmentMismatch => "fragment_mismatch",
            WireError::UnknownCodec => "unknown_codec",
            WireError::BadPacketCount => "bad_packet_count",
            WireError::BadAreaLength => "bad_area_length",
            WireError::Decompress => "decompress",
            WireError::Checksum => "checksum",
            WireError::BadPacketArea => "bad_packet_area",
            WireError::BadPacket => "bad_packet",
            WireError::BadResetKind => "bad_reset_kind",
            WireError::BadShardCount => "bad_shard_count",
            WireError::BadDedupe => "bad_dedupe",
            WireError::BadReference => "bad_reference",
        }
    }
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::error::Error for WireError {}

impl From<varint::VarintError> for WireError {
    fn from(_: varint::VarintError) -> Self {
        WireError::Truncated
    }
}

/// Which encoder stream and which batch in it a message is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BlockId {
    /// The sending encoder's shard.
    pub shard: u8,
    /// The encoder's epoch.
    pub epoch: u16,
    /// Batch sequence number within the epoch.
    pub seq: u32,
}

impl BlockId {
    fn read(msg: &[u8]) -> Result<BlockId, WireError> {
        let b = msg.get(..BLOCK_ID_LEN).ok_or(WireError::Truncated)?;
        Ok(BlockId {
            shard: b[2],
            epoch: u16::from_be_bytes([b[3], b[4]]),
            seq: u32::from_be_bytes([b[5], b[6], b[7], b[8]]),
        })
    }

    fn write(self, kind: MessageType, out: &mut [u8]) {
        out[0] = VERSION;
        out[1] = kind as u8;
        out[2] = self.shard;
        out[3..5].copy_from_slice(&self.epoch.to_be_bytes());
        out[5..9].copy_from_slice(&self.seq.to_be_bytes());
    }

    /// Seed of the block checksum: binds the restored bytes to this identity.
    fn checksum_seed(self) -> u64 {
        (u64::from(self.shard) << 48) | (u64::from(self.epoch) << 32) | u64::from(self.seq)
    }
}

/// Placement of one fragment inside its block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fragment {
    /// The block this piece belongs to.
    pub id: BlockId,
    /// Length of the whole block.
    pub block_len: usize,
    /// Where this piece starts in the block.
    pub offset: usize,
}

/// A decoder's cumulative receive state for one encoder stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ack {
    /// The encoder stream; `seq` is the highest sequence number received complete.
    pub id: BlockId,
    /// Bit `i` set: block `id.seq - 1 - i` was received complete.
    pub received: u64,
}

/// What a reset message asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetKind {
    /// Encoder → decoder: this epoch starts now, from sequence number 0.
    Announce,
    /// Decoder → encoder: please start a new epoch.
    Request,
}

/// An epoch change for one encoder stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reset {
    /// The encoder's shard.
    pub shard: u8,
    /// Announce: the new epoch. Request: the epoch the decoder last knew (0 if none).
    pub epoch: u16,
    /// Announce or request.
    pub kind: ResetKind,
}

/// Feature bits a peer announces in its hello.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Capabilities(pub u32);

impl Capabilities {
    /// Can decode lz4 blocks.
    pub const LZ4: Capabilities = Capabilities(1 << 0);
    /// Can decode zstd blocks.
    pub const ZSTD: Capabilities = Capabilities(1 << 1);
    /// Takes acks as datagrams too, not only on the control path (so a peer may send them
    /// beside its data).
    pub const ACK_DATAGRAMS: Capabilities = Capabilities(1 << 2);

    /// What a peer must announce to be accepted: it can decode every codec this build sends.
    pub const fn required() -> Capabilities {
        Capabilities(Self::LZ4.0 | Self::ZSTD.0)
    }

    /// What this build announces: everything it can do.
    pub const fn supported() -> Capabilities {
        Capabilities(Self::required().0 | Self::ACK_DATAGRAMS.0)
    }

    /// True if every bit of `other` is set here.
    pub const fn contains(self, other: Capabilities) -> bool {
        self.0 & other.0 == other.0
    }
}

/// The first message a peer sends on the control path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    /// What the sender can decode.
    pub capabilities: Capabilities,
    /// How many encoders the sender runs (1..=255).
    pub shards: u8,
    /// Chosen at random when the sending process starts; a peer that sees a new value knows
    /// the other side restarted (and drops what it held of the old one).
    pub instance: u64,
    /// The sender's dedupe cache in KiB (0: dedupe off).
    pub dedupe_cache_kib: u32,
}

/// A dedupe epoch change for one direction of a peer link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DedupeReset {
    /// Announce: the new epoch. Request: the epoch the decoder cannot follow.
    pub epoch: u16,
    /// Announce or request.
    pub kind: ResetKind,
}

/// One parsed message. Data and fragment messages borrow their payload from the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Message<'a> {
    /// A whole block.
    Data {
        /// Which block.
        id: BlockId,
        /// The encoded block (header and body), still unchecked.
        block: &'a [u8],
    },
    /// A piece of a block.
    Fragment {
        /// Which block and where this piece goes.
        fragment: Fragment,
        /// The bytes of this piece.
        chunk: &'a [u8],
    },
    /// Receive state.
    Ack(Ack),
    /// Epoch change.
    Reset(Reset),
    /// Capabilities.
    Hello(Hello),
    /// Dedupe epoch change.
    Dedupe(DedupeReset),
}

/// Parses one message.
///
/// Checks the version, type and every length; the block inside a data message is checked
/// later by [`parse_block`].
///
/// # Errors
/// The first problem found, as a [`WireError`].
pub fn parse(msg: &[u8]) -> Result<Message<'_>, WireError> {
    let version = *msg.first().ok_or(WireError::Empty)?;
    if version != VERSION {
        return Err(WireError::UnknownVersion);
    }
    let kind = msg.get(1).ok_or(WireError::Truncated)?;
    let kind = MessageType::from_byte(*kind).ok_or(WireError::UnknownType)?;
    match kind {
        MessageType::Data => {
            let id = BlockId::read(msg)?;
            let block = &msg[BLOCK_ID_LEN..];
            if block.is_empty() || block.len() > MAX_BLOCK_LEN {
                return Err(WireError::BadBlockLength);
            }
            Ok(Message::Data { id, block })
        }
        MessageType::Fragment => {
            let id = BlockId::read(msg)?;
            let rest = &msg[BLOCK_ID_LEN..];
            let (block_len, n1) = varint::read(rest)?;
            let (offset, n2) = varint::read(&rest[n1..])?;
            let chunk = &rest[n1 + n2..];
            if block_len == 0 || block_len > MAX_BLOCK_LEN as u64 {
                return Err(WireError::BadBlockLength);
            }
            // block_len is bounded, so the sum cannot overflow.
            if chunk.is_empty() || offset > block_len || offset + chunk.len() as u64 > block_len {
                return Err(WireError::BadFragment);
            }
            Ok(Message::Fragment {
                fragment: Fragment {
                    id,
                    block_len: block_len as usize,
                    offset: offset as usize,
                },
                chunk,
            })
        }
        MessageType::Ack => {
            let id = BlockId::read(msg)?;
            let fixed = exact::<ACK_LEN>(msg)?;
            let received = u64::from_be_bytes(fixed[9..17].try_into().expect("8 bytes"));
            Ok(Message::Ack(Ack { id, received }))
        }
        MessageType::Reset => {
            let b = exact::<RESET_LEN>(msg)?;
            let kind = match b[5] {
                0 => ResetKind::Announce,
                1 => ResetKind::Request,
                _ => return Err(WireError::BadResetKind),
            };
            Ok(Message::Reset(Reset {
                shard: b[2],
                epoch: u16::from_be_bytes([b[3], b[4]]),
                kind,
            }))
        }
        MessageType::Hello => {
            let b = exact::<HELLO_LEN>(msg)?;
            let capabilities = Capabilities(u32::from_be_bytes([b[2], b[3], b[4], b[5]]));
            let shards = b[6];
            if shards == 0 {
                return Err(WireError::BadShardCount);
            }
            let instance = u64::from_be_bytes(b[7..15].try_into().expect("8 bytes"));
            let dedupe_cache_kib = u32::from_be_bytes(b[15..19].try_into().expect("4 bytes"));
            Ok(Message::Hello(Hello {
                capabilities,
                shards,
                instance,
                dedupe_cache_kib,
            }))
        }
        MessageType::Dedupe => {
            let b = exact::<DEDUPE_LEN>(msg)?;
            let kind = match b[4] {
                0 => ResetKind::Announce,
                1 => ResetKind::Request,
                _ => return Err(WireError::BadResetKind),
            };
            Ok(Message::Dedupe(DedupeReset {
                epoch: u16::from_be_bytes([b[2], b[3]]),
                kind,
            }))
        }
    }
}

/// The first `N` bytes of `msg`, which must be exactly `N` long.
fn exact<const N: usize>(msg: &[u8]) -> Result<&[u8; N], WireError> {
    match msg.len().cmp(&N) {
        std::cmp::Ordering::Less => Err(WireError::Truncated),
        std::cmp::Ordering::Greater => Err(WireError::TrailingBytes),
        std::cmp::Ordering::Equal => Ok(msg.try_into().expect("length checked")),
    }
}

/// Writes a data message header for `id` into `out[..BLOCK_ID_LEN]`; the block follows.
///
/// # Panics
/// If `out` is shorter than [`BLOCK_ID_LEN`].
pub fn write_data_header(id: BlockId, out: &mut [u8]) -> usize {
    id.write(MessageType::Data, out);
    BLOCK_ID_LEN
}

/// Length of the header [`write_fragment_header`] writes for `fragment`.
pub fn fragment_header_len(fragment: &Fragment) -> usize {
    BLOCK_ID_LEN + varint::len(fragment.block_len as u64) + varint::len(fragment.offset as u64)
}

/// Writes a fragment message header into the front of `out`; the chunk follows.
///
/// # Panics
/// If `out` is shorter than [`fragment_header_len`].
pub fn write_fragment_header(fragment: &Fragment, out: &mut [u8]) -> usize {
    fragment.id.write(MessageType::Fragment, out);
    let mut n = BLOCK_ID_LEN;
    n += varint::write(&mut out[n..], fragment.block_len as u64);
    n += varint::write(&mut out[n..], fragment.offset as u64);
    n
}

impl Ack {
    /// Encodes this ack.
    pub fn encode(&self) -> [u8; ACK_LEN] {
        let mut out = [0u8; ACK_LEN];
        self.id.write(MessageType::Ack, &mut out);
        out[9..17].copy_from_slice(&self.received.to_be_bytes());
        out
    }
}

impl Reset {
    /// Encodes this reset.
    pub fn encode(&self) -> [u8; RESET_LEN] {
        let kind = match self.kind {
            ResetKind::Announce => 0,
            ResetKind::Request => 1,
        };
        let e = self.epoch.to_be_bytes();
        [
            VERSION,
            MessageType::Reset as u8,
            self.shard,
            e[0],
            e[1],
            kind,
        ]
    }
}

impl Hello {
    /// Encodes this hello.
    pub fn encode(&self) -> [u8; HELLO_LEN] {
        let mut out = [0u8; HELLO_LEN];
        out[0] = VERSION;
        out[1] = MessageType::Hello as u8;
        out[2..6].copy_from_slice(&self.capabilities.0.to_be_bytes());
        out[6] = self.shards;
        out[7..15].copy_from_slice(&self.instance.to_be_bytes());
        out[15..19].copy_from_slice(&self.dedupe_cache_kib.to_be_bytes());
        out
    }
}

impl DedupeReset {
    /// Encodes this message.
    pub fn encode(&self) -> [u8; DEDUPE_LEN] {
        let e = self.epoch.to_be_bytes();
        let kind = match self.kind {
            ResetKind::Announce => 0,
            ResetKind::Request => 1,
        };
        [VERSION, MessageType::Dedupe as u8, e[0], e[1], kind]
    }
}

/// The fixed fields at the front of a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockHeader {
    /// How the body is encoded.
    pub codec: Codec,
    /// Packets in the area.
    pub packet_count: usize,
    /// Length of the packet area once decoded.
    pub area_len: usize,
    /// See [`BlockHeader::compute_checksum`].
    pub checksum: u32,
    /// The block's place in the dedupe ring (`PLACED`).
    pub place: Option<Place>,
    /// Length of the dedupe stream the body decompresses to (`REFS`); `None`: the body is the
    /// packet area itself.
    pub stream_len: Option<usize>,
}

/// Where a block goes in the receiver's dedupe ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Place {
    /// Dedupe epoch.
    pub epoch: u16,
    /// Absolute position in bytes, a multiple of 128.
    pub pos: u64,
}

impl BlockHeader {
    /// Bytes this header takes on the wire.
    pub fn len(&self) -> usize {
        let mut n =
            1 + varint::len(self.packet_count as u64) + varint::len(self.area_len as u64) + 4;
        if let Some(place) = self.place {
            n += 2 + varint::len(place.pos / PLACE_UNIT);
        }
        if let Some(stream_len) = self.stream_len {
            n += varint::len(stream_len as u64);
        }
        n
    }

    /// Length of the body once decompressed: the stream with references, else the area.
    pub fn body_len(&self) -> usize {
        self.stream_len.unwrap_or(self.area_len)
    }

    /// Never true: a header is at least seven bytes. Present because `len` is.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether the checksum covers the restored packet area (a block with dedupe references,
    /// whose area depends on the receiver's ring) rather than the body as sent.
    pub fn checksum_covers_area(&self) -> bool {
        self.stream_len.is_some()
    }

    /// The checksum of block `id` with this header (its own `checksum` field aside) over
    /// `covered`: the restored area if [`BlockHeader::checksum_covers_area`], else the body.
    ///
    /// The seed binds the block identity and every other header field, so a damaged header
    /// (another codec, length or place) fails the check like a damaged body.
    pub fn compute_checksum(&self, id: BlockId, covered: &[u8]) -> u32 {
        let mut fields = [0u8; 32];
        fields[..8].copy_from_slice(&id.checksum_seed().to_le_bytes());
        fields[8] = self.codec_byte();
        fields[9..13].copy_from_slice(&(self.packet_count as u32).to_le_bytes());
        fields[13..17].copy_from_slice(&(self.area_len as u32).to_le_bytes());
        if let Some(place) = self.place {
            fields[17..19].copy_from_slice(&place.epoch.to_le_bytes());
            fields[19..25].copy_from_slice(&place.pos.to_le_bytes()[..6]);
        }
        let stream_len = self.stream_len.unwrap_or(0) as u32;
        fields[25..29].copy_from_slice(&stream_len.to_le_bytes());
        let seed = twox_hash::XxHash3_64::oneshot(&fields);
        twox_hash::XxHash3_64::oneshot_with_seed(seed, covered) as u32
    }

    /// The first byte: codec id and flags.
    fn codec_byte(&self) -> u8 {
        let mut flags = 0;
        if self.place.is_some() {
            flags |= FLAG_PLACED;
        }
        if self.stream_len.is_some() {
            flags |= FLAG_REFS;
        }
        self.codec.id() | flags
    }

    /// Writes the header into the front of `out` and returns its length.
    ///
    /// # Panics
    /// If `out` is shorter than [`BlockHeader::len`] or a field exceeds its bound (internal
    /// invariants of the encoder).
    pub fn write(&self, out: &mut [u8]) -> usize {
        debug_assert!((1..=MAX_PACKETS_PER_BLOCK).contains(&self.packet_count));
        debug_assert!((1..=MAX_AREA_LEN).contains(&self.area_len));
        debug_assert!(self.stream_len.is_none() || self.place.is_some());
        out[0] = self.codec_byte();
        let mut n = 1;
        n += varint::write(&mut out[n..], self.packet_count as u64);
        n += varint::write(&mut out[n..], self.area_len as u64);
        out[n..n + 4].copy_from_slice(&self.checksum.to_be_bytes());
        n += 4;
        if let Some(place) = self.place {
            debug_assert!(place.pos % PLACE_UNIT == 0);
            out[n..n + 2].copy_from_slice(&place.epoch.to_be_bytes());
            n += 2;
            n += varint::write(&mut out[n..], place.pos / PLACE_UNIT);
        }
        if let Some(stream_len) = self.stream_len {
            n += varint::write(&mut out[n..], stream_len as u64);
        }
        n
    }
}

/// Splits a block into its header and body, checking every header field's bounds.
///
/// # Errors
/// [`WireError::Truncated`], [`WireError::UnknownCodec`], [`WireError::BadPacketCount`] or
/// [`WireError::BadAreaLength`]. A raw body whose length differs from the area length is
/// [`WireError::BadAreaLength`].
pub fn parse_block(block: &[u8]) -> Result<(BlockHeader, &[u8]), WireError> {
    let codec_byte = *block.first().ok_or(WireError::Truncated)?;
    let flags = codec_byte & 0xf0;
    if flags & !(FLAG_PLACED | FLAG_REFS) != 0 {
        return Err(WireError::UnknownCodec);
    }
    if flags & FLAG_REFS != 0 && flags & FLAG_PLACED == 0 {
        return Err(WireError::BadDedupe);
    }
    let codec = Codec::from_id(codec_byte & 0x0f).ok_or(WireError::UnknownCodec)?;
    let mut n = 1;
    let (packet_count, used) = varint::read(&block[n..])?;
    n += used;
    let (area_len, used) = varint::read(&block[n..])?;
    n += used;
    let checksum = block.get(n..n + 4).ok_or(WireError::Truncated)?;
    let checksum = u32::from_be_bytes(checksum.try_into().expect("4 bytes"));
    n += 4;
    if packet_count == 0 || packet_count > MAX_PACKETS_PER_BLOCK as u64 {
        return Err(WireError::BadPacketCount);
    }
    if area_len == 0 || area_len > MAX_AREA_LEN as u64 {
        return Err(WireError::BadAreaLength);
    }
    let mut place = None;
    if flags & FLAG_PLACED != 0 {
        let epoch = block.get(n..n + 2).ok_or(WireError::Truncated)?;
        let epoch = u16::from_be_bytes([epoch[0], epoch[1]]);
        n += 2;
        let (chunk, used) = varint::read(&block[n..])?;
        n += used;
        // Positions stay below 2^48 (the encoder renews its epoch long before).
        if chunk >= 1 << 41 {
            return Err(WireError::BadDedupe);
        }
        place = Some(Place {
            epoch,
            pos: chunk * PLACE_UNIT,
        });
    }
    let mut stream_len = None;
    if flags & FLAG_REFS != 0 {
        let (len, used) = varint::read(&block[n..])?;
        n += used;
        if len == 0 || len > MAX_AREA_LEN as u64 {
            return Err(WireError::BadDedupe);
        }
        stream_len = Some(len as usize);
    }
    let header = BlockHeader {
        codec,
        packet_count: packet_count as usize,
        area_len: area_len as usize,
        checksum,
        place,
        stream_len,
    };
    let body = &block[n..];
    if codec == Codec::Raw && body.len() != header.body_len() {
        return Err(WireError::BadAreaLength);
    }
    Ok((header, body))
}

/// Most bytes of per-packet metadata an entry can carry.
pub const MAX_META_LEN: usize = 15;

/// Appends one packet entry (metadata, length prefix and bytes) to a packet area.
///
/// # Panics
/// If `packet` is empty or longer than [`MAX_PACKET_LEN`], or `meta` is longer than
/// [`MAX_META_LEN`] (callers check first).
pub fn push_area_entry(area: &mut Vec<u8>, packet: &[u8], meta: &[u8]) {
    assert!(!packet.is_empty() && packet.len() <= MAX_PACKET_LEN && meta.len() <= MAX_META_LEN);
    area.push(meta.len() as u8);
    area.extend_from_slice(meta);
    varint::push(area, packet.len() as u64);
    area.extend_from_slice(packet);
}

/// Bytes [`push_area_entry`] adds for a packet of `len` bytes with `meta_len` bytes of
/// metadata.
pub const fn area_entry_len(len: usize, meta_len: usize) -> usize {
    1 + meta_len + varint::len(len as u64) + len
}

/// One entry of a packet area.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AreaEntry<'a> {
    /// The IP packet.
    pub packet: &'a [u8],
    /// Its metadata (empty for plain packets).
    pub meta: &'a [u8],
}

/// Reads the next entry of a packet area: the entry and the bytes it used.
///
/// # Errors
/// [`WireError::BadPacketArea`] if the metadata length is above [`MAX_META_LEN`], the length
/// prefix is truncated, zero or above [`MAX_PACKET_LEN`], or anything reaches past the area.
#[inline]
pub fn next_area_entry(area: &[u8]) -> Result<(AreaEntry<'_>, usize), WireError> {
    let meta_len = usize::from(*area.first().ok_or(WireError::BadPacketArea)?);
    if meta_len > MAX_META_LEN {
        return Err(WireError::BadPacketArea);
    }
    let meta = area.get(1..1 + meta_len).ok_or(WireError::BadPacketArea)?;
    let at = 1 + meta_len;
    let (len, n) = varint::read(&area[at..]).map_err(|_| WireError::BadPacketArea)?;
    if len == 0 || len > MAX_PACKET_LEN as u64 {
        return Err(WireError::BadPacketArea);
    }
    let start = at + n;
    let end = start + len as usize;
    let packet = area.get(start..end).ok_or(WireError::BadPacketArea)?;
    Ok((AreaEntry { packet, meta }, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: BlockId = BlockId {
        shard: 3,
        epoch: 0x0102,
        seq: 0x0a0b_0c0d,
    };

    #[test]
    fn golden_data() {
        let mut msg = vec![0u8; BLOCK_ID_LEN];
        write_data_header(ID, &mut msg);
        let header = BlockHeader {
            codec: Codec::Raw,
            packet_count: 1,
            area_len: 24,
            checksum: 0xdead_beef,
            place: None,
            stream_len: None,
        };
        let mut hdr = [0u8; MAX_BLOCK_HEADER_LEN];
        let n = header.write(&mut hdr);
        msg.extend_from_slice(&hdr[..n]);
        let mut area = Vec::new();
        push_area_entry(&mut area, &[0x45; 20], &[0x01, 0x02]);
        msg.extend_from_slice(&area);
        #[rustfmt::skip]
        let golden: &[u8] = &[
            0x01, 0x01,             // version 1, data
            0x03,                   // shard 3
            0x01, 0x02,             // epoch 0x0102
            0x0a, 0x0b, 0x0c, 0x0d, // seq
            0x00,                   // codec raw, no flags
            0x01,                   // one packet
            0x18,                   // area 24 bytes
            0xde, 0xad, 0xbe, 0xef, // checksum
            0x02, 0x01, 0x02,       // entry: two bytes of metadata
            0x14,                   // entry: 20 bytes of packet
            0x45, 0x45, 0x45, 0x45, 0x45, 0x45, 0x45, 0x45, 0x45, 0x45,
            0x45, 0x45, 0x45, 0x45, 0x45, 0x45, 0x45, 0x45, 0x45, 0x45,
        ];
        assert_eq!(msg, golden);
        let Ok(Message::Data { id, block }) = parse(golden) else {
            panic!("golden data message must parse");
        };
        assert_eq!(id, ID);
        let (parsed, body) = parse_block(block).expect("valid block");
        assert_eq!(parsed, header);
        assert_eq!(body, &area[..]);
        let (entry, used) = next_area_entry(body).expect("one entry");
        assert_eq!(entry.packet, &[0x45u8; 20][..]);
        assert_eq!(entry.meta, &[0x01, 0x02][..]);
        assert_eq!(used, 24);
    }

    #[test]
    fn golden_placed_blocks() {
        // A placed block with a plain area, then one whose body is a dedupe stream.
        let placed = BlockHeader {
            codec: Codec::Lz4,
            packet_count: 2,
            area_len: 3000,
            checksum: 0x0102_0304,
            place: Some(Place {
                epoch: 0x0007,
                pos: 128 * 300,
            }),
            stream_len: None,
        };
        let mut hdr = [0u8; MAX_BLOCK_HEADER_LEN];
        let n = placed.write(&mut hdr);
        assert_eq!(n, placed.len());
        #[rustfmt::skip]
        let golden: &[u8] = &[
            0x11,                   // lz4, PLACED
            0x02,                   // two packets
            0x4b, 0xb8,             // area 3000 bytes
            0x01, 0x02, 0x03, 0x04, // checksum
            0x00, 0x07,             // dedupe epoch 7
            0x41, 0x2c,             // chunk 300 (position 38400)
        ];
        assert_eq!(&hdr[..n], golden);
        let mut block = golden.to_vec();
        block.extend_from_slice(&[0xee; 5]);
        assert_eq!(parse_block(&block), Ok((placed, &[0xee; 5][..])));

        let refs = BlockHeader {
            codec: Codec::Raw,
            stream_len: Some(5),
            ..placed
        };
        let n = refs.write(&mut hdr);
        #[rustfmt::skip]
        let golden: &[u8] = &[
            0x30,                   // raw, PLACED | REFS
            0x02, 0x4b, 0xb8, 0x01, 0x02, 0x03, 0x04, 0x00, 0x07, 0x41, 0x2c,
            0x05,                   // stream of 5 bytes
        ];
        assert_eq!(&hdr[..n], golden);
        let mut block = golden.to_vec();
        block.extend_from_slice(&[0xee; 5]);
        assert_eq!(parse_block(&block), Ok((refs, &[0xee; 5][..])));
        // A raw stream must be exactly stream_len long; REFS needs PLACED; unknown flags.
        block.push(0);
        assert_eq!(parse_block(&block), Err(WireError::BadAreaLength));
        assert_eq!(
            parse_block(&[0x20, 1, 1, 0, 0, 0, 0, 1, 0]),
            Err(WireError::BadDedupe)
        );
        assert_eq!(
            parse_block(&[0x40, 1, 1, 0, 0, 0, 0, 0]),
            Err(WireError::UnknownCodec)
        );
        // A position at or past 2^48 is refused.
        let far = [
            0x10, 1, 1, 0, 0, 0, 0, 0, 0, 0xc0, 0, 0x02, 0, 0, 0, 0, 0, 0,
        ];
        assert_eq!(parse_block(&far), Err(WireError::BadDedupe));
    }

    #[test]
    fn golden_dedupe() {
        let announce = DedupeReset {
            epoch: 0x0203,
            kind: ResetKind::Announce,
        };
        assert_eq!(announce.encode(), [0x01, 0x06, 0x02, 0x03, 0x00]);
        assert_eq!(parse(&announce.encode()), Ok(Message::Dedupe(announce)));
        let request = DedupeReset {
            kind: ResetKind::Request,
            ..announce
        };
        assert_eq!(request.encode(), [0x01, 0x06, 0x02, 0x03, 0x01]);
        assert_eq!(parse(&request.encode()), Ok(Message::Dedupe(request)));
        assert_eq!(
            parse(&[0x01, 0x06, 0x02, 0x03, 0x02]),
            Err(WireError::BadResetKind)
        );
        assert_eq!(parse(&[0x01, 0x06, 0x02, 0x03]), Err(WireError::Truncated));
    }

    #[test]
    fn golden_fragment() {
        let fragment = Fragment {
            id: ID,
            block_len: 3000,
            offset: 1400,
        };
        let mut msg = vec![0u8; fragment_header_len(&fragment)];
        let n = write_fragment_header(&fragment, &mut msg);
        assert_eq!(n, msg.len());
        msg.extend_from_slice(&[0xaa, 0xbb]);
        #[rustfmt::skip]
        let golden: &[u8] = &[
            0x01, 0x02,             // version 1, fragment
            0x03, 0x01, 0x02, 0x0a, 0x0b, 0x0c, 0x0d,
            0x4b, 0xb8,             // block_len 3000
            0x45, 0x78,             // offset 1400
            0xaa, 0xbb,             // chunk
        ];
        assert_eq!(msg, golden);
        assert_eq!(
            parse(golden),
            Ok(Message::Fragment {
                fragment,
                chunk: &[0xaa, 0xbb]
            })
        );
    }

    #[test]
    fn golden_ack() {
        let ack = Ack {
            id: ID,
            received: 0x8000_0000_0000_0001,
        };
        #[rustfmt::skip]
        let golden: [u8; ACK_LEN] = [
            0x01, 0x03, 0x03, 0x01, 0x02, 0x0a, 0x0b, 0x0c, 0x0d,
            0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01,
        ];
        assert_eq!(ack.encode(), golden);
        assert_eq!(parse(&golden), Ok(Message::Ack(ack)));
    }

    #[test]
    fn golden_reset() {
        let announce = Reset {
            shard: 7,
            epoch: 0xbeef,
            kind: ResetKind::Announce,
        };
        assert_eq!(announce.encode(), [0x01, 0x04, 0x07, 0xbe, 0xef, 0x00]);
        assert_eq!(parse(&announce.encode()), Ok(Message::Reset(announce)));
        let request = Reset {
            kind: ResetKind::Request,
            ..announce
        };
        assert_eq!(request.encode(), [0x01, 0x04, 0x07, 0xbe, 0xef, 0x01]);
        assert_eq!(parse(&request.encode()), Ok(Message::Reset(request)));
    }

    #[test]
    fn golden_hello() {
        let hello = Hello {
            capabilities: Capabilities::supported(),
            shards: 2,
            instance: 0x0102_0304_0506_0708,
            dedupe_cache_kib: 65536,
        };
        #[rustfmt::skip]
        let golden = [
            0x01, 0x05,             // version 1, hello
            0x00, 0x00, 0x00, 0x07, // lz4 + zstd + acks as datagrams
            0x02,                   // two shards
            0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, // instance
            0x00, 0x01, 0x00, 0x00, // dedupe cache 64 MiB
        ];
        assert_eq!(hello.encode(), golden);
        assert_eq!(parse(&hello.encode()), Ok(Message::Hello(hello)));
    }

    #[test]
    fn malformed_messages_name_their_fault() {
        let cases: &[(&[u8], WireError)] = &[
            (&[], WireError::Empty),
            (&[2, 1], WireError::UnknownVersion),
            (&[1], WireError::Truncated),
            (&[1, 0], WireError::UnknownType),
            (&[1, 9], WireError::UnknownType),
            (&[1, 1, 0, 0, 0, 0, 0, 0], WireError::Truncated),
            (&[1, 1, 0, 0, 0, 0, 0, 0, 0], WireError::BadBlockLength),
            (&[1, 2, 0, 0, 0, 0, 0, 0, 0], WireError::Truncated),
            (&[1, 2, 0, 0, 0, 0, 0, 0, 0, 5], WireError::Truncated),
            // block_len 0
            (
                &[1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                WireError::BadBlockLength,
            ),
            // chunk reaching past block_len 2
            (
                &[1, 2, 0, 0, 0, 0, 0, 0, 0, 2, 1, 1, 1],
                WireError::BadFragment,
            ),
            // empty chunk
            (&[1, 2, 0, 0, 0, 0, 0, 0, 0, 2, 1], WireError::BadFragment),
            // block_len above the bound (4-byte varint 0x0001_2000)
            (
                &[1, 2, 0, 0, 0, 0, 0, 0, 0, 0x80, 0x01, 0x20, 0x00, 0, 1],
                WireError::BadBlockLength,
            ),
            (&[1, 3, 0, 0, 0, 0, 0, 0, 0, 0], WireError::Truncated),
            (&[1, 4, 0, 0, 0, 2], WireError::BadResetKind),
            (&[1, 4, 0, 0, 0, 0, 0], WireError::TrailingBytes),
            (
                &[1, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                WireError::BadShardCount,
            ),
            (
                &[1, 5, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0],
                WireError::Truncated,
            ),
            (
                &[1, 5, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                WireError::TrailingBytes,
            ),
        ];
        assert!(!cases.is_empty());
        for (bytes, want) in cases {
            assert_eq!(parse(bytes), Err(*want), "input {bytes:02x?}");
        }
    }

    #[test]
    fn malformed_blocks_name_their_fault() {
        let cases: &[(&[u8], WireError)] = &[
            (&[], WireError::Truncated),
            (&[3, 1, 1, 0, 0, 0, 0, 0], WireError::UnknownCodec),
            (&[0x80, 1, 1, 0, 0, 0, 0, 0], WireError::UnknownCodec),
            (&[0x10, 1, 1, 0, 0, 0, 0, 0], WireError::Truncated),
            (&[0x30, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0], WireError::BadDedupe),
            (&[0, 1, 1, 0, 0, 0], WireError::Truncated),
            (&[0, 0, 1, 0, 0, 0, 0, 0], WireError::BadPacketCount),
            (&[0, 1, 0, 0, 0, 0, 0], WireError::BadAreaLength),
            (&[0, 1, 2, 0, 0, 0, 0, 0], WireError::BadAreaLength),
            (
                &[1, 1, 0x80, 0x02, 0, 0, 0, 0, 0, 0, 0],
                WireError::BadAreaLength,
            ),
            (
                &[1, 0x50, 0x01, 1, 0, 0, 0, 0, 0],
                WireError::BadPacketCount,
            ),
        ];
        assert!(!cases.is_empty());
        for (bytes, want) in cases {
            assert_eq!(
                parse_block(bytes).map(|(h, _)| h),
                Err(*want),
                "input {bytes:02x?}"
            );
        }
    }

    #[test]
    fn area_entries_are_bounded() {
        let bad: &[&[u8]] = &[
            &[],
            &[0],
            &[0, 0],
            &[0, 3, 1, 1],
            &[16, 0, 1, 1],
            &[2, 1],
            // 70000 as a 4-byte varint: above the packet limit.
            &[0, 0x80, 0x01, 0x11, 0x70],
        ];
        assert!(!bad.is_empty());
        for entry in bad {
            assert_eq!(
                next_area_entry(entry),
                Err(WireError::BadPacketArea),
                "{entry:02x?}"
            );
        }
        assert_eq!(area_entry_len(20, 0), 22);
        assert_eq!(area_entry_len(1400, 0), 1403);
        assert_eq!(area_entry_len(1400, 4), 1407);
        assert_eq!(
            area_entry_len(MAX_PACKET_LEN, MAX_META_LEN),
            MAX_PACKET_LEN + 20
        );
        const { assert!(area_entry_len(MAX_PACKET_LEN, MAX_META_LEN) <= MAX_AREA_LEN) };
        const { assert!(MAX_PACKETS_PER_BLOCK * area_entry_len(20, 0) >= MAX_AREA_LEN) };
    }

    const GOLDEN_CHECKSUM: u32 = 0x1f02_8ef1;

    #[test]
    fn checksum_binds_identity_header_and_bytes() {
        let bytes = b"some packet bytes";
        let header = BlockHeader {
            codec: Codec::Lz4,
            packet_count: 1,
            area_len: 40,
            checksum: 0,
            place: None,
            stream_len: None,
        };
        let base = header.compute_checksum(ID, bytes);
        let next = BlockId {
            seq: ID.seq + 1,
            ..ID
        };
        let placed = Place { epoch: 3, pos: 128 };
        let changed = [
            header.compute_checksum(next, bytes),
            header.compute_checksum(BlockId { shard: 4, ..ID }, bytes),
            header.compute_checksum(BlockId { epoch: 1, ..ID }, bytes),
            header.compute_checksum(ID, b"some packet bytez"),
            BlockHeader {
                codec: Codec::Zstd,
                ..header
            }
            .compute_checksum(ID, bytes),
            BlockHeader {
                packet_count: 2,
                ..header
            }
            .compute_checksum(ID, bytes),
            BlockHeader {
                area_len: 41,
                ..header
            }
            .compute_checksum(ID, bytes),
            BlockHeader {
                place: Some(placed),
                ..header
            }
            .compute_checksum(ID, bytes),
            BlockHeader {
                place: Some(Place { pos: 256, ..placed }),
                ..header
            }
            .compute_checksum(ID, bytes),
            BlockHeader {
                place: Some(placed),
                stream_len: Some(17),
                ..header
            }
            .compute_checksum(ID, bytes),
        ];
        for (i, other) in changed.iter().enumerate() {
            assert_ne!(base, *other, "change {i} left the checksum alone");
        }
        // The checksum field itself is not an input.
        assert_eq!(
            base,
            BlockHeader {
                checksum: 0x1234_5678,
                ..header
            }
            .compute_checksum(ID, bytes)
        );
        assert!(!header.checksum_covers_area());
        assert!(
            BlockHeader {
                place: Some(placed),
                stream_len: Some(17),
                ..header
            }
            .checksum_covers_area()
        );
        // Golden value: an accidental change to the checksum is a wire change.
        assert_eq!(base, GOLDEN_CHECKSUM, "got {base:#010x}");
    }
}
