//! Zero-copy IPv4 / IPv6 packet views, flow keys and the shard-picking flow hash.
//!
//! Every packet read from the TUN device and every packet restored from a peer passes through
//! [`inspect`], so this module is written for untrusted input on the hot path: it never panics,
//! never allocates and does a bounded amount of work per packet (the IPv6 extension-header walk
//! stops after [`MAX_EXTENSION_HEADERS`]).
//!
//! The views ([`Ipv4Packet`], [`Ipv6Packet`]) follow smoltcp: `new_checked` checks the lengths
//! once, after which every accessor is panic-free. A buffer may be *longer* than the length its
//! header declares (a GSO super-packet up to 65535 bytes, link padding); bytes past the declared
//! length are ignored. It may never be shorter.
//!
//! [`FlowKey::hash`] is a stable hash: it is part of the shard-picking contract (both ends and
//! every run must agree), and a golden-value test pins it.

use ::core::fmt;
use ::core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use ::core::ops::Range;

/// IP protocol number of ICMP (for IPv4).
pub const PROTO_ICMP: u8 = 1;
/// IP protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const PROTO_UDP: u8 = 17;
/// IPv6 next-header value of ESP; the extension-header walk stops here (the rest is encrypted).
pub const PROTO_ESP: u8 = 50;
/// IPv6 next-header value of ICMPv6.
pub const PROTO_ICMPV6: u8 = 58;
/// IPv6 next-header value "No Next Header"; the extension-header walk stops here.
pub const PROTO_NO_NEXT_HEADER: u8 = 59;

/// The most IPv6 extension headers [`inspect`] skips before giving up with
/// [`PacketError::TooManyExtensionHeaders`].
///
/// RFC 8200 §4.1 recommends at most one of each type (two destination-options headers), about
/// six in practice; 8 leaves headroom while bounding the walk on hostile input.
pub const MAX_EXTENSION_HEADERS: usize = 8;

/// Why a buffer is not an IP packet we can forward.
///
/// Small and `Copy` so the data path can count drops per reason: use [`PacketError::index`] into
/// an array of [`PacketError::ALL`]`.len()` counters, and [`PacketError::name`] as the label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PacketError {
    /// The buffer holds no bytes at all.
    Empty,
    /// The version nibble is not 4 or 6 (or, for a typed view, not the view's version).
    UnknownVersion,
    /// The buffer is shorter than the fixed IP header (20 bytes for IPv4, 40 for IPv6).
    Truncated,
    /// IPv4 IHL is below 5, or the header it declares runs past the end of the buffer.
    BadHeaderLength,
    /// IPv4 total length is smaller than the header length or larger than the buffer.
    BadTotalLength,
    /// IPv6 payload length runs past the end of the buffer.
    BadPayloadLength,
    /// IPv6 payload length is 0 but bytes follow the header: a jumbogram (RFC 2675), unsupported.
    Jumbogram,
    /// An IPv6 extension header is shorter than 8 bytes or runs past the end of the payload.
    BadExtensionHeader,
    /// The IPv6 packet chains more than [`MAX_EXTENSION_HEADERS`] extension headers.
    TooManyExtensionHeaders,
}

impl PacketError {
    /// Every variant, in [`PacketError::index`] order.
    pub const ALL: [PacketError; 9] = [
        PacketError::Empty,
        PacketError::UnknownVersion,
        PacketError::Truncated,
        PacketError::BadHeaderLength,
        PacketError::BadTotalLength,
        PacketError::BadPayloadLength,
        PacketError::Jumbogram,
        PacketError::BadExtensionHeader,
        PacketError::TooManyExtensionHeaders,
    ];

    /// A dense index in `0..PacketError::ALL.len()`, for per-reason counter arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// A stable `snake_case` name, for metric labels and logs.
    pub fn name(self) -> &'static str {
        match self {
            PacketError::Empty => "empty",
            PacketError::UnknownVersion => "unknown_version",
            PacketError::Truncated => "truncated",
            PacketError::BadHeaderLength => "bad_header_length",
            PacketError::BadTotalLength => "bad_total_length",
            PacketError::BadPayloadLength => "bad_payload_length",
            PacketError::Jumbogram => "jumbogram",
            PacketError::BadExtensionHeader => "bad_extension_header",
            PacketError::TooManyExtensionHeaders => "too_many_extension_headers",
        }
    }
}

impl fmt::Display for PacketError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            PacketError::Empty => "empty packet",
            PacketError::UnknownVersion => "unknown IP version",
            PacketError::Truncated => "packet shorter than its IP header",
            PacketError::BadHeaderLength => "bad IPv4 header length",
            PacketError::BadTotalLength => "bad IPv4 total length",
            PacketError::BadPayloadLength => "IPv6 payload length exceeds the buffer",
            PacketError::Jumbogram => "IPv6 jumbograms are not supported",
            PacketError::BadExtensionHeader => "truncated IPv6 extension header",
            PacketError::TooManyExtensionHeaders => "too many IPv6 extension headers",
        };
        f.write_str(text)
    }
}

impl std::error::Error for PacketError {}

/// Reads a big-endian `u16` at `range.start`. Callers pass constant two-byte ranges that the
/// view's length check has covered.
fn read_u16(data: &[u8], range: Range<usize>) -> u16 {
    u16::from_be_bytes([data[range.start], data[range.start + 1]])
}

/// The version nibble of the first byte, or `Empty`.
fn version_of(data: &[u8]) -> Result<u8, PacketError> {
    data.first().map(|b| b >> 4).ok_or(PacketError::Empty)
}

/// Byte offsets of the IPv4 header fields (RFC 791 §3.1).
mod ipv4_field {
    use ::core::ops::Range;

    pub const VER_IHL: usize = 0;
    pub const DSCP_ECN: usize = 1;
    pub const LENGTH: Range<usize> = 2..4;
    pub const IDENT: Range<usize> = 4..6;
    pub const FLAGS_FRAG_OFFSET: Range<usize> = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Range<usize> = 10..12;
    pub const SRC_ADDR: Range<usize> = 12..16;
    pub const DST_ADDR: Range<usize> = 16..20;

    pub const FLAG_DONT_FRAGMENT: u16 = 0x4000;
    pub const FLAG_MORE_FRAGMENTS: u16 = 0x2000;
    pub const FRAG_OFFSET_MASK: u16 = 0x1fff;
}

/// Length of an IPv4 header without options.
pub const IPV4_MIN_HEADER_LEN: usize = 20;

/// A read-only view of an IPv4 packet in a buffer.
///
/// Build it with [`Ipv4Packet::new_checked`] for untrusted bytes; after that every accessor is
/// panic-free. Options (IHL 6..=15) are allowed and are part of [`Ipv4Packet::header_len`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// Wraps a buffer without checking it.
    ///
    /// # Panics
    /// Accessors may panic if the buffer is not a valid IPv4 packet; use
    /// [`Ipv4Packet::new_checked`] for anything you did not build yourself.
    pub const fn new_unchecked(buffer: T) -> Self {
        Ipv4Packet { buffer }
    }

    /// Wraps a buffer after checking that every accessor will stay inside it.
    ///
    /// # Errors
    /// [`PacketError::Empty`], [`PacketError::UnknownVersion`] (version is not 4),
    /// [`PacketError::Truncated`], [`PacketError::BadHeaderLength`] or
    /// [`PacketError::BadTotalLength`]. The header checksum is *not* verified (see
    /// [`Ipv4Packet::verify_checksum`]).
    pub fn new_checked(buffer: T) -> Result<Self, PacketError> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks the framing: version 4, `20 <= header_len <= total_len <= buffer length`.
    ///
    /// # Errors
    /// As for [`Ipv4Packet::new_checked`].
    pub fn check_len(&self) -> Result<(), PacketError> {
        let data = self.buffer.as_ref();
        if version_of(data)? != 4 {
            return Err(PacketError::UnknownVersion);
        }
        if data.len() < IPV4_MIN_HEADER_LEN {
            return Err(PacketError::Truncated);
        }
        let header_len = self.header_len();
        if header_len < IPV4_MIN_HEADER_LEN || header_len > data.len() {
            return Err(PacketError::BadHeaderLength);
        }
        let total_len = self.total_len();
        if total_len < header_len || total_len > data.len() {
            return Err(PacketError::BadTotalLength);
        }
        Ok(())
    }

    /// Returns the underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The version field (4 for a checked view).
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[ipv4_field::VER_IHL] >> 4
    }

    /// The header length in bytes, options included (IHL × 4, so 20..=60 when checked).
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[ipv4_field::VER_IHL] & 0x0f) * 4
    }

    /// The DSCP / ECN byte (formerly type of service).
    pub fn dscp_ecn(&self) -> u8 {
        self.buffer.as_ref()[ipv4_field::DSCP_ECN]
    }

    /// The total length field: header plus payload, in bytes. May be less than the buffer.
    pub fn total_len(&self) -> usize {
        usize::from(read_u16(self.buffer.as_ref(), ipv4_field::LENGTH))
    }

    /// The identification field (groups the fragments of one datagram).
    pub fn identification(&self) -> u16 {
        read_u16(self.buffer.as_ref(), ipv4_field::IDENT)
    }

    /// The DF (don't fragment) flag.
    pub fn dont_fragment(&self) -> bool {
        self.flags_frag_offset() & ipv4_field::FLAG_DONT_FRAGMENT != 0
    }

    /// The MF (more fragments) flag.
    pub fn more_fragments(&self) -> bool {
        self.flags_frag_offset() & ipv4_field::FLAG_MORE_FRAGMENTS != 0
    }

    /// The fragment offset in bytes (the 13-bit wire field × 8).
    pub fn fragment_offset(&self) -> u16 {
        (self.flags_frag_offset() & ipv4_field::FRAG_OFFSET_MASK) << 3
    }

    /// True if this is a fragment of a larger datagram (MF set or a non-zero offset); the
    /// first fragment included.
    pub fn is_fragment(&self) -> bool {
        self.more_fragments() || self.fragment_offset() != 0
    }

    fn flags_frag_offset(&self) -> u16 {
        read_u16(self.buffer.as_ref(), ipv4_field::FLAGS_FRAG_OFFSET)
    }

    /// The time-to-live field.
    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[ipv4_field::TTL]
    }

    /// The protocol field (6 TCP, 17 UDP, 1 ICMP, ...).
    pub fn protocol(&self) -> u8 {
        self.buffer.as_ref()[ipv4_field::PROTOCOL]
    }

    /// The header checksum field as sent.
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), ipv4_field::CHECKSUM)
    }

    /// True if the header checksum is correct. Not part of `new_checked`: the kernel has
    /// already checked TUN packets, and restored peer batches are covered by the wire checksum.
    pub fn verify_checksum(&self) -> bool {
        let header = &self.buffer.as_ref()[..self.header_len()];
        internet_checksum(&[header]) == 0
    }

    /// The source address.
    pub fn src_addr(&self) -> Ipv4Addr {
        let d = &self.buffer.as_ref()[ipv4_field::SRC_ADDR];
        Ipv4Addr::new(d[0], d[1], d[2], d[3])
    }

    /// The destination address.
    pub fn dst_addr(&self) -> Ipv4Addr {
        let d = &self.buffer.as_ref()[ipv4_field::DST_ADDR];
        Ipv4Addr::new(d[0], d[1], d[2], d[3])
    }

    /// The payload: bytes `header_len..total_len`. Bytes past `total_len` are not included.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..self.total_len()]
    }
}

/// Byte offsets of the IPv6 fixed header fields (RFC 8200 §3).
mod ipv6_field {
    use ::core::ops::Range;

    pub const VER_TC_FLOW: Range<usize> = 0..4;
    pub const LENGTH: Range<usize> = 4..6;
    pub const NEXT_HEADER: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC_ADDR: Range<usize> = 8..24;
    pub const DST_ADDR: Range<usize> = 24..40;
}

/// Length of the IPv6 fixed header.
pub const IPV6_HEADER_LEN: usize = 40;

/// A read-only view of an IPv6 packet in a buffer.
///
/// Build it with [`Ipv6Packet::new_checked`] for untrusted bytes; after that every accessor is
/// panic-free. Extension headers are part of [`Ipv6Packet::payload`]; [`inspect`] walks them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv6Packet<T> {
    /// Wraps a buffer without checking it.
    ///
    /// # Panics
    /// Accessors may panic if the buffer is not a valid IPv6 packet; use
    /// [`Ipv6Packet::new_checked`] for anything you did not build yourself.
    pub const fn new_unchecked(buffer: T) -> Self {
        Ipv6Packet { buffer }
    }

    /// Wraps a buffer after checking that every accessor will stay inside it.
    ///
    /// # Errors
    /// [`PacketError::Empty`], [`PacketError::UnknownVersion`] (version is not 6),
    /// [`PacketError::Truncated`], [`PacketError::BadPayloadLength`] or
    /// [`PacketError::Jumbogram`].
    pub fn new_checked(buffer: T) -> Result<Self, PacketError> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks the framing: version 6, `40 + payload_len <= buffer length`, and payload length
    /// 0 only when nothing follows the header (otherwise it would be a jumbogram).
    ///
    /// # Errors
    /// As for [`Ipv6Packet::new_checked`].
    pub fn check_len(&self) -> Result<(), PacketError> {
        let data = self.buffer.as_ref();
        if version_of(data)? != 6 {
            return Err(PacketError::UnknownVersion);
        }
        if data.len() < IPV6_HEADER_LEN {
            return Err(PacketError::Truncated);
        }
        let payload_len = self.payload_len();
        if payload_len == 0 && data.len() > IPV6_HEADER_LEN {
            return Err(PacketError::Jumbogram);
        }
        if IPV6_HEADER_LEN + payload_len > data.len() {
            return Err(PacketError::BadPayloadLength);
        }
        Ok(())
    }

    /// Returns the underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn ver_tc_flow(&self) -> u32 {
        let d = &self.buffer.as_ref()[ipv6_field::VER_TC_FLOW];
        u32::from_be_bytes([d[0], d[1], d[2], d[3]])
    }

    /// The version field (6 for a checked view).
    pub fn version(&self) -> u8 {
        (self.ver_tc_flow() >> 28) as u8
    }

    /// The traffic class (DSCP / ECN).
    pub fn traffic_class(&self) -> u8 {
        (self.ver_tc_flow() >> 20) as u8
    }

    /// The 20-bit flow label.
    pub fn flow_label(&self) -> u32 {
        self.ver_tc_flow() & 0x000f_ffff
    }

    /// The fixed header length: always 40 (extension headers count as payload).
    pub fn header_len(&self) -> usize {
        IPV6_HEADER_LEN
    }

    /// The payload length field: bytes after the fixed header, extension headers included.
    pub fn payload_len(&self) -> usize {
        usize::from(read_u16(self.buffer.as_ref(), ipv6_field::LENGTH))
    }

    /// Fixed header plus payload, in bytes. May be less than the buffer.
    pub fn total_len(&self) -> usize {
        IPV6_HEADER_LEN + self.payload_len()
    }

    /// The next-header field of the fixed header (an extension header or upper-layer protocol).
    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[ipv6_field::NEXT_HEADER]
    }

    /// The hop limit.
    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[ipv6_field::HOP_LIMIT]
    }

    /// The source address.
    pub fn src_addr(&self) -> Ipv6Addr {
        let mut octets = [0u8; 16];
        octets.copy_from_slice(&self.buffer.as_ref()[ipv6_field::SRC_ADDR]);
        Ipv6Addr::from(octets)
    }

    /// The destination address.
    pub fn dst_addr(&self) -> Ipv6Addr {
        let mut octets = [0u8; 16];
        octets.copy_from_slice(&self.buffer.as_ref()[ipv6_field::DST_ADDR]);
        Ipv6Addr::from(octets)
    }

    /// The payload: bytes `40..40 + payload_len`, extension headers included.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[IPV6_HEADER_LEN..self.total_len()]
    }
}

/// What identifies a flow, for sharding and per-flow state.
///
/// Built by [`inspect`]. Ports are 0 when the protocol has none, when the transport header is
/// truncated, and for every fragment (`fragment == true`), so all fragments of one datagram —
/// the first included — share a key. For ICMP / ICMPv6 echo, `src_port` is the echo identifier
/// and `dst_port` is 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Source address from the IP header.
    pub src: IpAddr,
    /// Destination address from the IP header.
    pub dst: IpAddr,
    /// Upper-layer protocol (IPv6: after skipping extension headers; for a fragment, the
    /// fragment header's next header; ESP / No Next Header end the walk).
    pub protocol: u8,
    /// TCP/UDP source port, ICMP echo identifier, or 0.
    pub src_port: u16,
    /// TCP/UDP destination port, or 0.
    pub dst_port: u16,
    /// The packet is a fragment (first one included); ports are then 0.
    pub fragment: bool,
}

/// Seed of [`FlowKey::hash`]. Part of the shard-picking contract: never change it casually.
const FLOW_HASH_SEED: u64 = 0x736c_7569_6365_0001; // "sluice", version 1

/// Longest canonical encoding: 8 bytes of fields plus two IPv6 addresses.
const FLOW_KEY_ENCODED_MAX: usize = 8 + 16 + 16;

impl FlowKey {
    /// A stable 64-bit hash of the key: the same on every run, platform and process.
    ///
    /// This is part of the shard-picking contract (with [`shard_for`]); a golden-value test pins
    /// it. It is xxh3-64 with a fixed seed over a fixed-layout encoding:
    /// `[src family (4|6), dst family (4|6), protocol, fragment (0|1), src_port BE, dst_port BE,
    /// src octets (4|16), dst octets (4|16)]`, so IPv4 and IPv6 keys never share an encoding.
    /// Not symmetric: the two directions of a connection usually hash differently.
    pub fn hash(&self) -> u64 {
        let mut buf = [0u8; FLOW_KEY_ENCODED_MAX];
        let len = self.encode(&mut buf);
        twox_hash::XxHash3_64::oneshot_with_seed(FLOW_HASH_SEED, &buf[..len])
    }

    /// Writes the canonical encoding used by [`FlowKey::hash`]; returns its length.
    fn encode(&self, out: &mut [u8; FLOW_KEY_ENCODED_MAX]) -> usize {
        fn family(addr: IpAddr) -> u8 {
            match addr {
                IpAddr::V4(_) => 4,
                IpAddr::V6(_) => 6,
            }
        }
        fn put(out: &mut [u8; FLOW_KEY_ENCODED_MAX], at: usize, addr: IpAddr) -> usize {
            match addr {
                IpAddr::V4(a) => {
                    out[at..at + 4].copy_from_slice(&a.octets());
                    at + 4
                }
                IpAddr::V6(a) => {
                    out[at..at + 16].copy_from_slice(&a.octets());
                    at + 16
                }
            }
        }
        out[0] = family(self.src);
        out[1] = family(self.dst);
        out[2] = self.protocol;
        out[3] = u8::from(self.fragment);
        out[4..6].copy_from_slice(&self.src_port.to_be_bytes());
        out[6..8].copy_from_slice(&self.dst_port.to_be_bytes());
        let at = put(out, 8, self.src);
        put(out, at, self.dst)
    }
}

/// Maps a flow hash onto one of `shards` shards, in `0..shards`.
///
/// Uses the high bits (`hash × shards / 2^64`), which spreads any well-mixed 64-bit hash evenly
/// without a division. `shards == 0` returns 0 rather than panicking; callers must not have zero
/// shards, but a configuration slip should not crash the data path.
pub fn shard_for(hash: u64, shards: usize) -> usize {
    ((u128::from(hash) * shards as u128) >> 64) as usize
}

/// The result of [`inspect`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketInfo {
    /// The packet's flow.
    pub flow: FlowKey,
    /// Where the transport payload starts inside the packet: after the TCP header (options
    /// included) or the 8-byte UDP / ICMP header. For fragments, other protocols and truncated
    /// transport headers, where the upper-layer data starts (IPv4: after the IP header; IPv6:
    /// after the fixed header and the extension headers walked). Always `<= packet.len()`.
    pub payload_offset: usize,
}

/// Validates the IP framing of `packet` and extracts its flow key and payload offset.
///
/// Cheap (no allocation, bounded work) and panic-free on any input. The version comes from the
/// first nibble, then the matching view's `new_checked` runs. A transport header that is
/// truncated is not an error (the packet is still forwardable): its ports are 0.
///
/// # Errors
/// Any [`PacketError`]: the buffer is not a well-framed IPv4 or IPv6 packet, or its IPv6
/// extension headers are truncated or too many.
pub fn inspect(packet: &[u8]) -> Result<PacketInfo, PacketError> {
    match version_of(packet)? {
        4 => inspect_ipv4(packet),
        6 => inspect_ipv6(packet),
        _ => Err(PacketError::UnknownVersion),
    }
}

fn inspect_ipv4(packet: &[u8]) -> Result<PacketInfo, PacketError> {
    let ip = Ipv4Packet::new_checked(packet)?;
    let protocol = ip.protocol();
    let header_len = ip.header_len();
    let fragment = ip.is_fragment();
    let transport = if fragment {
        Transport::NONE
    } else {
        Transport::parse(protocol, PROTO_ICMP, ip.payload())
    };
    Ok(PacketInfo {
        flow: FlowKey {
            src: IpAddr::V4(ip.src_addr()),
            dst: IpAddr::V4(ip.dst_addr()),
            protocol,
            src_port: transport.src_port,
            dst_port: transport.dst_port,
            fragment,
        },
        payload_offset: header_len + transport.header_len,
    })
}

/// IPv6 extension headers that use the generic `(next header, length in 8-octet units - 1)`
/// layout: hop-by-hop, routing, destination options, mobility, HIP, shim6.
const fn is_generic_extension_header(next_header: u8) -> bool {
    matches!(next_header, 0 | 43 | 60 | 135 | 139 | 140)
}

const EXT_FRAGMENT: u8 = 44;
const EXT_AUTHENTICATION: u8 = 51;

fn inspect_ipv6(packet: &[u8]) -> Result<PacketInfo, PacketError> {
    let ip = Ipv6Packet::new_checked(packet)?;
    let payload = ip.payload();
    let mut next_header = ip.next_header();
    // Offset of the header `next_header` names, inside `payload`; never beyond `payload.len()`.
    let mut offset = 0usize;
    let mut walked = 0usize;
    let mut fragment = false;
    loop {
        let generic = is_generic_extension_header(next_header);
        if !generic && next_header != EXT_FRAGMENT && next_header != EXT_AUTHENTICATION {
            break; // upper-layer protocol, ESP or No Next Header
        }
        if walked == MAX_EXTENSION_HEADERS {
            return Err(PacketError::TooManyExtensionHeaders);
        }
        walked += 1;
        let rest = payload.get(offset..).unwrap_or_default();
        let Some(header) = rest.first_chunk::<8>() else {
            return Err(PacketError::BadExtensionHeader);
        };
        let current = next_header;
        let len = match current {
            EXT_FRAGMENT => 8,
            // AH counts 4-octet units minus 2 (RFC 4302 §2.2).
            EXT_AUTHENTICATION => (usize::from(header[1]) + 2) * 4,
            _ => (usize::from(header[1]) + 1) * 8,
        };
        if len > rest.len() {
            return Err(PacketError::BadExtensionHeader);
        }
        next_header = header[0];
        offset += len;
        if current == EXT_FRAGMENT {
            let offset_flags = u16::from_be_bytes([header[2], header[3]]);
            // Fragment offset (high 13 bits) non-zero or M (bit 0) set: a real fragment, and the
            // rest is fragment data. Offset 0 with M = 0 is an atomic fragment (RFC 6946): the
            // upper-layer header follows, so keep walking.
            if offset_flags & 0xfff9 != 0 {
                fragment = true;
                break;
            }
        }
    }
    let transport = if fragment {
        Transport::NONE
    } else {
        Transport::parse(
            next_header,
            PROTO_ICMPV6,
            payload.get(offset..).unwrap_or_default(),
        )
    };
    Ok(PacketInfo {
        flow: FlowKey {
            src: IpAddr::V6(ip.src_addr()),
            dst: IpAddr::V6(ip.dst_addr()),
            protocol: next_header,
            src_port: transport.src_port,
            dst_port: transport.dst_port,
            fragment,
        },
        payload_offset: IPV6_HEADER_LEN + offset + transport.header_len,
    })
}

/// Ports and header length taken from a transport header, all 0 when there is none.
#[derive(Clone, Copy)]
struct Transport {
    src_port: u16,
    dst_port: u16,
    header_len: usize,
}

impl Transport {
    const NONE: Transport = Transport {
        src_port: 0,
        dst_port: 0,
        header_len: 0,
    };

    /// Reads the transport header of `protocol` at the start of `data`. `icmp` is the ICMP
    /// protocol number of the IP version at hand (1 or 58). Ports are taken only when the whole
    /// header is present; otherwise the result is [`Transport::NONE`].
    fn parse(protocol: u8, icmp: u8, data: &[u8]) -> Transport {
        const TCP_MIN_HEADER_LEN: usize = 20;
        let Some(h) = data.first_chunk::<8>() else {
            return Transport::NONE;
        };
        let ports = (
            u16::from_be_bytes([h[0], h[1]]),
            u16::from_be_bytes([h[2], h[3]]),
        );
        match protocol {
            PROTO_TCP => {
                let Some(tcp) = data.first_chunk::<TCP_MIN_HEADER_LEN>() else {
                    return Transport::NONE;
                };
                // Data offset: header length in 32-bit words, options included.
                let header_len = usize::from(tcp[12] >> 4) * 4;
                if header_len < TCP_MIN_HEADER_LEN || header_len > data.len() {
                    return Transport::NONE;
                }
                Transport {
                    src_port: ports.0,
                    dst_port: ports.1,
                    header_len,
                }
            }
            PROTO_UDP => Transport {
                src_port: ports.0,
                dst_port: ports.1,
                header_len: 8,
            },
            p if p == icmp => {
                // Echo request / reply: type 8 / 0 for ICMPv4, 128 / 129 for ICMPv6.
                let echo = match icmp {
                    PROTO_ICMP => matches!(h[0], 0 | 8),
                    _ => matches!(h[0], 128 | 129),
                };
                Transport {
                    src_port: if echo {
                        u16::from_be_bytes([h[4], h[5]])
                    } else {
                        0
                    },
                    dst_port: 0,
                    header_len: 8,
                }
            }
            _ => Transport::NONE,
        }
    }
}

/// The Internet checksum (RFC 1071) over the concatenation of `parts`; 0 when a buffer that
/// includes its own checksum field is correct. Each part but the last must have even length.
fn internet_checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u64 = 0;
    for part in parts {
        let mut words = part.chunks_exact(2);
        for w in &mut words {
            sum += u64::from(u16::from_be_bytes([w[0], w[1]]));
        }
        if let [last] = words.remainder() {
            sum += u64::from(*last) << 8;
        }
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Builders of well-formed packets for tests across the crate (simulation, encoder property
/// tests). Not part of the data path; allocates and may panic (documented per function).
#[doc(hidden)]
pub mod testing {
    use super::{PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, internet_checksum};

    /// Builds the transport segment: a 20-byte TCP header (seq 0, ack 0, PSH|ACK, window
    /// 65535), an 8-byte UDP header, an ICMP(v6) echo request (id = `src_port`, sequence =
    /// `dst_port`), or `payload` alone for other protocols. The checksum is left zero, with
    /// its offset returned so the caller can fill it in.
    fn segment(
        protocol: u8,
        icmp: u8,
        src_port: u16,
        dst_port: u16,
        payload: &[u8],
    ) -> (Vec<u8>, Option<usize>) {
        let mut seg = Vec::with_capacity(20 + payload.len());
        let checksum_at = match protocol {
            PROTO_TCP => {
                seg.extend_from_slice(&src_port.to_be_bytes());
                seg.extend_from_slice(&dst_port.to_be_bytes());
                seg.extend_from_slice(&[0; 8]); // sequence and acknowledgment numbers
                seg.extend_from_slice(&[5 << 4, 0x18, 0xff, 0xff, 0, 0, 0, 0]);
                Some(16)
            }
            PROTO_UDP => {
                // A segment too long for the length field is rejected by the caller, so the
                // 0 fallback never ships.
                seg.extend_from_slice(&src_port.to_be_bytes());
                seg.extend_from_slice(&dst_port.to_be_bytes());
                let len = u16::try_from(8 + payload.len()).unwrap_or(0);
                seg.extend_from_slice(&len.to_be_bytes());
                seg.extend_from_slice(&[0, 0]);
                Some(6)
            }
            p if p == icmp => {
                let echo_request = if icmp == PROTO_ICMP { 8 } else { 128 };
                seg.extend_from_slice(&[echo_request, 0, 0, 0]);
                seg.extend_from_slice(&src_port.to_be_bytes());
                seg.extend_from_slice(&dst_port.to_be_bytes());
                Some(2)
            }
            _ => None,
        };
        seg.extend_from_slice(payload);
        (seg, checksum_at)
    }

    /// A well-formed IPv4 packet: IHL 5, DF set, identification 0, TTL 64, correct header
    /// checksum, and correct TCP / UDP / ICMP checksums (see `segment` for the transport layout:
    /// TCP and UDP carry the ports, ICMP is an echo request with id `src_port` and sequence
    /// `dst_port`; other protocols carry `payload` raw and ignore the ports).
    ///
    /// # Panics
    /// If the packet would exceed 65535 bytes.
    pub fn ipv4_packet(
        src: [u8; 4],
        dst: [u8; 4],
        protocol: u8,
        src_port: u16,
        dst_port: u16,
        payload: &[u8],
    ) -> Vec<u8> {
        let (mut seg, checksum_at) = segment(protocol, PROTO_ICMP, src_port, dst_port, payload);
        let total = u16::try_from(20 + seg.len()).expect("IPv4 packet longer than 65535 bytes");
        if let Some(at) = checksum_at {
            let seg_len = (total - 20).to_be_bytes(); // the segment length, known to fit
            let sum = if protocol == PROTO_ICMP {
                internet_checksum(&[&seg])
            } else {
                let pseudo = [0, protocol, seg_len[0], seg_len[1]];
                internet_checksum(&[&src, &dst, &pseudo, &seg])
            };
            seg[at..at + 2].copy_from_slice(&sum.to_be_bytes());
        }
        let mut packet = Vec::with_capacity(usize::from(total));
        packet.extend_from_slice(&[0x45, 0]);
        packet.extend_from_slice(&total.to_be_bytes());
        packet.extend_from_slice(&[0, 0, 0x40, 0, 64, protocol, 0, 0]);
        packet.extend_from_slice(&src);
        packet.extend_from_slice(&dst);
        let sum = internet_checksum(&[&packet]);
        packet[10..12].copy_from_slice(&sum.to_be_bytes());
        packet.extend_from_slice(&seg);
        packet
    }

    /// A well-formed IPv6 packet: traffic class 0, flow label 0, hop limit 64, no extension
    /// headers, and correct TCP / UDP / ICMPv6 checksums (transport layout as for
    /// [`ipv4_packet`], with ICMPv6 in place of ICMP).
    ///
    /// # Panics
    /// If the payload (transport header plus `payload`) would exceed 65535 bytes.
    pub fn ipv6_packet(
        src: [u8; 16],
        dst: [u8; 16],
        protocol: u8,
        src_port: u16,
        dst_port: u16,
        payload: &[u8],
    ) -> Vec<u8> {
        let (mut seg, checksum_at) = segment(protocol, PROTO_ICMPV6, src_port, dst_port, payload);
        let len = u16::try_from(seg.len()).expect("IPv6 payload longer than 65535 bytes");
        if let Some(at) = checksum_at {
            let len32 = u32::from(len).to_be_bytes();
            let pseudo = [len32[0], len32[1], len32[2], len32[3], 0, 0, 0, protocol];
            let mut sum = internet_checksum(&[&src, &dst, &pseudo, &seg]);
            if protocol == PROTO_UDP && sum == 0 {
                sum = 0xffff; // zero means "no checksum", which IPv6 forbids for UDP
            }
            seg[at..at + 2].copy_from_slice(&sum.to_be_bytes());
        }
        let mut packet = Vec::with_capacity(40 + seg.len());
        packet.extend_from_slice(&[0x60, 0, 0, 0]);
        packet.extend_from_slice(&len.to_be_bytes());
        packet.extend_from_slice(&[protocol, 64]);
        packet.extend_from_slice(&src);
        packet.extend_from_slice(&dst);
        packet.extend_from_slice(&seg);
        packet
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{ipv4_packet, ipv6_packet};
    use super::*;
    use proptest::prelude::*;

    // Golden packets. Checksums are real (computed independently of this crate); the IPv4
    // header checksums are re-verified below, so a typo in a literal fails a test.
    // V4_TCP_SYN (60 bytes)
    const V4_TCP_SYN: [u8; 60] = [
        0x45, 0x00, 0x00, 0x3c, 0x1c, 0x46, 0x40, 0x00, 0x40, 0x06, 0x26, 0xe9, 0xc0, 0xa8, 0x01,
        0x0a, 0x5d, 0xb8, 0xd8, 0x22, 0xd4, 0x31, 0x01, 0xbb, 0x6f, 0x1e, 0x2d, 0x3c, 0x00, 0x00,
        0x00, 0x00, 0xa0, 0x02, 0xfa, 0xf0, 0xac, 0xe2, 0x00, 0x00, 0x02, 0x04, 0x05, 0xb4, 0x04,
        0x02, 0x08, 0x0a, 0x0a, 0x1b, 0x2c, 0x3d, 0x00, 0x00, 0x00, 0x00, 0x01, 0x03, 0x03, 0x07,
    ];
    // V4_UDP_DNS (57 bytes)
    const V4_UDP_DNS: [u8; 57] = [
        0x45, 0x00, 0x00, 0x39, 0x3a, 0x2f, 0x40, 0x00, 0x40, 0x11, 0xe6, 0x73, 0x0a, 0x00, 0x00,
        0x02, 0x08, 0x08, 0x08, 0x08, 0xcf, 0x08, 0x00, 0x35, 0x00, 0x25, 0x9b, 0x19, 0xab, 0xcd,
        0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x07, 0x65, 0x78, 0x61, 0x6d,
        0x70, 0x6c, 0x65, 0x03, 0x63, 0x6f, 0x6d, 0x00, 0x00, 0x01, 0x00, 0x01,
    ];
    // V4_ICMP_ECHO (36 bytes)
    const V4_ICMP_ECHO: [u8; 36] = [
        0x45, 0x00, 0x00, 0x24, 0x00, 0x01, 0x40, 0x00, 0x40, 0x01, 0x2e, 0xd5, 0x0a, 0x00, 0x00,
        0x02, 0x01, 0x01, 0x01, 0x01, 0x08, 0x00, 0x54, 0x35, 0x12, 0x34, 0x00, 0x01, 0x61, 0x62,
        0x63, 0x64, 0x65, 0x66, 0x67, 0x68,
    ];
    // V4_IGMP_RA (32 bytes)
    const V4_IGMP_RA: [u8; 32] = [
        0x46, 0xc0, 0x00, 0x20, 0x00, 0x00, 0x40, 0x00, 0x01, 0x02, 0x41, 0x6a, 0xc0, 0xa8, 0x01,
        0x0a, 0xe0, 0x00, 0x00, 0xfb, 0x94, 0x04, 0x00, 0x00, 0x16, 0x00, 0x09, 0x04, 0xe0, 0x00,
        0x00, 0xfb,
    ];
    // V4_FRAG_FIRST (44 bytes)
    const V4_FRAG_FIRST: [u8; 44] = [
        0x45, 0x00, 0x00, 0x2c, 0xab, 0xcd, 0x20, 0x00, 0x40, 0x11, 0x9a, 0xf1, 0x0a, 0x00, 0x00,
        0x01, 0x0a, 0x00, 0x00, 0x02, 0x13, 0x88, 0x17, 0x70, 0x00, 0x28, 0xcf, 0xa2, 0x00, 0x01,
        0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f,
    ];
    // V4_FRAG_LAST (36 bytes)
    const V4_FRAG_LAST: [u8; 36] = [
        0x45, 0x00, 0x00, 0x24, 0xab, 0xcd, 0x00, 0x03, 0x40, 0x11, 0xba, 0xf6, 0x0a, 0x00, 0x00,
        0x01, 0x0a, 0x00, 0x00, 0x02, 0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19,
        0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f,
    ];
    // V6_TCP (65 bytes)
    const V6_TCP: [u8; 65] = [
        0x60, 0x00, 0x00, 0x00, 0x00, 0x19, 0x06, 0x40, 0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x01, 0xbb, 0xc3, 0x50, 0x00,
        0x00, 0x03, 0xe8, 0x00, 0x00, 0x07, 0xd0, 0x50, 0x18, 0x01, 0xf6, 0x3d, 0xc7, 0x00, 0x00,
        0x68, 0x65, 0x6c, 0x6c, 0x6f,
    ];
    // V6_UDP_HBH_DST (68 bytes)
    const V6_UDP_HBH_DST: [u8; 68] = [
        0x60, 0x00, 0x00, 0x00, 0x00, 0x1c, 0x00, 0x40, 0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x3c, 0x00, 0x01, 0x04, 0x00,
        0x00, 0x00, 0x00, 0x11, 0x00, 0x01, 0x04, 0x00, 0x00, 0x00, 0x00, 0x02, 0x22, 0x02, 0x23,
        0x00, 0x0c, 0xc1, 0x4b, 0x70, 0x69, 0x6e, 0x67,
    ];
    // V6_ICMP_ECHO (52 bytes)
    const V6_ICMP_ECHO: [u8; 52] = [
        0x60, 0x00, 0x00, 0x00, 0x00, 0x0c, 0x3a, 0x40, 0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x80, 0x00, 0x39, 0xbf, 0x0b,
        0xad, 0x00, 0x07, 0x70, 0x69, 0x6e, 0x67,
    ];
    // V6_FRAG_FIRST (64 bytes)
    const V6_FRAG_FIRST: [u8; 64] = [
        0x60, 0x00, 0x00, 0x00, 0x00, 0x18, 0x2c, 0x40, 0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x11, 0x00, 0x00, 0x01, 0xde,
        0xad, 0xbe, 0xef, 0x0f, 0xa0, 0x0f, 0xa1, 0x00, 0x20, 0x00, 0x68, 0x00, 0x01, 0x02, 0x03,
        0x04, 0x05, 0x06, 0x07,
    ];
    // V6_FRAG_LAST (64 bytes)
    const V6_FRAG_LAST: [u8; 64] = [
        0x60, 0x00, 0x00, 0x00, 0x00, 0x18, 0x2c, 0x40, 0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x11, 0x00, 0x00, 0x10, 0xde,
        0xad, 0xbe, 0xef, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x10, 0x11, 0x12, 0x13,
        0x14, 0x15, 0x16, 0x17,
    ];
    // V6_ATOMIC_FRAG (60 bytes)
    const V6_ATOMIC_FRAG: [u8; 60] = [
        0x60, 0x00, 0x00, 0x00, 0x00, 0x14, 0x2c, 0x40, 0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x11, 0x00, 0x00, 0x00, 0x01,
        0x02, 0x03, 0x04, 0x0f, 0xa0, 0x0f, 0xa1, 0x00, 0x0c, 0xb4, 0x3e, 0x61, 0x74, 0x6f, 0x6d,
    ];
    // BUILDER_V4_UDP (31 bytes)
    const BUILDER_V4_UDP: [u8; 31] = [
        0x45, 0x00, 0x00, 0x1f, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x1f, 0xc1, 0x0a, 0x01, 0x02,
        0x03, 0x0a, 0x04, 0x05, 0x06, 0x04, 0x57, 0x08, 0xae, 0x00, 0x0b, 0xe5, 0x4b, 0x78, 0x79,
        0x7a,
    ];
    // BUILDER_V6_TCP (63 bytes)
    const BUILDER_V6_TCP: [u8; 63] = [
        0x60, 0x00, 0x00, 0x00, 0x00, 0x17, 0x06, 0x40, 0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0a, 0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0b, 0x0d, 0x05, 0x11, 0x5c, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x50, 0x18, 0xff, 0xff, 0x43, 0x68, 0x00, 0x00,
        0x78, 0x79, 0x7a,
    ];
    // BUILDER_V6_ICMP (51 bytes)
    const BUILDER_V6_ICMP: [u8; 51] = [
        0x60, 0x00, 0x00, 0x00, 0x00, 0x0b, 0x3a, 0x40, 0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0a, 0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0b, 0x80, 0x00, 0x31, 0x67, 0x00,
        0x4d, 0x00, 0x05, 0x78, 0x79, 0x7a,
    ];

    /// Every golden packet, for the table-driven tests and as the fuzz seed corpus.
    const GOLDEN: &[(&str, &[u8])] = &[
        ("v4_tcp_syn", &V4_TCP_SYN),
        ("v4_udp_dns", &V4_UDP_DNS),
        ("v4_icmp_echo", &V4_ICMP_ECHO),
        ("v4_igmp_ra", &V4_IGMP_RA),
        ("v4_frag_first", &V4_FRAG_FIRST),
        ("v4_frag_last", &V4_FRAG_LAST),
        ("v6_tcp", &V6_TCP),
        ("v6_udp_hbh_dst", &V6_UDP_HBH_DST),
        ("v6_icmp_echo", &V6_ICMP_ECHO),
        ("v6_frag_first", &V6_FRAG_FIRST),
        ("v6_frag_last", &V6_FRAG_LAST),
        ("v6_atomic_frag", &V6_ATOMIC_FRAG),
    ];

    fn ip4(a: [u8; 4]) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(a))
    }

    fn ip6(text: &str) -> IpAddr {
        IpAddr::V6(text.parse().expect("test address literal"))
    }

    fn key(src: IpAddr, dst: IpAddr, protocol: u8, ports: (u16, u16), fragment: bool) -> FlowKey {
        FlowKey {
            src,
            dst,
            protocol,
            src_port: ports.0,
            dst_port: ports.1,
            fragment,
        }
    }

    #[test]
    fn golden_ipv4_tcp_syn_with_options() {
        let ip = Ipv4Packet::new_checked(&V4_TCP_SYN[..]).unwrap();
        assert_eq!(ip.version(), 4);
        assert_eq!(ip.header_len(), 20);
        assert_eq!(ip.dscp_ecn(), 0);
        assert_eq!(ip.total_len(), 60);
        assert_eq!(ip.identification(), 0x1c46);
        assert!(ip.dont_fragment());
        assert!(!ip.more_fragments());
        assert_eq!(ip.fragment_offset(), 0);
        assert!(!ip.is_fragment());
        assert_eq!(ip.ttl(), 64);
        assert_eq!(ip.protocol(), PROTO_TCP);
        assert_eq!(ip.checksum(), 0x26e9);
        assert!(ip.verify_checksum());
        assert_eq!(ip.src_addr(), Ipv4Addr::new(192, 168, 1, 10));
        assert_eq!(ip.dst_addr(), Ipv4Addr::new(93, 184, 216, 34));
        assert_eq!(ip.payload(), &V4_TCP_SYN[20..]);
        assert_eq!(ip.into_inner(), &V4_TCP_SYN[..]);

        let info = inspect(&V4_TCP_SYN).unwrap();
        let flow = key(
            ip4([192, 168, 1, 10]),
            ip4([93, 184, 216, 34]),
            6,
            (54321, 443),
            false,
        );
        // 20 bytes of IP + 40 bytes of TCP (MSS, SACK-permitted, timestamps, NOP, window scale).
        assert_eq!(
            info,
            PacketInfo {
                flow,
                payload_offset: 60
            }
        );
    }

    #[test]
    fn golden_ipv4_udp() {
        let ip = Ipv4Packet::new_checked(&V4_UDP_DNS[..]).unwrap();
        assert_eq!((ip.version(), ip.header_len(), ip.total_len()), (4, 20, 57));
        assert_eq!(ip.identification(), 0x3a2f);
        assert!(ip.dont_fragment() && !ip.is_fragment());
        assert_eq!((ip.ttl(), ip.protocol()), (64, PROTO_UDP));
        assert!(ip.verify_checksum());
        assert_eq!(ip.src_addr(), Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(ip.dst_addr(), Ipv4Addr::new(8, 8, 8, 8));
        assert_eq!(ip.payload().len(), 37);

        let info = inspect(&V4_UDP_DNS).unwrap();
        let flow = key(
            ip4([10, 0, 0, 2]),
            ip4([8, 8, 8, 8]),
            17,
            (53000, 53),
            false,
        );
        assert_eq!(
            info,
            PacketInfo {
                flow,
                payload_offset: 28
            }
        );
        assert_eq!(V4_UDP_DNS[info.payload_offset..][..2], [0xab, 0xcd]); // DNS query id
    }

    #[test]
    fn golden_ipv4_icmp_echo() {
        let ip = Ipv4Packet::new_checked(&V4_ICMP_ECHO[..]).unwrap();
        assert_eq!(
            (ip.header_len(), ip.total_len(), ip.protocol()),
            (20, 36, PROTO_ICMP)
        );
        assert_eq!(ip.identification(), 1);
        assert!(ip.verify_checksum());
        let info = inspect(&V4_ICMP_ECHO).unwrap();
        let flow = key(ip4([10, 0, 0, 2]), ip4([1, 1, 1, 1]), 1, (0x1234, 0), false);
        assert_eq!(
            info,
            PacketInfo {
                flow,
                payload_offset: 28
            }
        );
        assert_eq!(&V4_ICMP_ECHO[28..], b"abcdefgh");
    }

    #[test]
    fn golden_ipv4_with_options() {
        // IGMPv2 report with the Router Alert option: IHL 6, no ports.
        let ip = Ipv4Packet::new_checked(&V4_IGMP_RA[..]).unwrap();
        assert_eq!((ip.header_len(), ip.total_len()), (24, 32));
        assert_eq!((ip.dscp_ecn(), ip.ttl(), ip.protocol()), (0xc0, 1, 2));
        assert!(ip.verify_checksum());
        assert_eq!(ip.dst_addr(), Ipv4Addr::new(224, 0, 0, 251));
        assert_eq!(ip.payload(), &V4_IGMP_RA[24..]);
        let info = inspect(&V4_IGMP_RA).unwrap();
        let flow = key(
            ip4([192, 168, 1, 10]),
            ip4([224, 0, 0, 251]),
            2,
            (0, 0),
            false,
        );
        assert_eq!(
            info,
            PacketInfo {
                flow,
                payload_offset: 24
            }
        );
    }

    #[test]
    fn golden_ipv4_fragments_share_one_key() {
        let first = Ipv4Packet::new_checked(&V4_FRAG_FIRST[..]).unwrap();
        assert_eq!(first.identification(), 0xabcd);
        assert!(first.more_fragments() && !first.dont_fragment());
        assert_eq!(first.fragment_offset(), 0);
        assert!(first.is_fragment());
        assert!(first.verify_checksum());
        let last = Ipv4Packet::new_checked(&V4_FRAG_LAST[..]).unwrap();
        assert_eq!(last.identification(), 0xabcd);
        assert!(!last.more_fragments());
        assert_eq!(last.fragment_offset(), 24);
        assert!(last.is_fragment());
        assert!(last.verify_checksum());

        let flow = key(ip4([10, 0, 0, 1]), ip4([10, 0, 0, 2]), 17, (0, 0), true);
        let a = inspect(&V4_FRAG_FIRST).unwrap();
        let b = inspect(&V4_FRAG_LAST).unwrap();
        // The first fragment carries the UDP header, but its ports are deliberately ignored.
        assert_eq!(
            a,
            PacketInfo {
                flow,
                payload_offset: 20
            }
        );
        assert_eq!(
            b,
            PacketInfo {
                flow,
                payload_offset: 20
            }
        );
        assert_eq!(a.flow.hash(), b.flow.hash());
    }

    #[test]
    fn golden_ipv6_tcp() {
        let ip = Ipv6Packet::new_checked(&V6_TCP[..]).unwrap();
        assert_eq!(ip.version(), 6);
        assert_eq!((ip.traffic_class(), ip.flow_label()), (0, 0));
        assert_eq!(
            (ip.header_len(), ip.payload_len(), ip.total_len()),
            (40, 25, 65)
        );
        assert_eq!((ip.next_header(), ip.hop_limit()), (PROTO_TCP, 64));
        assert_eq!(IpAddr::V6(ip.src_addr()), ip6("2001:db8::1"));
        assert_eq!(IpAddr::V6(ip.dst_addr()), ip6("2001:db8::2"));
        assert_eq!(ip.payload(), &V6_TCP[40..]);
        assert_eq!(ip.into_inner(), &V6_TCP[..]);

        let info = inspect(&V6_TCP).unwrap();
        let flow = key(
            ip6("2001:db8::1"),
            ip6("2001:db8::2"),
            6,
            (443, 50000),
            false,
        );
        assert_eq!(
            info,
            PacketInfo {
                flow,
                payload_offset: 60
            }
        );
        assert_eq!(&V6_TCP[60..], b"hello");
    }

    #[test]
    fn golden_ipv6_udp_behind_hop_by_hop_and_destination_options() {
        let ip = Ipv6Packet::new_checked(&V6_UDP_HBH_DST[..]).unwrap();
        assert_eq!((ip.next_header(), ip.payload_len()), (0, 28));
        let info = inspect(&V6_UDP_HBH_DST).unwrap();
        let flow = key(
            ip6("2001:db8::1"),
            ip6("2001:db8::2"),
            17,
            (546, 547),
            false,
        );
        assert_eq!(
            info,
            PacketInfo {
                flow,
                payload_offset: 64
            }
        );
        assert_eq!(&V6_UDP_HBH_DST[64..], b"ping");
    }

    #[test]
    fn golden_ipv6_icmp_echo() {
        let ip = Ipv6Packet::new_checked(&V6_ICMP_ECHO[..]).unwrap();
        assert_eq!((ip.next_header(), ip.payload_len()), (PROTO_ICMPV6, 12));
        let info = inspect(&V6_ICMP_ECHO).unwrap();
        let flow = key(
            ip6("2001:db8::1"),
            ip6("2001:db8::2"),
            58,
            (0x0bad, 0),
            false,
        );
        assert_eq!(
            info,
            PacketInfo {
                flow,
                payload_offset: 48
            }
        );
        assert_eq!(&V6_ICMP_ECHO[48..], b"ping");
    }

    #[test]
    fn golden_ipv6_fragments_share_one_key() {
        let flow = key(ip6("2001:db8::1"), ip6("2001:db8::2"), 17, (0, 0), true);
        for packet in [&V6_FRAG_FIRST[..], &V6_FRAG_LAST[..]] {
            let ip = Ipv6Packet::new_checked(packet).unwrap();
            assert_eq!(ip.next_header(), 44);
            assert_eq!(
                inspect(packet),
                Ok(PacketInfo {
                    flow,
                    payload_offset: 48
                })
            );
        }
    }

    #[test]
    fn golden_ipv6_atomic_fragment_is_not_a_fragment() {
        let info = inspect(&V6_ATOMIC_FRAG).unwrap();
        let flow = key(
            ip6("2001:db8::1"),
            ip6("2001:db8::2"),
            17,
            (4000, 4001),
            false,
        );
        assert_eq!(
            info,
            PacketInfo {
                flow,
                payload_offset: 56
            }
        );
        assert_eq!(&V6_ATOMIC_FRAG[56..], b"atom");
    }

    #[test]
    fn every_golden_packet_inspects() {
        assert!(!GOLDEN.is_empty());
        for (name, packet) in GOLDEN {
            let info = inspect(packet).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(info.payload_offset <= packet.len(), "{name}");
            if packet[0] >> 4 == 4 {
                assert!(
                    Ipv4Packet::new_checked(*packet).unwrap().verify_checksum(),
                    "{name}"
                );
            }
        }
    }

    #[test]
    fn bytes_past_the_declared_length_are_ignored() {
        for (name, packet) in GOLDEN {
            let mut padded = packet.to_vec();
            padded.extend_from_slice(&[0xee; 18]);
            if packet[0] >> 4 == 6 && packet.len() == IPV6_HEADER_LEN {
                continue; // would turn into a jumbogram
            }
            assert_eq!(inspect(&padded), inspect(packet), "{name}");
        }
        let mut padded = V4_UDP_DNS.to_vec();
        padded.push(0);
        let ip = Ipv4Packet::new_checked(&padded[..]).unwrap();
        assert_eq!(ip.payload(), &V4_UDP_DNS[20..]);
    }

    #[test]
    fn gso_sized_packets_parse() {
        let payload = vec![0x5a; 65535 - 20 - 20];
        let packet = ipv4_packet([10, 0, 0, 1], [10, 0, 0, 2], PROTO_TCP, 1, 2, &payload);
        assert_eq!(packet.len(), 65535);
        assert_eq!(inspect(&packet).unwrap().payload_offset, 40);
        let payload = vec![0x5a; 65535 - 8];
        let packet = ipv6_packet([1; 16], [2; 16], PROTO_UDP, 1, 2, &payload);
        assert_eq!(packet.len(), 40 + 65535);
        assert_eq!(inspect(&packet).unwrap().payload_offset, 48);
    }

    /// Replaces `bytes[at..]` with `with`, for building malformed variants of golden packets.
    fn patched(packet: &[u8], at: usize, with: &[u8]) -> Vec<u8> {
        let mut out = packet.to_vec();
        out[at..at + with.len()].copy_from_slice(with);
        out
    }

    /// An IPv6 packet whose payload is `headers` (a chain starting with `first`).
    fn ipv6_with(first: u8, headers: &[u8]) -> Vec<u8> {
        let mut out = V6_TCP[..40].to_vec();
        out[4..6].copy_from_slice(&(headers.len() as u16).to_be_bytes());
        out[6] = first;
        out.extend_from_slice(headers);
        out
    }

    /// `count` destination-options headers chained, then No Next Header.
    fn destination_options_chain(count: usize) -> Vec<u8> {
        let mut headers = Vec::new();
        for i in 0..count {
            let next = if i + 1 == count {
                PROTO_NO_NEXT_HEADER
            } else {
                60
            };
            headers.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]);
        }
        ipv6_with(60, &headers)
    }

    #[test]
    fn malformed_inputs_return_the_expected_error() {
        use PacketError::*;
        let v4_len = |n: u16| patched(&V4_UDP_DNS, 2, &n.to_be_bytes());
        let v6_len = |n: u16| patched(&V6_TCP, 4, &n.to_be_bytes());
        let cases: Vec<(&str, Vec<u8>, PacketError)> = vec![
            ("empty", vec![], Empty),
            ("version 0", vec![0; 60], UnknownVersion),
            (
                "version 5",
                patched(&V4_UDP_DNS, 0, &[0x55]),
                UnknownVersion,
            ),
            ("version 15", vec![0xff], UnknownVersion),
            ("one byte of v4", vec![0x45], Truncated),
            ("v4 shorter than 20", V4_UDP_DNS[..19].to_vec(), Truncated),
            ("v6 shorter than 40", V6_TCP[..39].to_vec(), Truncated),
            (
                "v4 ihl 0",
                patched(&V4_UDP_DNS, 0, &[0x40]),
                BadHeaderLength,
            ),
            (
                "v4 ihl 4",
                patched(&V4_UDP_DNS, 0, &[0x44]),
                BadHeaderLength,
            ),
            (
                "v4 ihl 15 past buffer",
                patched(&V4_UDP_DNS, 0, &[0x4f]),
                BadHeaderLength,
            ),
            (
                "v4 options cut off",
                V4_IGMP_RA[..22].to_vec(),
                BadHeaderLength,
            ),
            ("v4 total 0", v4_len(0), BadTotalLength),
            ("v4 total below header", v4_len(19), BadTotalLength),
            ("v4 total past buffer", v4_len(58), BadTotalLength),
            ("v4 cut short", V4_UDP_DNS[..56].to_vec(), BadTotalLength),
            ("v6 payload past buffer", v6_len(26), BadPayloadLength),
            ("v6 cut short", V6_TCP[..64].to_vec(), BadPayloadLength),
            ("v6 payload 0 with data", v6_len(0), Jumbogram),
            (
                "v6 hop-by-hop missing",
                ipv6_with(0, &[]),
                BadExtensionHeader,
            ),
            (
                "v6 hop-by-hop under 8 bytes",
                ipv6_with(0, &[59, 0, 1, 2]),
                BadExtensionHeader,
            ),
            (
                "v6 hop-by-hop longer than payload",
                ipv6_with(0, &[59, 1, 1, 4, 0, 0, 0, 0]),
                BadExtensionHeader,
            ),
            (
                "v6 AH longer than payload",
                ipv6_with(51, &[59, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
                BadExtensionHeader,
            ),
            (
                "v6 fragment header cut",
                ipv6_with(44, &[17, 0, 0, 1, 0, 0]),
                BadExtensionHeader,
            ),
            (
                "v6 nine extension headers",
                destination_options_chain(9),
                TooManyExtensionHeaders,
            ),
            (
                "v6 routing-header loop",
                ipv6_with(43, &[43, 0, 0, 0, 0, 0, 0, 0].repeat(100)),
                TooManyExtensionHeaders,
            ),
        ];
        assert!(!cases.is_empty());
        for (name, input, expected) in &cases {
            assert_eq!(inspect(input), Err(*expected), "{name}");
        }
    }

    #[test]
    fn typed_views_reject_the_other_version() {
        assert_eq!(
            Ipv4Packet::new_checked(&V6_TCP[..]),
            Err(PacketError::UnknownVersion)
        );
        assert_eq!(
            Ipv6Packet::new_checked(&V4_TCP_SYN[..]),
            Err(PacketError::UnknownVersion)
        );
        assert_eq!(Ipv6Packet::new_checked(&[][..]), Err(PacketError::Empty));
    }

    #[test]
    fn extension_header_cap_is_inclusive() {
        let info = inspect(&destination_options_chain(MAX_EXTENSION_HEADERS)).unwrap();
        assert_eq!(info.flow.protocol, PROTO_NO_NEXT_HEADER);
        assert_eq!(info.payload_offset, 40 + 8 * MAX_EXTENSION_HEADERS);
    }

    #[test]
    fn authentication_header_uses_four_octet_units() {
        // AH payload-length 4 means (4 + 2) * 4 = 24 bytes; a generic header would be 40.
        let mut headers = vec![PROTO_UDP, 4, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1];
        headers.extend_from_slice(&[0xaa; 12]); // ICV
        headers.extend_from_slice(&[0x12, 0x34, 0x56, 0x78, 0, 12, 0, 0, 1, 2, 3, 4]);
        let info = inspect(&ipv6_with(51, &headers)).unwrap();
        assert_eq!(
            (info.flow.protocol, info.flow.src_port, info.flow.dst_port),
            (17, 0x1234, 0x5678)
        );
        assert_eq!(info.payload_offset, 40 + 24 + 8);
    }

    #[test]
    fn esp_and_no_next_header_end_the_walk() {
        let esp = ipv6_with(0, &[PROTO_ESP, 0, 1, 4, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]);
        let info = inspect(&esp).unwrap();
        assert_eq!(
            (info.flow.protocol, info.flow.src_port, info.flow.dst_port),
            (50, 0, 0)
        );
        assert_eq!(info.payload_offset, 48);
        let none = ipv6_with(PROTO_NO_NEXT_HEADER, &[]);
        let info = inspect(&none).unwrap();
        assert_eq!((info.flow.protocol, info.payload_offset), (59, 40));
    }

    #[test]
    fn truncated_transport_headers_give_zero_ports() {
        let v4_tcp_cut = {
            let mut p = V4_TCP_SYN[..30].to_vec();
            p[2..4].copy_from_slice(&30u16.to_be_bytes());
            p
        };
        let v4_udp_cut = {
            let mut p = V4_UDP_DNS[..27].to_vec();
            p[2..4].copy_from_slice(&27u16.to_be_bytes());
            p
        };
        let cases: Vec<(&str, Vec<u8>, usize)> = vec![
            ("tcp header cut", v4_tcp_cut, 20),
            (
                "tcp data offset past payload",
                patched(&V4_TCP_SYN, 32, &[0xf0]),
                20,
            ),
            (
                "tcp data offset below 5",
                patched(&V4_TCP_SYN, 32, &[0x40]),
                20,
            ),
            ("udp header cut", v4_udp_cut, 20),
            (
                "icmpv6 header cut",
                ipv6_with(PROTO_ICMPV6, &[128, 0, 0, 0, 0, 1]),
                40,
            ),
            (
                "udp after atomic fragment cut",
                ipv6_with(44, &[17, 0, 0, 0, 0, 0, 0, 0, 1]),
                48,
            ),
        ];
        assert!(!cases.is_empty());
        for (name, packet, offset) in &cases {
            let info = inspect(packet).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!((info.flow.src_port, info.flow.dst_port), (0, 0), "{name}");
            assert!(!info.flow.fragment, "{name}");
            assert_eq!(info.payload_offset, *offset, "{name}");
        }
    }

    #[test]
    fn icmp_that_is_not_echo_has_no_identifier() {
        // Destination unreachable: the bytes where an echo id would be are "unused".
        let packet = patched(&V4_ICMP_ECHO, 20, &[3, 1]);
        let info = inspect(&packet).unwrap();
        assert_eq!(
            (info.flow.src_port, info.flow.dst_port, info.payload_offset),
            (0, 0, 28)
        );
        // ICMPv4 type numbers mean nothing inside IPv6 and vice versa.
        let packet = patched(&V6_ICMP_ECHO, 40, &[8]);
        assert_eq!(inspect(&packet).unwrap().flow.src_port, 0);
        let packet = patched(&V6_ICMP_ECHO, 40, &[129]);
        assert_eq!(inspect(&packet).unwrap().flow.src_port, 0x0bad);
    }

    #[test]
    fn error_table_is_dense_and_named() {
        for (i, error) in PacketError::ALL.iter().enumerate() {
            assert_eq!(error.index(), i);
            assert!(!error.name().is_empty());
            assert!(!error.to_string().is_empty());
            for other in &PacketError::ALL[i + 1..] {
                assert_ne!(error.name(), other.name());
            }
        }
    }

    #[test]
    fn builder_matches_golden_bytes() {
        let udp = ipv4_packet([10, 1, 2, 3], [10, 4, 5, 6], PROTO_UDP, 1111, 2222, b"xyz");
        assert_eq!(udp, BUILDER_V4_UDP);
        let (a, b) = (
            "2001:db8::a".parse::<Ipv6Addr>().unwrap().octets(),
            "2001:db8::b".parse::<Ipv6Addr>().unwrap().octets(),
        );
        assert_eq!(
            ipv6_packet(a, b, PROTO_TCP, 3333, 4444, b"xyz"),
            BUILDER_V6_TCP
        );
        assert_eq!(
            ipv6_packet(a, b, PROTO_ICMPV6, 77, 5, b"xyz"),
            BUILDER_V6_ICMP
        );
    }

    /// The flow hash is part of the shard-picking contract: if this fails, the hash changed
    /// and every deployment's shard assignment with it. Change the golden value only on purpose.
    #[test]
    fn flow_hash_golden_values() {
        let v4 = key(
            ip4([192, 168, 1, 10]),
            ip4([93, 184, 216, 34]),
            6,
            (54321, 443),
            false,
        );
        assert_eq!(v4.hash(), GOLDEN_HASH_V4);
        let v6 = key(ip6("2001:db8::1"), ip6("2001:db8::2"), 17, (0, 0), true);
        assert_eq!(v6.hash(), GOLDEN_HASH_V6);
    }

    const GOLDEN_HASH_V4: u64 = 0x101b_071f_2b30_ce4f;
    const GOLDEN_HASH_V6: u64 = 0xb334_ad68_5280_e0bf;

    #[test]
    fn flow_hash_separates_families_and_fields() {
        let base = key(ip4([0; 4]), ip4([0; 4]), 0, (0, 0), false);
        let mapped = key(
            ip6("::ffff:0.0.0.0"),
            ip6("::ffff:0.0.0.0"),
            0,
            (0, 0),
            false,
        );
        let unspecified = key(ip6("::"), ip6("::"), 0, (0, 0), false);
        let fragment = FlowKey {
            fragment: true,
            ..base
        };
        let swapped = key(ip4([0; 4]), ip4([0; 4]), 0, (1, 0), false);
        let swapped_back = key(ip4([0; 4]), ip4([0; 4]), 0, (0, 1), false);
        let hashes = [base, mapped, unspecified, fragment, swapped, swapped_back].map(|k| k.hash());
        for (i, h) in hashes.iter().enumerate() {
            assert!(!hashes[i + 1..].contains(h), "collision at {i}");
        }
    }

    #[test]
    fn shard_for_zero_shards_is_zero() {
        assert_eq!(shard_for(u64::MAX, 0), 0);
        assert_eq!(shard_for(0, 0), 0);
        assert_eq!(shard_for(u64::MAX, 1), 0);
        assert_eq!(shard_for(u64::MAX, usize::MAX), usize::MAX - 1);
    }

    #[test]
    fn shard_for_spreads_flows_evenly() {
        const SHARDS: usize = 8;
        const FLOWS: u16 = 16_000;
        let mut counts = [0u32; SHARDS];
        for port in 0..FLOWS {
            let k = key(
                ip4([10, 0, 0, 1]),
                ip4([10, 0, 0, 2]),
                6,
                (port, 443),
                false,
            );
            counts[shard_for(k.hash(), SHARDS)] += 1;
        }
        let expected = u32::from(FLOWS) / SHARDS as u32;
        for count in counts {
            // ±10% of 2000 is far outside what a well-mixed hash produces (σ ≈ 42).
            assert!(count.abs_diff(expected) < expected / 10, "{counts:?}");
        }
    }

    /// Calls every entry point and accessor; asserts the invariants that hold for any input.
    fn exercise(bytes: &[u8]) {
        let info = inspect(bytes);
        if let Ok(info) = info {
            assert!(info.payload_offset <= bytes.len());
            assert_eq!(info.flow.hash(), info.flow.hash());
        }
        match Ipv4Packet::new_checked(bytes) {
            Ok(ip) => {
                assert_eq!(ip.version(), 4);
                assert!((20..=60).contains(&ip.header_len()));
                assert!(ip.total_len() <= bytes.len());
                assert_eq!(ip.header_len() + ip.payload().len(), ip.total_len());
                let _ = (ip.dscp_ecn(), ip.identification(), ip.ttl(), ip.protocol());
                let _ = (
                    ip.dont_fragment(),
                    ip.more_fragments(),
                    ip.fragment_offset(),
                );
                let _ = (ip.is_fragment(), ip.checksum(), ip.verify_checksum());
                let _ = (ip.src_addr(), ip.dst_addr());
                let info = info.expect("a valid IPv4 header always inspects");
                assert!(info.payload_offset <= ip.total_len());
            }
            Err(e) => {
                if bytes.first().is_some_and(|b| b >> 4 == 4) {
                    assert_eq!(info, Err(e));
                }
            }
        }
        if let Ok(ip) = Ipv6Packet::new_checked(bytes) {
            assert_eq!(ip.version(), 6);
            assert_eq!(ip.header_len(), 40);
            assert!(ip.total_len() <= bytes.len());
            assert_eq!(40 + ip.payload().len(), ip.total_len());
            let _ = (
                ip.traffic_class(),
                ip.flow_label(),
                ip.next_header(),
                ip.hop_limit(),
            );
            let _ = (ip.src_addr(), ip.dst_addr());
            if let Ok(info) = info {
                assert!(info.payload_offset <= ip.total_len());
            }
        }
    }

    /// Golden packets with a few bytes overwritten: reaches the deep parsing paths that random
    /// bytes rarely do.
    fn mutated_golden() -> impl Strategy<Value = Vec<u8>> {
        (
            0..GOLDEN.len(),
            prop::collection::vec((any::<usize>(), any::<u8>()), 1..6),
            0usize..8,
        )
            .prop_map(|(which, edits, cut)| {
                let mut packet = GOLDEN[which].1.to_vec();
                for (at, value) in edits {
                    let at = at % packet.len();
                    packet[at] = value;
                }
                packet.truncate(packet.len().saturating_sub(cut));
                packet
            })
    }

    /// A generated packet: (is_v6, src, dst, protocol kind, src_port, dst_port, payload len, fill).
    type Generated = (bool, [u8; 16], [u8; 16], usize, u16, u16, usize, u8);

    fn generated() -> impl Strategy<Value = Generated> {
        (
            any::<bool>(),
            any::<[u8; 16]>(),
            any::<[u8; 16]>(),
            0usize..6,
            any::<u16>(),
            any::<u16>(),
            prop_oneof![0usize..64, 0usize..=65535],
            any::<u8>(),
        )
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2000)) {
            exercise(&bytes);
        }

        #[test]
        fn arbitrary_bytes_with_an_ip_version_never_panic(
            version in prop_oneof![Just(0x45u8), Just(0x46), Just(0x4f), Just(0x60)],
            bytes in prop::collection::vec(any::<u8>(), 0..2000),
        ) {
            let mut packet = vec![version];
            packet.extend_from_slice(&bytes);
            exercise(&packet);
        }

        #[test]
        fn mutated_golden_packets_never_panic(packet in mutated_golden()) {
            exercise(&packet);
        }

        #[test]
        fn generated_packets_parse_back(
            (is_v6, src, dst, kind, src_port, dst_port, len, fill) in generated()
        ) {
            let icmp = if is_v6 { PROTO_ICMPV6 } else { PROTO_ICMP };
            // Kinds 3..6 are protocols without ports we know of (GRE, SCTP, OSPF).
            let protocol = [PROTO_TCP, PROTO_UDP, icmp, 47, 132, 89][kind];
            let (transport_len, ports) = match protocol {
                PROTO_TCP => (20, (src_port, dst_port)),
                PROTO_UDP => (8, (src_port, dst_port)),
                p if p == icmp => (8, (src_port, 0)),
                _ => (0, (0, 0)),
            };
            let ip_len = if is_v6 { 40 } else { 20 };
            let max_payload = if is_v6 { 65535 - transport_len } else { 65535 - 20 - transport_len };
            let payload: Vec<u8> = (0..len % (max_payload + 1))
                .map(|i| (i as u8).wrapping_mul(fill))
                .collect();
            let (packet, src, dst) = if is_v6 {
                let packet = ipv6_packet(src, dst, protocol, src_port, dst_port, &payload);
                (packet, IpAddr::from(src), IpAddr::from(dst))
            } else {
                let (s, d) = ([src[0], src[1], src[2], src[3]], [dst[0], dst[1], dst[2], dst[3]]);
                let packet = ipv4_packet(s, d, protocol, src_port, dst_port, &payload);
                prop_assert!(Ipv4Packet::new_checked(&packet[..]).unwrap().verify_checksum());
                (packet, IpAddr::from(s), IpAddr::from(d))
            };
            let info = inspect(&packet).unwrap();
            prop_assert_eq!(info.flow, key(src, dst, protocol, ports, false));
            prop_assert_eq!(info.payload_offset, ip_len + transport_len);
            prop_assert_eq!(&packet[info.payload_offset..], &payload[..]);
        }

        #[test]
        fn flow_hash_is_deterministic_and_shards_in_range(
            (is_v6, src, dst, protocol, src_port, dst_port, fragment)
                in (any::<bool>(), any::<[u8; 16]>(), any::<[u8; 16]>(), any::<u8>(),
                    any::<u16>(), any::<u16>(), any::<bool>()),
            shards in 1usize..=256,
        ) {
            let (src, dst) = if is_v6 {
                (IpAddr::from(src), IpAddr::from(dst))
            } else {
                (ip4([src[0], src[1], src[2], src[3]]), ip4([dst[0], dst[1], dst[2], dst[3]]))
            };
            let k = key(src, dst, protocol, (src_port, dst_port), fragment);
            let copy = k;
            prop_assert_eq!(k.hash(), copy.hash());
            prop_assert_eq!(k.hash(), k.hash());
            prop_assert!(shard_for(k.hash(), shards) < shards);
        }
    }
}
