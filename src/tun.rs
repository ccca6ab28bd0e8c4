//! The TUN device: one kernel interface, one queue (file descriptor) per shard, with virtio-net
//! offload so a read can return a whole GSO super-packet.
//!
//! # Why raw reads instead of tun-rs's `recv_multiple` / `send_multiple`
//!
//! tun-rs ports wireguard-go's offload path: `recv_multiple` cuts every super-packet into
//! MTU-sized packets and `send_multiple` + `GROTable` glue MTU-sized packets back together
//! before writing. sluice wants the opposite: the super-packet is the best compression block
//! there is, so it crosses the tunnel whole with its [`GsoMeta`] and the far kernel segments it.
//! Cutting and re-coalescing would only cost CPU and lose the block. So [`TunQueue::recv`] is a
//! plain scatter read (virtio header into a stack array, IP packet straight into the caller's
//! buffer, no copy) and [`TunQueue::send`] a gather write of the rebuilt header and the packet.
//! tun-rs still does the device work: `TUNSETIFF` with `IFF_VNET_HDR` / `IFF_MULTI_QUEUE`,
//! `TUNSETOFFLOAD` (TSO4/6 + checksum, plus USO4/6 where the kernel has it), a queue per
//! `try_clone`, tokio registration and MTU.
//!
//! # Offload self-test and fallback
//!
//! [`TunDevice::create`] with offload asked for opens the first queue with offload and writes a
//! probe: a two-segment TCP/IPv4 super-packet with a partial checksum (from and to
//! 192.0.2.0/24, TEST-NET-1) whose IPv4 header checksum is deliberately wrong. The kernel checks
//! the virtio header when the write enters the TUN driver (that is where kernels that cannot take
//! coalesced writes answer `EINVAL`) and then drops the packet at the IP layer for its header
//! checksum, so the probe goes nowhere. If `TUNSETOFFLOAD` or the probe fails, the queue is
//! closed (deleting the device), it is created again without offload, and one warning is logged.
//!
//! A device without offload still accepts metadata in [`TunQueue::send`]: it finishes partial
//! checksums and segments super-packets in software ([`gso::Segments`]), so a peer with offload
//! can talk to one without.
//!
//! Closing every queue of a device deletes it (sluice never makes it persistent), and with it
//! every address and route through it.

pub mod gso;

use std::io::{self, IoSlice, IoSliceMut};
use std::sync::atomic::{AtomicU64, Ordering};

pub use gso::{GsoKind, GsoMeta, GsoMetaError, PartialChecksum};

use gso::VIRTIO_NET_HDR_LEN;

/// Largest packet a queue with offload can return: a 64 KiB IP super-packet.
pub const MAX_SUPER_PACKET: usize = 65_535;

/// What the device is to look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunConfig {
    /// Interface name (at most 15 bytes).
    pub name: String,
    /// Interface MTU: the largest plain packet the kernel routes into the device.
    pub mtu: u16,
    /// Number of queues to open, one per shard; at least 1.
    pub queues: usize,
    /// Ask for TSO/GSO offload (falls back to plain packets when the kernel refuses).
    pub offload: bool,
}

/// The offload a device ended up with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Offload {
    /// TCP super-packets (TSO4/TSO6) and partial checksums: the virtio-net header is in use.
    pub tcp: bool,
    /// UDP super-packets (USO4/USO6, Linux 6.2+) as well.
    pub udp: bool,
}

/// Errors from creating a TUN device.
#[derive(Debug, thiserror::Error)]
pub enum TunError {
    /// The configuration cannot describe a device.
    #[error("invalid TUN configuration for {name:?}: {reason}")]
    InvalidConfig {
        /// Device name from the configuration.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `TUNSETIFF` (or MTU setting) failed: no permission, name taken, no `/dev/net/tun`...
    #[error("cannot create TUN device {name:?} (offload {offload})")]
    Create {
        /// Device name.
        name: String,
        /// Whether offload was being asked for.
        offload: bool,
        /// The kernel's answer.
        source: io::Error,
    },
    /// Opening an additional queue (`IFF_MULTI_QUEUE`) failed.
    #[error("cannot open queue {queue} of TUN device {name:?}")]
    OpenQueue {
        /// Device name.
        name: String,
        /// Index of the queue that failed.
        queue: usize,
        /// The kernel's answer.
        source: io::Error,
    },
    /// The device's interface index could not be read.
    #[error("cannot read the interface index of TUN device {name:?}")]
    Index {
        /// Device name.
        name: String,
        /// The kernel's answer.
        source: io::Error,
    },
}

/// One packet read from a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// Length of the IP packet at the front of the caller's buffer.
    pub len: usize,
    /// Offload metadata, `None` for a plain packet with finished checksums.
    pub gso: Option<GsoMeta>,
}

/// A TUN device and its open queues.
#[derive(Debug)]
pub struct TunDevice {
    /// Interface name.
    name: String,
    /// Interface index, for netlink.
    index: u32,
    /// Offload in effect on every queue.
    offload: Offload,
    /// The queues; the device lives as long as any of them is open.
    queues: Vec<TunQueue>,
}

/// One queue of a TUN device: a file descriptor the kernel spreads flows over.
pub struct TunQueue {
    /// The tokio-registered descriptor.
    device: tun_rs::AsyncDevice,
    /// Offload in effect (same on every queue of a device).
    offload: Offload,
    /// Packets dropped on read because the kernel's virtio header made no sense to us.
    malformed: AtomicU64,
}

impl std::fmt::Debug for TunQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunQueue")
            .field("offload", &self.offload)
            .field("malformed", &self.malformed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl TunDevice {
    /// Creates the device and opens `config.queues` queues, with offload if asked for and the
    /// kernel accepts it (see the module doc for the self-test).
    ///
    /// Must run inside a tokio runtime with IO enabled, in the network namespace the device
    /// belongs to.
    ///
    /// # Errors
    /// [`TunError::InvalidConfig`] for an empty or too long name or zero queues,
    /// [`TunError::Create`] / [`TunError::OpenQueue`] / [`TunError::Index`] from the kernel.
    ///
    /// # Panics
    /// Outside a tokio runtime (tokio's `AsyncFd` requires one).
    pub fn create(config: &TunConfig) -> Result<TunDevice, TunError> {
        let invalid = |reason| TunError::InvalidConfig {
            name: config.name.clone(),
            reason,
        };
        if config.name.is_empty() || config.name.len() > 15 {
            return Err(invalid("the name must be 1 to 15 bytes"));
        }
        if config.queues == 0 {
            return Err(invalid("at least one queue is needed"));
        }
        let first = if config.offload {
            match open_with_offload(config) {
                Ok(first) => Some(first),
                Err(error) => {
                    tracing::warn!(
                        device = %config.name,
                        %error,
                        "TUN offload refused by the kernel; falling back to plain packets"
                    );
                    None
                }
            }
        } else {
            None
        };
        let create_error = |offload| {
            let name = config.name.clone();
            move |source| TunError::Create {
                name,
                offload,
                source,
            }
        };
        let first = match first {
            Some(first) => first,
            None => open_first(config, false).map_err(create_error(false))?,
        };
        // Registered with tokio only now: the probe above needs a plain blocking write.
        let first = tun_rs::AsyncDevice::new(first).map_err(create_error(config.offload))?;
        let offload = Offload {
            tcp: first.tcp_gso(),
            udp: first.udp_gso(),
        };
        let index = first.if_index().map_err(|source| TunError::Index {
            name: config.name.clone(),
            source,
        })?;
        let mut devices = Vec::with_capacity(config.queues);
        for queue in 1..config.queues {
            let clone = first.try_clone().map_err(|source| TunError::OpenQueue {
                name: config.name.clone(),
                queue,
                source,
            })?;
            devices.push(clone);
        }
        devices.insert(0, first);
        let queues = devices
            .into_iter()
            .map(|device| TunQueue {
                device,
                offload,
                malformed: AtomicU64::new(0),
            })
            .collect();
        Ok(TunDevice {
            name: config.name.clone(),
            index,
            offload,
            queues,
        })
    }

    /// Interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Interface index (for netlink).
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The offload in effect.
    pub fn offload(&self) -> Offload {
        self.offload
    }

    /// The open queues, one per shard.
    pub fn queues(&self) -> &[TunQueue] {
        &self.queues
    }

    /// Hands the queues out (e.g. one to each shard task); the device is deleted when the
    /// last one is dropped.
    pub fn into_queues(self) -> Vec<TunQueue> {
        self.queues
    }
}

/// Opens the first queue with offload and runs the coalesced-write probe on it.
fn open_with_offload(config: &TunConfig) -> io::Result<tun_rs::SyncDevice> {
    let device = open_first(config, true)?;
    if !device.tcp_gso() {
        return Err(io::Error::other("the device has no virtio-net header"));
    }
    let probe = offload_probe();
    let meta = probe_meta();
    let hdr_len = meta.check(&probe).map_err(io::Error::other)?;
    let hdr = meta.to_virtio(hdr_len);
    let written = device.send_vectored(&[IoSlice::new(&hdr), IoSlice::new(&probe)])?;
    if written != hdr.len() + probe.len() {
        return Err(io::Error::other("short coalesced write"));
    }
    // Dropping `device` on error closes its only queue, which deletes the device.
    Ok(device)
}

/// Creates the device and opens its first queue, blocking (a TUN write never waits).
fn open_first(config: &TunConfig, offload: bool) -> io::Result<tun_rs::SyncDevice> {
    tun_rs::DeviceBuilder::new()
        .name(config.name.clone())
        .mtu(config.mtu)
        .offload(offload)
        .multi_queue(config.queues > 1)
        .build_sync()
}

/// Payload bytes per segment of the offload probe.
const PROBE_SEGMENT: u16 = 8;

/// The metadata the probe is written with: TCP/IPv4 segmentation, checksum of the TCP header
/// (20 bytes into the packet, checksum field 16 bytes into TCP) left to the kernel.
fn probe_meta() -> GsoMeta {
    GsoMeta {
        kind: GsoKind::TcpV4,
        ecn: false,
        segment_size: PROBE_SEGMENT,
        checksum: Some(PartialChecksum {
            start: 20,
            offset: 16,
        }),
    }
}

/// The offload self-test packet: TCP/IPv4 192.0.2.1 -> 192.0.2.2 carrying two segments, with
/// the pseudo-header sum in the TCP checksum field, and a wrong IPv4 header checksum so the IP
/// layer drops it right after the TUN driver accepted it.
fn offload_probe() -> [u8; 56] {
    let mut p = [0u8; 56];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&56u16.to_be_bytes());
    p[6] = 0x40; // DF
    p[8] = 1; // TTL
    p[9] = 6; // TCP
    p[10..12].copy_from_slice(&[0xde, 0xad]); // wrong on purpose (see above)
    p[12..16].copy_from_slice(&[192, 0, 2, 1]);
    p[16..20].copy_from_slice(&[192, 0, 2, 2]);
    p[20..22].copy_from_slice(&9u16.to_be_bytes()); // discard
    p[22..24].copy_from_slice(&9u16.to_be_bytes());
    p[32] = 5 << 4;
    p[33] = 0x10; // ACK
    // Pseudo-header sum: addresses, protocol, TCP length (36).
    let pseudo: u32 = 0xc000 + 0x0201 + 0xc000 + 0x0202 + 6 + 36;
    let pseudo = (pseudo & 0xffff) + (pseudo >> 16);
    p[36..38].copy_from_slice(&(pseudo as u16).to_be_bytes());
    p
}

impl TunQueue {
    /// The buffer length [`TunQueue::recv`] needs to never lose a packet.
    pub fn recv_buffer_len(&self) -> usize {
        MAX_SUPER_PACKET
    }

    /// The offload in effect.
    pub fn offload(&self) -> Offload {
        self.offload
    }

    /// Packets dropped on read because their virtio-net header was not understood.
    pub fn malformed(&self) -> u64 {
        self.malformed.load(Ordering::Relaxed)
    }

    /// Reads one IP packet (with offload: possibly a super-packet up to
    /// [`MAX_SUPER_PACKET`]) into the front of `buf`.
    ///
    /// # Errors
    /// The read's error. A `buf` shorter than the packet loses it (the read fails or is cut
    /// short), so size it with [`TunQueue::recv_buffer_len`].
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<Received> {
        if !self.offload.tcp {
            let len = self.device.recv(buf).await?;
            return Ok(Received { len, gso: None });
        }
        loop {
            let mut hdr = [0u8; VIRTIO_NET_HDR_LEN];
            let n = {
                let mut bufs = [IoSliceMut::new(&mut hdr), IoSliceMut::new(buf)];
                self.device.recv_vectored(&mut bufs).await?
            };
            let Some(len) = n.checked_sub(VIRTIO_NET_HDR_LEN) else {
                self.malformed.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            match GsoMeta::from_virtio(&hdr) {
                Ok(gso) => return Ok(Received { len, gso }),
                Err(_) => {
                    self.malformed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Writes one IP packet, with the offload metadata it was read with on the far side.
    ///
    /// With offload, a super-packet is written whole and the kernel segments it. Without
    /// (or for UDP super-packets on a kernel without USO), partial checksums are finished and
    /// super-packets cut here.
    ///
    /// # Errors
    /// [`io::ErrorKind::InvalidInput`] wrapping a [`GsoMetaError`] when `gso` does not fit
    /// `packet` (count and drop: it came from the peer), otherwise the write's error.
    pub async fn send(&self, packet: &[u8], gso: Option<GsoMeta>) -> io::Result<()> {
        let meta = gso.filter(|meta| !meta.is_plain());
        let invalid = |e: GsoMetaError| io::Error::new(io::ErrorKind::InvalidInput, e);
        let Some(meta) = meta else {
            if self.offload.tcp {
                let hdr = [0u8; VIRTIO_NET_HDR_LEN];
                self.device
                    .send_vectored(&[IoSlice::new(&hdr), IoSlice::new(packet)])
                    .await?;
            } else {
                self.device.send(packet).await?;
            }
            return Ok(());
        };
        let hdr_len = meta.check(packet).map_err(invalid)?;
        let kernel_segments = match meta.kind {
            GsoKind::None => self.offload.tcp,
            GsoKind::TcpV4 | GsoKind::TcpV6 => self.offload.tcp,
            GsoKind::Udp => self.offload.udp,
        };
        if kernel_segments {
            let hdr = meta.to_virtio(hdr_len);
            self.device
                .send_vectored(&[IoSlice::new(&hdr), IoSlice::new(packet)])
                .await?;
            return Ok(());
        }
        // A zeroed virtio header says "plain packet" on an offload device; none otherwise.
        let plain_hdr = [0u8; VIRTIO_NET_HDR_LEN];
        let plain_hdr: &[u8] = if self.offload.tcp { &plain_hdr } else { &[] };
        if meta.kind == GsoKind::None {
            // check() put the field inside the packet.
            let Some(csum) = meta.checksum else {
                return Ok(());
            };
            let field = usize::from(csum.start) + usize::from(csum.offset);
            let value = gso::complete_checksum(packet, csum).to_be_bytes();
            self.device
                .send_vectored(&[
                    IoSlice::new(plain_hdr),
                    IoSlice::new(&packet[..field]),
                    IoSlice::new(&value),
                    IoSlice::new(&packet[field + 2..]),
                ])
                .await?;
            return Ok(());
        }
        let mut segments = gso::Segments::new(packet, meta).map_err(invalid)?;
        let mut header = [0u8; gso::MAX_SEGMENT_HEADER];
        while let Some((len, payload)) = segments.next_segment(&mut header) {
            self.device
                .send_vectored(&[
                    IoSlice::new(plain_hdr),
                    IoSlice::new(&header[..len]),
                    IoSlice::new(&packet[payload]),
                ])
                .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offload_probe_is_a_valid_super_packet_with_a_bad_ip_checksum() {
        let probe = offload_probe();
        let meta = probe_meta();
        assert_eq!(meta.check(&probe), Ok(40));
        // Two segments of payload: a real GSO write, not a "too small to be GSO" one.
        assert_eq!(probe.len() - 40, 2 * usize::from(PROBE_SEGMENT));
        let mut sum: u32 = probe[..20]
            .chunks(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
            .sum();
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        assert_ne!(sum, 0xffff, "the IPv4 header checksum must be wrong");
    }
}
