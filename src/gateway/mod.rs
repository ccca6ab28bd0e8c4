//! The gateway: TUN device, shards, QUIC sessions and the control socket, wired together.
//!
//! [`run`] takes its whole world as arguments (settings, a shutdown token) so tests can
//! start two gateways in one process. Start-up order: load the identity, create the TUN
//! device and its queues, add addresses and routes, bind the QUIC endpoint, start the shards
//! (under a supervisor that restarts a panicked shard with fresh state), the peer sessions,
//! the accept loop and the control socket, then tell systemd it is ready. Shutdown reverses
//! it: shards flush, connections close, routes go, the device is deleted.

pub mod counters;
pub mod peers;
pub mod session;
pub mod shard;
#[cfg(feature = "test-hooks")]
pub mod test_hooks;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;

use crate::config::{Mtu, Settings};
use crate::core::wire::{Capabilities, Hello};
use crate::core::{DecoderConfig, EncoderConfig};
use crate::transport::{self, Tuning};
use counters::{ShardCounters, Totals};
use peers::{Peer, Peers};
use session::SessionStatus;
use shard::{Command, Shard};

/// Commands queued per shard before senders wait (datagram readers drop instead).
const SHARD_QUEUE: usize = 4096;

/// Longest shutdown waits for shards to flush and connections to close.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(800);

/// Bytes one tunnel datagram spends on everything but the inner packet, for the MTU math in
/// the README: UDP 8, QUIC short header 1 + 8 (connection id) + 4 (packet number), AEAD tag
/// 16, DATAGRAM frame 1 + 2, sluice data header 9, block header up to 8 (codec 1, count 1,
/// length 2, checksum 4), packet length prefix 2, GSO metadata length 1.
pub const TUNNEL_OVERHEAD: usize = 8 + 13 + 16 + 3 + 9 + 8 + 2 + 1;

/// The TUN MTU for `mtu = "auto"`: the largest inner packet that still fits one WAN datagram
/// uncompressed, given the WAN MTU and the IP version of the WAN path.
pub fn auto_mtu(wan_mtu: u16, wan_ipv6: bool) -> u16 {
    let ip = if wan_ipv6 { 40 } else { 20 };
    let mtu = usize::from(wan_mtu).saturating_sub(ip + TUNNEL_OVERHEAD);
    mtu.clamp(1280, 65_535) as u16
}

/// Everything `sluice status` reads.
pub struct State {
    pub interface: String,
    pub mtu: u16,
    pub shards: usize,
    /// Worker threads of the runtime the gateway runs on (`[interface] threads`), as the
    /// runtime reports them.
    pub threads: usize,
    pub peers: Arc<Peers>,
    pub sessions: Vec<Arc<SessionStatus>>,
    /// `counters[shard][peer]`.
    pub counters: Vec<Vec<Arc<ShardCounters>>>,
    /// Times each shard was restarted after a panic, by shard.
    pub restarts: Vec<Arc<AtomicU64>>,
    /// What the accept loop saw, for the endpoint line of the report.
    pub handshakes: Arc<HandshakeCounters>,
    /// The QUIC endpoint, for quinn's own handshake counters.
    pub endpoint: Arc<transport::Endpoint>,
    pub started: Instant,
}

/// Incoming connection attempts, counted by the accept loop (quinn counts none of the ways a
/// handshake can fail after it was accepted).
#[derive(Debug, Default)]
pub struct HandshakeCounters {
    /// Handshakes that failed: certificate not pinned, TLS error, timeout.
    pub failed: AtomicU64,
    /// Handshakes that succeeded with a certificate no configured peer pins (closed at once).
    pub unknown_peer: AtomicU64,
    /// Handshakes handed to a peer's session.
    pub accepted: AtomicU64,
}

impl State {
    /// Counters of peer `peer`, summed over shards.
    pub fn totals(&self, peer: usize) -> Totals {
        let mut t = Totals::default();
        for shard in &self.counters {
            t.add(&shard[peer]);
        }
        t
    }
}

/// Runs the gateway until `shutdown` fires, then cleans up.
///
/// # Errors
/// Start-up failures (identity, device, addresses, routes, socket), with context naming
/// what failed.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let started = Instant::now();
    let iface = settings.interface();
    let digest = *iface.fingerprint.as_bytes();
    let shards = iface.shards.here();
    let peer_list: Vec<Peer> = settings
        .peers()
        .iter()
        .map(|p| Peer {
            name: p.name.to_string(),
            fingerprint: p.fingerprint,
            allowed_ips: p.allowed_ips.clone(),
            endpoint: p.endpoint,
        })
        .collect();
    let wan_ipv6 = peer_list
        .iter()
        .filter_map(|p| p.endpoint)
        .any(|e| e.is_ipv6())
        || iface.listen.is_some_and(|l| l.is_ipv6());
    let mtu = match iface.mtu {
        Mtu::Auto => auto_mtu(iface.wan_mtu, wan_ipv6),
        Mtu::Fixed(m) => m,
    };
    let peers = Arc::new(Peers::new(peer_list));
    let name = iface.name.to_string();

    // QUIC first: a port in use must fail before any device or route exists.
    let listen = iface.listen.unwrap_or_else(|| {
        if wan_ipv6 {
            "[::]:0".parse().expect("literal")
        } else {
            "0.0.0.0:0".parse().expect("literal")
        }
    });
    let tuning = Tuning {
        wan_mtu: iface.wan_mtu,
        ..Tuning::default()
    };
    let allowed: Vec<[u8; 32]> = peers.iter().map(|p| *p.fingerprint.as_bytes()).collect();
    let endpoint = Arc::new(
        transport::endpoint(
            listen,
            transport::Identity {
                certificate: iface.certificate.clone(),
                private_key: iface.key.der().clone_key(),
            },
            allowed,
            &tuning,
        )
        .with_context(|| {
            format!(
                "binding QUIC on {listen} (interface.listen in {})",
                settings.file().display()
            )
        })?,
    );

    // The device and its addresses and routes.
    let tun = crate::tun::TunDevice::create(&crate::tun::TunConfig {
        name: name.clone(),
        mtu,
        queues: shards,
        offload: true,
    })
    .with_context(|| {
        format!(
            "creating TUN device {name} (interface.name in {}; needs CAP_NET_ADMIN and /dev/net/tun)",
            settings.file().display()
        )
    })?;
    let offload = tun.offload().tcp;
    let index = tun.index();
    let queues: Vec<Arc<crate::tun::TunQueue>> =
        tun.into_queues().into_iter().map(Arc::new).collect();
    let net = crate::netlink::Netlink::connect().context("opening netlink")?;
    for addr in &iface.addresses {
        let net_addr = ipnet::IpNet::new(addr.addr(), addr.prefix())
            .with_context(|| format!("address {addr}"))?;
        net.add_address(index, net_addr)
            .await
            .with_context(|| format!("adding address {addr} to {name}"))?;
    }
    net.set_up(index)
        .await
        .with_context(|| format!("bringing {name} up"))?;
    let mut routes = Vec::new();
    if iface.routes {
        for peer in peers.iter() {
            for cidr in &peer.allowed_ips {
                let route = ipnet::IpNet::new(cidr.network(), cidr.prefix())
                    .with_context(|| format!("route {cidr}"))?;
                // A peer's tunnel address may already be on-link through our own address.
                match net.add_route(index, route).await {
                    Ok(()) => routes.push(route),
                    Err(e) => tracing::warn!(%cidr, error = %e, "route not added"),
                }
            }
        }
    }

    // Shards.
    let optimize = settings.optimize();
    let encoder_config = EncoderConfig {
        compression: optimize.compression,
        zstd_level: optimize.zstd_level.get(),
        max_delay: optimize.max_delay,
        ..EncoderConfig::default()
    };
    let counters: Vec<Vec<Arc<ShardCounters>>> = (0..shards)
        .map(|_| (0..peers.len()).map(|_| Arc::default()).collect())
        .collect();
    let sessions: Vec<Arc<SessionStatus>> = (0..peers.len()).map(|_| Arc::default()).collect();
    let restarts: Vec<Arc<AtomicU64>> = (0..shards).map(|_| Arc::default()).collect();
    let mut shard_tx = Vec::new();
    let mut supervisors = Vec::new();
    for i in 0..shards {
        let (tx, rx) = mpsc::channel(SHARD_QUEUE);
        shard_tx.push(tx.clone());
        let make = {
            let queue = queues[i].clone();
            let peers = peers.clone();
            let encoder_config = encoder_config.clone();
            let counters = counters[i].clone();
            move || Shard {
                index: i,
                shards,
                tun: queue.clone(),
                peers: peers.clone(),
                encoder_config: encoder_config.clone(),
                decoder_config: DecoderConfig::default(),
                counters: counters.clone(),
                start: started,
            }
        };
        supervisors.push(tokio::spawn(supervise(
            i,
            make,
            Arc::new(Mutex::new(rx)),
            tx,
            sessions.clone(),
            restarts[i].clone(),
            shutdown.clone(),
        )));
    }

    // Sessions and the accept loop.
    let instance: u64 = rand::random();
    let shared = Arc::new(session::Shared {
        peers: peers.clone(),
        endpoint: endpoint.clone(),
        shards: shard_tx,
        hello: Hello {
            capabilities: Capabilities::supported(),
            shards: shards as u8,
            instance,
            dedupe_cache_kib: u32::try_from(settings.optimize().dedupe_cache.bytes() / 1024)
                .unwrap_or(u32::MAX),
        },
        digest,
        shutdown: shutdown.clone(),
    });
    let mut incoming_tx = Vec::new();
    for (i, status) in sessions.iter().enumerate() {
        let (tx, rx) = mpsc::channel(4);
        incoming_tx.push(tx);
        tokio::spawn(session::run(i, shared.clone(), status.clone(), rx));
    }
    let handshakes = Arc::new(HandshakeCounters::default());
    tokio::spawn(accept_loop(
        endpoint.clone(),
        peers.clone(),
        incoming_tx,
        handshakes.clone(),
        shutdown.clone(),
    ));

    // Control socket.
    let state = Arc::new(State {
        interface: name.clone(),
        mtu,
        shards,
        threads: tokio::runtime::Handle::current().metrics().num_workers(),
        peers: peers.clone(),
        sessions,
        counters,
        restarts,
        handshakes,
        endpoint: endpoint.clone(),
        started,
    });
    let socket_path = iface.control_socket.clone();
    let control = crate::control::serve(&socket_path, state.clone(), shutdown.clone())
        .with_context(|| format!("control socket {}", socket_path.display()))?;

    tracing::info!(
        interface = %name,
        mtu,
        shards,
        offload,
        listen = %endpoint.local_addr().map_or_else(|_| "?".into(), |a: SocketAddr| a.to_string()),
        "sluice is up"
    );
    crate::notify::ready();

    shutdown.cancelled().await;
    tracing::info!("shutting down");
    crate::notify::stopping();
    let flush = async {
        for s in supervisors {
            let _ = s.await;
        }
    };
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, flush).await;
    endpoint.quic().close(0u32.into(), b"shutdown");
    let _ = tokio::time::timeout(Duration::from_millis(300), endpoint.quic().wait_idle()).await;
    for route in routes {
        if let Err(e) = net.remove_route(index, route).await {
            tracing::debug!(%route, error = %e, "route already gone");
        }
    }
    drop(control);
    // Closing the last queue deletes the device (it is never made persistent).
    drop(queues);
    tracing::info!("stopped");
    Ok(())
}

/// Runs shard `index`, restarting it with fresh state if it panics. A restarted shard asks
/// every connected peer for new epochs on the shards it serves.
async fn supervise(
    index: usize,
    make: impl Fn() -> Shard + Send + 'static,
    commands: Arc<Mutex<mpsc::Receiver<Command>>>,
    own_tx: mpsc::Sender<Command>,
    sessions: Vec<Arc<SessionStatus>>,
    restart_count: Arc<AtomicU64>,
    shutdown: CancellationToken,
) {
    let mut restarts = 0u32;
    loop {
        let shard = make();
        let commands = commands.clone();
        let stop = shutdown.clone();
        let task = tokio::spawn(async move {
            let mut rx = commands.lock().await;
            shard.run(&mut rx, stop).await;
        });
        match task.await {
            Ok(()) => return,
            Err(e) if e.is_panic() => {
                restarts += 1;
                restart_count.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    shard = index,
                    restarts,
                    "shard panicked; restarting it with fresh state"
                );
                // Re-announce the live links to the new incarnation, asking for new epochs.
                for (peer, status) in sessions.iter().enumerate() {
                    let link = status.link.lock().expect("status lock").clone();
                    if let Some(link) = link {
                        let _ = own_tx
                            .send(Command::LinkUp {
                                peer,
                                link,
                                resync: true,
                            })
                            .await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(_) => return,
        }
    }
}

/// Accepts connections and hands each, once its certificate matched a pin, to its peer's
/// session. Handshakes run concurrently so a flood of bogus ones cannot starve a real peer.
async fn accept_loop(
    endpoint: Arc<transport::Endpoint>,
    peers: Arc<Peers>,
    sessions: Vec<mpsc::Sender<quinn::Connection>>,
    counts: Arc<HandshakeCounters>,
    shutdown: CancellationToken,
) {
    loop {
        let incoming = tokio::select! {
            _ = shutdown.cancelled() => return,
            i = transport::incoming(&endpoint) => match i { Some(i) => i, None => return },
        };
        let endpoint = endpoint.clone();
        let peers = peers.clone();
        let sessions = sessions.clone();
        let counts = counts.clone();
        tokio::spawn(async move {
            match transport::handshake(&endpoint, incoming).await {
                Ok((conn, digest)) => {
                    let Some(i) = peers
                        .iter()
                        .position(|p| p.fingerprint.as_bytes() == &digest)
                    else {
                        counts.unknown_peer.fetch_add(1, Ordering::Relaxed);
                        conn.close(3u32.into(), b"unknown peer");
                        return;
                    };
                    counts.accepted.fetch_add(1, Ordering::Relaxed);
                    let _ = sessions[i].send(conn).await;
                }
                Err(e) => {
                    counts.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "incoming connection refused");
                }
            }
        });
    }
}
