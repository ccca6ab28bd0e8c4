//! Offload metadata of one TUN packet: what the kernel said about it in the virtio-net header,
//! reduced to what the far gateway needs to write it back, plus its tunnel encoding.
//!
//! With offload on, a TUN read returns a `virtio_net_hdr` before the IP packet. The header says
//! two independent things, and [`GsoMeta`] keeps both:
//!
//! - **Segmentation** (`gso_type`, `gso_size`): the packet is a super-packet of one TCP (or UDP)
//!   flow, up to 64 KiB, that the kernel would have cut into `gso_size`-byte payloads. The far
//!   side writes it with the same header and its kernel does the cutting.
//! - **Partial checksum** (`VIRTIO_NET_HDR_F_NEEDS_CSUM`, `csum_start`, `csum_offset`): the
//!   transport checksum field holds only the pseudo-header sum; whoever transmits must finish it
//!   over `packet[csum_start..]` and store it at `csum_start + csum_offset`. Every super-packet
//!   has one, and so do plain TCP/UDP packets from local sockets. Carrying it is cheaper than
//!   finishing it here: the far kernel finishes it (or, for local delivery, never needs it).
//!
//! `hdr_len` is not carried: the sender derives it from the packet (IP header + transport
//! header), because the kernel's value can be the whole first segment on the forwarding path.
//!
//! A device without offload cannot take either kind of metadata, so [`complete_checksum`] and
//! [`Segments`] do in software what the kernel would have done.
//!
//! # Tunnel encoding
//!
//! [`GsoMeta::encode`] writes 1 to [`GsoMeta::MAX_ENCODED_LEN`] (6) bytes, big-endian:
//!
//! ```text
//! byte 0   flags: bits 0-1 kind (0 none, 1 TCP/IPv4, 2 TCP/IPv6, 3 UDP),
//!                 bit 2 ECN (TCP kinds only), bit 3 partial checksum follows,
//!                 bits 4-7 zero (reserved; decode rejects them)
//! u16      segment size (gso_size), nonzero      -- only if kind != none
//! u16, u8  checksum start, checksum offset        -- only if bit 3
//! ```

use std::fmt;

/// Length of the `virtio_net_hdr` that precedes each packet on an offload TUN device.
pub(crate) const VIRTIO_NET_HDR_LEN: usize = 10;
const _: () = assert!(VIRTIO_NET_HDR_LEN == tun_rs::VIRTIO_NET_HDR_LEN);

const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
const VIRTIO_NET_HDR_GSO_NONE: u8 = 0;
const VIRTIO_NET_HDR_GSO_TCPV4: u8 = 1;
const VIRTIO_NET_HDR_GSO_TCPV6: u8 = 4;
const VIRTIO_NET_HDR_GSO_UDP_L4: u8 = 5;
const VIRTIO_NET_HDR_GSO_ECN: u8 = 0x80;

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
/// Offset of the checksum inside a TCP header; the kernel rejects TCP GSO with any other.
const TCP_CSUM_OFFSET: u16 = 16;
/// Offset of the checksum inside a UDP header; the kernel rejects UDP GSO with any other.
const UDP_CSUM_OFFSET: u16 = 6;

/// How a super-packet is to be segmented.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GsoKind {
    /// Not a super-packet (the metadata only carries a partial checksum).
    None,
    /// TCP over IPv4 (TSO4).
    TcpV4,
    /// TCP over IPv6 (TSO6).
    TcpV6,
    /// UDP over IPv4 or IPv6 (USO, Linux 6.2+).
    Udp,
}

/// A transport checksum the kernel left unfinished (`CHECKSUM_PARTIAL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PartialChecksum {
    /// Offset of the transport header in the IP packet; the sum covers `packet[start..]`.
    pub start: u16,
    /// Offset of the checksum field from `start` (16 for TCP, 6 for UDP).
    pub offset: u16,
}

/// Offload metadata of one packet read from or written to a TUN device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GsoMeta {
    /// Segmentation to perform; [`GsoKind::None`] for a single packet.
    pub kind: GsoKind,
    /// TCP with ECN: segmentation must keep CWR on the first segment only.
    pub ecn: bool,
    /// Transport payload bytes per segment (`gso_size`); 0 when `kind` is [`GsoKind::None`].
    pub segment_size: u16,
    /// The unfinished transport checksum, if any.
    pub checksum: Option<PartialChecksum>,
}

/// Why a [`GsoMeta`] could not be decoded or does not fit the packet it came with.
///
/// Both come from the peer or the kernel: count and drop, never panic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GsoMetaError {
    /// The input ends before the fields its flags announce.
    Truncated,
    /// A reserved flag bit is set, or ECN on a non-TCP kind.
    ReservedFlags,
    /// A super-packet with segment size 0.
    ZeroSegmentSize,
    /// The checksum start/offset point outside the packet, or do not fit the protocol.
    ChecksumOutOfRange,
    /// The packet is not the IP version or transport protocol the kind says.
    PacketMismatch,
    /// A virtio-net header with a GSO type sluice does not carry (UFO, unknown).
    UnsupportedGsoType,
}

impl fmt::Display for GsoMetaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Truncated => "offload metadata is truncated",
            Self::ReservedFlags => "offload metadata has reserved flags set",
            Self::ZeroSegmentSize => "super-packet with segment size 0",
            Self::ChecksumOutOfRange => "partial checksum outside the packet",
            Self::PacketMismatch => "packet does not match its offload metadata",
            Self::UnsupportedGsoType => "unsupported virtio-net GSO type",
        })
    }
}

impl std::error::Error for GsoMetaError {}

const KIND_MASK: u8 = 0b0011;
const FLAG_ECN: u8 = 0b0100;
const FLAG_CSUM: u8 = 0b1000;

impl GsoMeta {
    /// The longest encoding [`GsoMeta::encode`] writes.
    pub const MAX_ENCODED_LEN: usize = 6;

    /// Writes the tunnel encoding (see the module doc) into `out` and returns its length.
    ///
    /// # Panics
    /// If `out` is shorter than the encoding; [`GsoMeta::MAX_ENCODED_LEN`] bytes always fit.
    /// Also if the checksum offset exceeds 255 (no transport protocol has one that large;
    /// [`GsoMeta::check`] rejects it).
    pub fn encode(&self, out: &mut [u8]) -> usize {
        let kind = match self.kind {
            GsoKind::None => 0,
            GsoKind::TcpV4 => 1,
            GsoKind::TcpV6 => 2,
            GsoKind::Udp => 3,
        };
        let mut flags = kind;
        if self.ecn {
            flags |= FLAG_ECN;
        }
        if self.checksum.is_some() {
            flags |= FLAG_CSUM;
        }
        out[0] = flags;
        let mut len = 1;
        if self.kind != GsoKind::None {
            out[len..len + 2].copy_from_slice(&self.segment_size.to_be_bytes());
            len += 2;
        }
        if let Some(csum) = self.checksum {
            out[len..len + 2].copy_from_slice(&csum.start.to_be_bytes());
            out[len + 2] = u8::try_from(csum.offset).expect("checksum offsets are 6 or 16");
            len += 3;
        }
        len
    }

    /// Reads a tunnel encoding from the front of `input`; returns it and the bytes consumed.
    ///
    /// # Errors
    /// [`GsoMetaError::Truncated`], [`GsoMetaError::ReservedFlags`] or
    /// [`GsoMetaError::ZeroSegmentSize`]; whether the metadata fits its packet is
    /// [`GsoMeta::check`]'s job.
    pub fn decode(input: &[u8]) -> Result<(GsoMeta, usize), GsoMetaError> {
        let &flags = input.first().ok_or(GsoMetaError::Truncated)?;
        if flags & !(KIND_MASK | FLAG_ECN | FLAG_CSUM) != 0 {
            return Err(GsoMetaError::ReservedFlags);
        }
        let kind = match flags & KIND_MASK {
            0 => GsoKind::None,
            1 => GsoKind::TcpV4,
            2 => GsoKind::TcpV6,
            _ => GsoKind::Udp,
        };
        let ecn = flags & FLAG_ECN != 0;
        if ecn && !matches!(kind, GsoKind::TcpV4 | GsoKind::TcpV6) {
            return Err(GsoMetaError::ReservedFlags);
        }
        let mut len = 1;
        let mut segment_size = 0;
        if kind != GsoKind::None {
            let bytes = input.get(len..len + 2).ok_or(GsoMetaError::Truncated)?;
            segment_size = u16::from_be_bytes([bytes[0], bytes[1]]);
            if segment_size == 0 {
                return Err(GsoMetaError::ZeroSegmentSize);
            }
            len += 2;
        }
        let mut checksum = None;
        if flags & FLAG_CSUM != 0 {
            let bytes = input.get(len..len + 3).ok_or(GsoMetaError::Truncated)?;
            checksum = Some(PartialChecksum {
                start: u16::from_be_bytes([bytes[0], bytes[1]]),
                offset: u16::from(bytes[2]),
            });
            len += 3;
        }
        let meta = GsoMeta {
            kind,
            ecn,
            segment_size,
            checksum,
        };
        Ok((meta, len))
    }

    /// Whether this metadata asks for nothing (a plain packet with finished checksums).
    pub fn is_plain(&self) -> bool {
        self.kind == GsoKind::None && self.checksum.is_none()
    }

    /// Checks that the metadata fits `packet` well enough to hand both to a kernel or to the
    /// software fallback: IP version and transport protocol match the kind, the checksum field
    /// lies inside the packet, and a super-packet's headers are complete. Returns the length
    /// of the IP + transport headers for a super-packet (the virtio `hdr_len`), else 0.
    ///
    /// # Errors
    /// [`GsoMetaError::PacketMismatch`] or [`GsoMetaError::ChecksumOutOfRange`].
    pub fn check(&self, packet: &[u8]) -> Result<usize, GsoMetaError> {
        if let Some(csum) = self.checksum {
            let field = usize::from(csum.start) + usize::from(csum.offset);
            if csum.offset > u16::from(u8::MAX) || field + 2 > packet.len() {
                return Err(GsoMetaError::ChecksumOutOfRange);
            }
        }
        if self.kind == GsoKind::None {
            return Ok(0);
        }
        if self.segment_size == 0 {
            return Err(GsoMetaError::ZeroSegmentSize);
        }
        let version = packet.first().ok_or(GsoMetaError::PacketMismatch)? >> 4;
        let (ip_len, protocol) = match version {
            4 => {
                let ihl = usize::from(packet[0] & 0x0f) * 4;
                let protocol = *packet.get(9).ok_or(GsoMetaError::PacketMismatch)?;
                (ihl, protocol)
            }
            6 => (40, *packet.get(6).ok_or(GsoMetaError::PacketMismatch)?),
            _ => return Err(GsoMetaError::PacketMismatch),
        };
        let expected_protocol = match (self.kind, version) {
            (GsoKind::TcpV4, 4) | (GsoKind::TcpV6, 6) => IPPROTO_TCP,
            (GsoKind::Udp, _) => IPPROTO_UDP,
            _ => return Err(GsoMetaError::PacketMismatch),
        };
        // The transport header starts at csum_start when the kernel gave one (it skips IPv6
        // extension headers); without one, only a header with no extensions is understood.
        let l4 = match self.checksum {
            Some(csum) => usize::from(csum.start),
            None if protocol == expected_protocol => ip_len,
            None => return Err(GsoMetaError::PacketMismatch),
        };
        if ip_len < 20 || l4 < ip_len {
            return Err(GsoMetaError::PacketMismatch);
        }
        let l4_len = if expected_protocol == IPPROTO_TCP {
            let offset = *packet.get(l4 + 12).ok_or(GsoMetaError::PacketMismatch)?;
            usize::from(offset >> 4) * 4
        } else {
            8
        };
        if l4_len < 8 || l4 + l4_len > packet.len() {
            return Err(GsoMetaError::PacketMismatch);
        }
        if let Some(csum) = self.checksum {
            let wanted = if expected_protocol == IPPROTO_TCP {
                TCP_CSUM_OFFSET
            } else {
                UDP_CSUM_OFFSET
            };
            if csum.offset != wanted {
                return Err(GsoMetaError::ChecksumOutOfRange);
            }
        }
        Ok(l4 + l4_len)
    }

    /// Reads the metadata of a virtio-net header as the kernel wrote it (native endian, as
    /// for any TUN device that did not ask for TUNSETVNETLE/BE). `None` for a plain packet.
    ///
    /// # Errors
    /// [`GsoMetaError::UnsupportedGsoType`] or [`GsoMetaError::ZeroSegmentSize`].
    pub(crate) fn from_virtio(
        hdr: &[u8; VIRTIO_NET_HDR_LEN],
    ) -> Result<Option<Self>, GsoMetaError> {
        let flags = hdr[0];
        let gso_type = hdr[1];
        let segment_size = u16::from_ne_bytes([hdr[4], hdr[5]]);
        let csum_start = u16::from_ne_bytes([hdr[6], hdr[7]]);
        let csum_offset = u16::from_ne_bytes([hdr[8], hdr[9]]);
        let ecn = gso_type & VIRTIO_NET_HDR_GSO_ECN != 0;
        let kind = match gso_type & !VIRTIO_NET_HDR_GSO_ECN {
            VIRTIO_NET_HDR_GSO_NONE => GsoKind::None,
            VIRTIO_NET_HDR_GSO_TCPV4 => GsoKind::TcpV4,
            VIRTIO_NET_HDR_GSO_TCPV6 => GsoKind::TcpV6,
            VIRTIO_NET_HDR_GSO_UDP_L4 => GsoKind::Udp,
            _ => return Err(GsoMetaError::UnsupportedGsoType),
        };
        if ecn && !matches!(kind, GsoKind::TcpV4 | GsoKind::TcpV6) {
            return Err(GsoMetaError::UnsupportedGsoType);
        }
        if kind != GsoKind::None && segment_size == 0 {
            return Err(GsoMetaError::ZeroSegmentSize);
        }
        let checksum = (flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0).then_some(PartialChecksum {
            start: csum_start,
            offset: csum_offset,
        });
        let meta = GsoMeta {
            kind,
            ecn,
            segment_size: if kind == GsoKind::None {
                0
            } else {
                segment_size
            },
            checksum,
        };
        Ok((!meta.is_plain()).then_some(meta))
    }

    /// Builds the virtio-net header for writing `self` with a packet whose IP + transport
    /// headers are `hdr_len` bytes long (from [`GsoMeta::check`]).
    pub(crate) fn to_virtio(self, hdr_len: usize) -> [u8; VIRTIO_NET_HDR_LEN] {
        let mut gso_type = match self.kind {
            GsoKind::None => VIRTIO_NET_HDR_GSO_NONE,
            GsoKind::TcpV4 => VIRTIO_NET_HDR_GSO_TCPV4,
            GsoKind::TcpV6 => VIRTIO_NET_HDR_GSO_TCPV6,
            GsoKind::Udp => VIRTIO_NET_HDR_GSO_UDP_L4,
        };
        if self.ecn {
            gso_type |= VIRTIO_NET_HDR_GSO_ECN;
        }
        let (flags, start, offset) = match self.checksum {
            Some(csum) => (VIRTIO_NET_HDR_F_NEEDS_CSUM, csum.start, csum.offset),
            None => (0, 0, 0),
        };
        // hdr_len fits: check() derived it from a packet of at most 64 KiB headers-first.
        let hdr_len = u16::try_from(hdr_len).unwrap_or(u16::MAX);
        let mut hdr = [0; VIRTIO_NET_HDR_LEN];
        hdr[0] = flags;
        hdr[1] = gso_type;
        hdr[2..4].copy_from_slice(&hdr_len.to_ne_bytes());
        hdr[4..6].copy_from_slice(&self.segment_size.to_ne_bytes());
        hdr[6..8].copy_from_slice(&start.to_ne_bytes());
        hdr[8..10].copy_from_slice(&offset.to_ne_bytes());
        hdr
    }
}

/// One's-complement sum of `bytes` as big-endian 16-bit words, added to `sum` (not folded).
fn sum_words(mut sum: u64, bytes: &[u8]) -> u64 {
    let mut chunks = bytes.chunks_exact(2);
    for word in &mut chunks {
        sum += u64::from(u16::from_be_bytes([word[0], word[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u64::from(*last) << 8;
    }
    sum
}

/// Folds a one's-complement sum to 16 bits and complements it; a zero result becomes 0xffff
/// (equivalent for TCP, and required for UDP, where 0 means "no checksum").
fn finish(mut sum: u64) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    // The loop leaves at most 16 bits.
    match !(sum as u16) {
        0 => 0xffff,
        csum => csum,
    }
}

/// The finished transport checksum of `packet`, whose field at `start + offset` holds the
/// pseudo-header sum (as the kernel leaves it for `CHECKSUM_PARTIAL`).
///
/// The caller writes the result over that field; the packet itself is not touched, so a
/// borrowed packet can be sent as three slices.
///
/// # Panics
/// If the field lies outside `packet`; [`GsoMeta::check`] rules that out.
pub fn complete_checksum(packet: &[u8], csum: PartialChecksum) -> u16 {
    let start = usize::from(csum.start);
    let field = start + usize::from(csum.offset);
    let pseudo = u16::from_be_bytes([packet[field], packet[field + 1]]);
    let sum = sum_words(u64::from(pseudo), &packet[start..field]);
    finish(sum_words(sum, &packet[field + 2..]))
}

/// Cuts a super-packet into the packets the kernel would have sent, for a device without
/// offload: each item is a header block (IP + transport, with lengths, IDs, sequence numbers,
/// flags and checksums fixed) to be written before a payload range of the super-packet.
pub struct Segments<'a> {
    /// The super-packet being cut.
    packet: &'a [u8],
    /// Its IP + transport header length.
    hdr_len: usize,
    /// Transport header offset.
    l4: usize,
    /// Payload bytes per segment.
    segment_size: usize,
    /// Payload offset of the next segment.
    next: usize,
    /// Index of the next segment (IPv4 ID and TCP sequence advance with it).
    index: u32,
    /// TCP (else UDP).
    tcp: bool,
}

/// Longest IP + transport header a [`Segments`] item carries: 60-byte IPv4 or 40-byte IPv6
/// with extension headers, plus a 60-byte TCP header. Longer headers are refused.
pub const MAX_SEGMENT_HEADER: usize = 256;

impl<'a> Segments<'a> {
    /// Prepares to cut `packet` as `meta` says.
    ///
    /// # Errors
    /// What [`GsoMeta::check`] reports, [`GsoMetaError::PacketMismatch`] if `meta` is not a
    /// super-packet or its headers exceed [`MAX_SEGMENT_HEADER`].
    pub fn new(packet: &'a [u8], meta: GsoMeta) -> Result<Self, GsoMetaError> {
        let hdr_len = meta.check(packet)?;
        if meta.kind == GsoKind::None || hdr_len > MAX_SEGMENT_HEADER {
            return Err(GsoMetaError::PacketMismatch);
        }
        let l4 = match meta.checksum {
            Some(csum) => usize::from(csum.start),
            None if packet[0] >> 4 == 4 => usize::from(packet[0] & 0x0f) * 4,
            None => 40,
        };
        Ok(Segments {
            packet,
            hdr_len,
            l4,
            segment_size: usize::from(meta.segment_size),
            next: hdr_len,
            index: 0,
            tcp: meta.kind != GsoKind::Udp,
        })
    }

    /// Writes the next segment's headers into `header` and returns their length and the
    /// payload range (in the super-packet) that follows them; `None` when done.
    pub fn next_segment(
        &mut self,
        header: &mut [u8; MAX_SEGMENT_HEADER],
    ) -> Option<(usize, std::ops::Range<usize>)> {
        let packet = self.packet;
        // A super-packet without payload still makes one (header-only) segment.
        if self.index > 0 && self.next >= packet.len() {
            return None;
        }
        let payload = self.next..packet.len().min(self.next + self.segment_size);
        let first = self.index == 0;
        let last = payload.end == packet.len();
        let hdr_len = self.hdr_len;
        let l4 = self.l4;
        header[..hdr_len].copy_from_slice(&packet[..hdr_len]);
        let total = hdr_len + payload.len();
        let l4_total = total - l4;
        // Segment lengths are at most the super-packet's, which came in a u16-length IP packet
        // or a 64 KiB read: the `as u16` casts below cannot truncate.
        let v4 = packet[0] >> 4 == 4;
        if v4 {
            header[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            let id = u16::from_be_bytes([packet[4], packet[5]]).wrapping_add(self.index as u16);
            header[4..6].copy_from_slice(&id.to_be_bytes());
            header[10..12].fill(0);
            let ihl = usize::from(packet[0] & 0x0f) * 4;
            let csum = finish(sum_words(0, &header[..ihl]));
            header[10..12].copy_from_slice(&csum.to_be_bytes());
        } else {
            header[4..6].copy_from_slice(&((total - 40) as u16).to_be_bytes());
        }
        let csum_at = if self.tcp {
            let offset = self.index.wrapping_mul(self.segment_size as u32);
            let seq = u32::from_be_bytes([
                packet[l4 + 4],
                packet[l4 + 5],
                packet[l4 + 6],
                packet[l4 + 7],
            ])
            .wrapping_add(offset);
            header[l4 + 4..l4 + 8].copy_from_slice(&seq.to_be_bytes());
            const FIN: u8 = 0x01;
            const PSH: u8 = 0x08;
            const CWR: u8 = 0x80;
            if !last {
                header[l4 + 13] &= !(FIN | PSH);
            }
            if !first {
                header[l4 + 13] &= !CWR;
            }
            l4 + usize::from(TCP_CSUM_OFFSET)
        } else {
            header[l4 + 4..l4 + 6].copy_from_slice(&(l4_total as u16).to_be_bytes());
            l4 + usize::from(UDP_CSUM_OFFSET)
        };
        // Full checksum: pseudo-header (addresses, protocol, transport length) + header + data.
        header[csum_at..csum_at + 2].fill(0);
        let (addrs, protocol) = if v4 {
            (&packet[12..20], packet[9])
        } else {
            (
                &packet[8..40],
                if self.tcp { IPPROTO_TCP } else { IPPROTO_UDP },
            )
        };
        let mut sum = sum_words(0, addrs);
        sum += u64::from(protocol) + l4_total as u64;
        sum = sum_words(sum, &header[l4..hdr_len]);
        sum = sum_words(sum, &packet[payload.clone()]);
        header[csum_at..csum_at + 2].copy_from_slice(&finish(sum).to_be_bytes());
        self.next = payload.end.max(self.next + 1);
        self.index += 1;
        Some((hdr_len, payload))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Golden bytes pin the tunnel encoding of each shape of metadata.
    #[test]
    fn encoding_golden_bytes() {
        let cases: &[(GsoMeta, &[u8])] = &[
            (
                GsoMeta {
                    kind: GsoKind::TcpV4,
                    ecn: false,
                    segment_size: 1448,
                    checksum: Some(PartialChecksum {
                        start: 20,
                        offset: 16,
                    }),
                },
                &[0x09, 0x05, 0xa8, 0x00, 0x14, 0x10],
            ),
            (
                GsoMeta {
                    kind: GsoKind::TcpV6,
                    ecn: true,
                    segment_size: 1428,
                    checksum: None,
                },
                &[0x06, 0x05, 0x94],
            ),
            (
                GsoMeta {
                    kind: GsoKind::Udp,
                    ecn: false,
                    segment_size: 1200,
                    checksum: Some(PartialChecksum {
                        start: 40,
                        offset: 6,
                    }),
                },
                &[0x0b, 0x04, 0xb0, 0x00, 0x28, 0x06],
            ),
            (
                GsoMeta {
                    kind: GsoKind::None,
                    ecn: false,
                    segment_size: 0,
                    checksum: Some(PartialChecksum {
                        start: 20,
                        offset: 16,
                    }),
                },
                &[0x08, 0x00, 0x14, 0x10],
            ),
        ];
        assert!(!cases.is_empty());
        for (meta, golden) in cases {
            let mut buf = [0; GsoMeta::MAX_ENCODED_LEN];
            let len = meta.encode(&mut buf);
            assert_eq!(&buf[..len], *golden, "{meta:?}");
            let mut input = golden.to_vec();
            input.push(0xee); // whatever follows is not consumed
            assert_eq!(GsoMeta::decode(&input), Ok((*meta, golden.len())));
        }
    }

    #[test]
    fn decode_rejects_bad_input_without_panicking() {
        assert_eq!(GsoMeta::decode(&[]), Err(GsoMetaError::Truncated));
        assert_eq!(GsoMeta::decode(&[0x10]), Err(GsoMetaError::ReservedFlags));
        assert_eq!(
            GsoMeta::decode(&[0x07, 0, 1]),
            Err(GsoMetaError::ReservedFlags)
        );
        assert_eq!(GsoMeta::decode(&[0x01, 0]), Err(GsoMetaError::Truncated));
        assert_eq!(
            GsoMeta::decode(&[0x01, 0, 0]),
            Err(GsoMetaError::ZeroSegmentSize)
        );
        assert_eq!(
            GsoMeta::decode(&[0x08, 0, 20]),
            Err(GsoMetaError::Truncated)
        );
        for flags in 0..=u8::MAX {
            for tail in [&[][..], &[0xff; 5][..], &[0; 5][..]] {
                let mut input = vec![flags];
                input.extend_from_slice(tail);
                if let Ok((meta, len)) = GsoMeta::decode(&input) {
                    let mut buf = [0; GsoMeta::MAX_ENCODED_LEN];
                    let n = meta.encode(&mut buf);
                    assert_eq!(&buf[..n], &input[..len]);
                }
            }
        }
    }

    /// The virtio header conversion round-trips, and a plain header means "no metadata".
    #[test]
    fn virtio_header_round_trip() {
        let meta = GsoMeta {
            kind: GsoKind::TcpV6,
            ecn: false,
            segment_size: 1440,
            checksum: Some(PartialChecksum {
                start: 40,
                offset: 16,
            }),
        };
        let hdr = meta.to_virtio(60);
        assert_eq!(hdr[0], VIRTIO_NET_HDR_F_NEEDS_CSUM);
        assert_eq!(hdr[1], VIRTIO_NET_HDR_GSO_TCPV6);
        assert_eq!(u16::from_ne_bytes([hdr[2], hdr[3]]), 60);
        assert_eq!(GsoMeta::from_virtio(&hdr), Ok(Some(meta)));
        assert_eq!(GsoMeta::from_virtio(&[0; VIRTIO_NET_HDR_LEN]), Ok(None));
        let mut ufo = [0; VIRTIO_NET_HDR_LEN];
        ufo[1] = 3;
        assert_eq!(
            GsoMeta::from_virtio(&ufo),
            Err(GsoMetaError::UnsupportedGsoType)
        );
    }

    /// Checks an IPv4 or IPv6 TCP/UDP packet's checksums the way a receiver does.
    fn verify(packet: &[u8]) {
        let v4 = packet[0] >> 4 == 4;
        let (l4, protocol, addrs) = if v4 {
            let ihl = usize::from(packet[0] & 0x0f) * 4;
            assert_eq!(
                fold(sum_words(0, &packet[..ihl])),
                0xffff,
                "IPv4 header checksum"
            );
            assert_eq!(
                usize::from(u16::from_be_bytes([packet[2], packet[3]])),
                packet.len()
            );
            (ihl, packet[9], &packet[12..20])
        } else {
            assert_eq!(
                usize::from(u16::from_be_bytes([packet[4], packet[5]])),
                packet.len() - 40
            );
            (40, packet[6], &packet[8..40])
        };
        let mut sum = sum_words(0, addrs) + u64::from(protocol) + (packet.len() - l4) as u64;
        sum = sum_words(sum, &packet[l4..]);
        assert_eq!(fold(sum), 0xffff, "transport checksum");
    }

    fn fold(mut sum: u64) -> u64 {
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum
    }

    /// A super-packet with the pseudo-header sum in its checksum field, as the kernel hands it.
    fn super_packet(v4: bool, tcp: bool, payload: &[u8]) -> (Vec<u8>, PartialChecksum) {
        let l4_len = if tcp { 20 } else { 8 };
        let ip_len = if v4 { 20 } else { 40 };
        let mut p = vec![0u8; ip_len + l4_len];
        let protocol = if tcp { IPPROTO_TCP } else { IPPROTO_UDP };
        let l4_total = l4_len + payload.len();
        if v4 {
            p[0] = 0x45;
            p[2..4].copy_from_slice(&((ip_len + l4_total) as u16).to_be_bytes());
            p[4..6].copy_from_slice(&0xfffe_u16.to_be_bytes());
            p[6] = 0x40;
            p[8] = 64;
            p[9] = protocol;
            p[12..16].copy_from_slice(&[10, 0, 0, 1]);
            p[16..20].copy_from_slice(&[10, 0, 0, 2]);
            let csum = finish(sum_words(0, &p[..20]));
            p[10..12].copy_from_slice(&csum.to_be_bytes());
        } else {
            p[0] = 0x60;
            p[4..6].copy_from_slice(&(l4_total as u16).to_be_bytes());
            p[6] = protocol;
            p[7] = 64;
            p[8] = 0xfd;
            p[23] = 1;
            p[24] = 0xfd;
            p[39] = 2;
        }
        p[ip_len..ip_len + 2].copy_from_slice(&4000_u16.to_be_bytes());
        p[ip_len + 2..ip_len + 4].copy_from_slice(&5201_u16.to_be_bytes());
        let offset = if tcp {
            p[ip_len + 4..ip_len + 8].copy_from_slice(&0xffff_f000_u32.to_be_bytes());
            p[ip_len + 12] = 5 << 4;
            p[ip_len + 13] = 0x80 | 0x10 | 0x08 | 0x01; // CWR ACK PSH FIN
            TCP_CSUM_OFFSET
        } else {
            p[ip_len + 4..ip_len + 6].copy_from_slice(&(l4_total as u16).to_be_bytes());
            UDP_CSUM_OFFSET
        };
        p.extend_from_slice(payload);
        let addrs = if v4 { &p[12..20] } else { &p[8..40] };
        let pseudo = fold(sum_words(0, addrs) + u64::from(protocol) + l4_total as u64);
        let at = ip_len + usize::from(offset);
        p[at..at + 2].copy_from_slice(&(pseudo as u16).to_be_bytes());
        let csum = PartialChecksum {
            start: ip_len as u16,
            offset,
        };
        (p, csum)
    }

    #[test]
    fn complete_checksum_matches_a_receiver() {
        for (v4, tcp) in [(true, true), (false, true), (true, false), (false, false)] {
            for len in [0, 1, 7, 1000] {
                let payload: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
                let (mut p, csum) = super_packet(v4, tcp, &payload);
                let value = complete_checksum(&p, csum);
                let at = usize::from(csum.start + csum.offset);
                p[at..at + 2].copy_from_slice(&value.to_be_bytes());
                verify(&p);
            }
        }
    }

    #[test]
    fn segments_are_valid_packets_that_reassemble() {
        for (v4, tcp) in [(true, true), (false, true), (true, false), (false, false)] {
            for len in [1usize, 999, 1000, 1001, 5000] {
                let payload: Vec<u8> = (0..len).map(|i| (i * 13 + 1) as u8).collect();
                let (p, csum) = super_packet(v4, tcp, &payload);
                let kind = match (v4, tcp) {
                    (true, true) => GsoKind::TcpV4,
                    (false, true) => GsoKind::TcpV6,
                    _ => GsoKind::Udp,
                };
                let meta = GsoMeta {
                    kind,
                    ecn: false,
                    segment_size: 1000,
                    checksum: Some(csum),
                };
                let mut segments = Segments::new(&p, meta).expect("well-formed super-packet");
                let mut header = [0; MAX_SEGMENT_HEADER];
                let mut joined = Vec::new();
                let mut count = 0;
                while let Some((hdr_len, range)) = segments.next_segment(&mut header) {
                    let mut seg = header[..hdr_len].to_vec();
                    seg.extend_from_slice(&p[range.clone()]);
                    verify(&seg);
                    assert!(range.len() <= 1000);
                    let l4 = usize::from(csum.start);
                    if tcp {
                        let seq = u32::from_be_bytes(seg[l4 + 4..l4 + 8].try_into().unwrap());
                        assert_eq!(seq, 0xffff_f000_u32.wrapping_add(joined.len() as u32));
                        let flags = seg[l4 + 13];
                        let last = range.end == p.len();
                        assert_eq!(flags & 0x80 != 0, count == 0, "CWR on the first only");
                        assert_eq!(flags & 0x09 != 0, last, "FIN/PSH on the last only");
                    }
                    if v4 {
                        let id = u16::from_be_bytes([seg[4], seg[5]]);
                        assert_eq!(id, 0xfffe_u16.wrapping_add(count));
                    }
                    joined.extend_from_slice(&p[range]);
                    count += 1;
                }
                assert_eq!(joined, payload);
                assert_eq!(usize::from(count), len.div_ceil(1000));
            }
        }
    }

    #[test]
    fn check_rejects_mismatched_packets() {
        let (p, csum) = super_packet(true, true, &[0; 100]);
        let meta = GsoMeta {
            kind: GsoKind::TcpV6,
            ecn: false,
            segment_size: 10,
            checksum: Some(csum),
        };
        assert_eq!(meta.check(&p), Err(GsoMetaError::PacketMismatch));
        let meta = GsoMeta {
            kind: GsoKind::TcpV4,
            ..meta
        };
        assert_eq!(meta.check(&p), Ok(40));
        assert_eq!(meta.check(&p[..30]), Err(GsoMetaError::ChecksumOutOfRange));
        let bad = GsoMeta {
            checksum: Some(PartialChecksum {
                start: 20,
                offset: 6,
            }),
            ..meta
        };
        assert_eq!(bad.check(&p), Err(GsoMetaError::ChecksumOutOfRange));
        assert_eq!(meta.check(&[]), Err(GsoMetaError::ChecksumOutOfRange));
    }
}
