//! The relay's second mode: impairing routed IP packets on a TUN device, so that a path
//! without any tunnel (direct routing) can cross the same impairment as a tunnel's UDP.
//!
//! The relay opens a TUN device, reads every IP packet the kernel routes into it, runs it
//! through the same [`model`](super::model) as the UDP relay and, when its time comes, writes
//! it back into the same device. The kernel then receives it as if it came in on that
//! device, and forwards it on. Which way a packet goes is decided by its destination: inside
//! one of the `up_to` networks is up, anything else is down.
//!
//! # Placing it on a direct path
//!
//! In gateway A's namespace, with LAN A on `lan0`, the WAN on `wan0` and LAN B behind the
//! peer `WAN_B`, policy routing sends each packet through the device once:
//!
//! ```text
//!   ip link set imp0 up txqueuelen 10000             # see below
//!   ip route replace LAN_B dev imp0                  # lanA -> lanB goes into the relay
//!   ip rule add iif wan0 lookup 101                  # lanB -> lanA too ...
//!   ip route add LAN_A dev imp0 table 101
//!   ip rule add iif imp0 lookup 100                  # ... and what the relay writes back
//!   ip route add LAN_B via WAN_B dev wan0 table 100  #     leaves the normal way
//!   ip route add LAN_A dev lan0 table 100
//!   sysctl net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.imp0.rp_filter=0
//! ```
//!
//! and `--up-to LAN_B`. `netns-tests/bench --reliability` sets this up for its direct-routing
//! column, and the netns test `impair_tun_mode_delays_and_drops_routed_packets` checks it.
//!
//! The kernel queues packets for the relay on the device, 500 by default for a TUN device; a
//! TCP burst on a path with tens of milliseconds of delay overflows that before the relay
//! reads it (drops counted as the device's TX `dropped`, not by the relay). Raise
//! `txqueuelen` as above so that only the model drops.
//!
//! The device is opened without offload: the kernel hands over packets of at most the
//! device's MTU, one per read, and each is impaired on its own, as on a real link.

use ipnet::IpNet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::model::{Direction, Settings};
use super::{CutSwitch, Link, RelayStats, SEND_BATCH, sleep_until};
use crate::tun::{TunConfig, TunDevice, TunError, TunQueue};

/// Largest packet read from the device: its MTU is capped at this.
const MAX_PACKET: usize = 65_535;

/// What a TUN-mode relay needs to run.
#[derive(Debug, Clone)]
pub struct TunRelayConfig {
    /// Name of the TUN device to create.
    pub device: String,
    /// The device's MTU.
    pub mtu: u16,
    /// Packets to these networks go up; every other packet goes down.
    pub up_to: Vec<IpNet>,
    /// Seed of the model's generators.
    pub seed: u64,
    /// What the link does.
    pub impairment: Settings,
}

/// Why a TUN-mode relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum TunRelayError {
    /// The device could not be created (no permission, no `/dev/net/tun`, name taken...).
    #[error(transparent)]
    Device(#[from] TunError),
    /// The configuration names no network for the up direction.
    #[error("no network given for the up direction (--up-to)")]
    NoUpNetwork,
}

/// A TUN-mode relay with its device open, ready to [`run`](TunRelay::run).
pub struct TunRelay {
    /// The device's one queue.
    queue: TunQueue,
    /// The device's name.
    name: String,
    /// The configuration it was opened with.
    config: TunRelayConfig,
    /// Shared with the handles given out by [`TunRelay::cut_switch`].
    cut: CutSwitch,
}

impl std::fmt::Debug for TunRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunRelay")
            .field("name", &self.name)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl TunRelay {
    /// Creates the device (down, without addresses: the caller brings it up and routes).
    ///
    /// # Errors
    /// [`TunRelayError::NoUpNetwork`] for an empty `up_to`, [`TunRelayError::Device`] when
    /// the device cannot be created.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn open(config: TunRelayConfig) -> Result<Self, TunRelayError> {
        if config.up_to.is_empty() {
            return Err(TunRelayError::NoUpNetwork);
        }
        let device = TunDevice::create(&TunConfig {
            name: config.device.clone(),
            mtu: config.mtu,
            queues: 1,
            offload: false,
        })?;
        let name = device.name().to_string();
        let queue = device
            .into_queues()
            .into_iter()
            .next()
            .expect("a device has at least one queue");
        Ok(Self {
            queue,
            name,
            config,
            cut: CutSwitch::default(),
        })
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A handle that cuts and restores this relay's link while it runs.
    pub fn cut_switch(&self) -> CutSwitch {
        self.cut.clone()
    }

    /// Relays until `shutdown` is cancelled, then returns the counters (`clients` and
    /// `refused_clients` stay 0; read errors count under `up`). Copies still delayed at that
    /// moment are not sent (they are counted). The device goes away with the relay.
    pub async fn run(self, shutdown: CancellationToken) -> RelayStats {
        let mut link: Link<()> =
            Link::new(&self.config.impairment, self.config.seed, Instant::now());
        let mut buf = vec![0u8; MAX_PACKET];
        loop {
            let next_departure = link.next_departure();
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                () = sleep_until(next_departure), if next_departure.is_some() => {
                    let now = Instant::now();
                    for _ in 0..SEND_BATCH {
                        let Some(p) = link.pop_due(now) else {
                            break;
                        };
                        let sent = self.queue.send(&p.bytes, None).await;
                        link.sent(p.direction, sent);
                    }
                }
                received = self.queue.recv(&mut buf) => match received {
                    Ok(received) => {
                        let packet = &buf[..received.len];
                        match direction_of(packet, &self.config.up_to) {
                            Some(direction) => {
                                link.admit(self.cut.is_cut(), direction, packet.to_vec(), ());
                            }
                            None => link.stats.not_ip += 1,
                        }
                    }
                    Err(_) => link.stats.up.receive_errors += 1,
                },
            }
        }
        link.finish()
    }
}

/// Up if `packet`'s destination lies in one of `up_to`, down otherwise; `None` if it is not
/// an IPv4 or IPv6 packet with a whole fixed header.
pub fn direction_of(packet: &[u8], up_to: &[IpNet]) -> Option<Direction> {
    let destination: std::net::IpAddr = match packet.first()? >> 4 {
        4 => <[u8; 4]>::try_from(packet.get(16..20)?).ok()?.into(),
        6 => <[u8; 16]>::try_from(packet.get(24..40)?).ok()?.into(),
        _ => return None,
    };
    Some(if up_to.iter().any(|net| net.contains(&destination)) {
        Direction::Up
    } else {
        Direction::Down
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(dst: [u8; 4]) -> Vec<u8> {
        let mut p = vec![0u8; 20];
        p[0] = 0x45;
        p[16..20].copy_from_slice(&dst);
        p
    }

    fn v6(dst: [u8; 16]) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x60;
        p[24..40].copy_from_slice(&dst);
        p
    }

    #[test]
    fn direction_follows_the_destination() {
        let up: Vec<IpNet> = vec!["10.2.0.0/24".parse().unwrap(), "fd02::/64".parse().unwrap()];
        assert_eq!(direction_of(&v4([10, 2, 0, 2]), &up), Some(Direction::Up));
        assert_eq!(direction_of(&v4([10, 1, 0, 2]), &up), Some(Direction::Down));
        let mut lan_b6 = [0u8; 16];
        lan_b6[..2].copy_from_slice(&[0xfd, 0x02]);
        lan_b6[15] = 2;
        assert_eq!(direction_of(&v6(lan_b6), &up), Some(Direction::Up));
        lan_b6[1] = 0x01;
        assert_eq!(direction_of(&v6(lan_b6), &up), Some(Direction::Down));
    }

    #[test]
    fn short_or_unknown_packets_have_no_direction() {
        let up: Vec<IpNet> = vec!["10.2.0.0/24".parse().unwrap()];
        assert_eq!(direction_of(&[], &up), None);
        assert_eq!(direction_of(&v4([10, 2, 0, 2])[..19], &up), None);
        assert_eq!(direction_of(&v6([0; 16])[..39], &up), None);
        let mut other = v4([10, 2, 0, 2]);
        other[0] = 0x55;
        assert_eq!(direction_of(&other, &up), None);
    }
}
