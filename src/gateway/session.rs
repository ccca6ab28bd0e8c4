//! One task per peer keeps exactly one QUIC connection to it alive.
//!
//! - **Dialling.** A side that knows the peer's endpoint dials when it has no connection: at
//!   once if its certificate digest is the lower of the two, after [`HIGHER_SIDE_DELAY`]
//!   otherwise, so when both sides know each other the lower one's connection usually wins
//!   without a race. Failed dials back off from 100 ms to 5 s.
//! - **Exactly one connection.** Every connection starts with a hello exchange on its control
//!   stream; the hello carries a random per-process `instance`. A second connection from the
//!   same peer instance (both sides dialled at once) is resolved the same way on both sides:
//!   the connection dialled by the lower digest stays. A connection from a new instance (the
//!   peer restarted) replaces the old one at once, so traffic resumes without waiting for the
//!   old connection's idle timeout.
//! - **Wiring.** While connected, a reader task fans datagrams out to the shards by the
//!   shard byte, a control reader routes acks and resets, and a control writer sends what
//!   the shards queue.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use quinn::Connection;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::peers::{Dedupe, Link, Peers};
use super::shard::{Command, route_control};
use crate::core::wire::{self, Capabilities, Hello, ResetKind};
use crate::transport::{self, Endpoint};

/// How long the side with the higher digest waits before dialling, giving the lower side's
/// dial the chance to arrive first.
pub const HIGHER_SIDE_DELAY: Duration = Duration::from_millis(700);

/// Longest the hello exchange on a new connection may take.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// Control messages queued per connection before new ones are dropped (acks are cumulative,
/// resets are re-requested).
const CONTROL_QUEUE: usize = 1024;

/// Where a connection came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    /// We dialled it.
    Dialled,
    /// The peer dialled it.
    Accepted,
}

/// What `sluice status` shows of a peer's session.
#[derive(Debug, Default)]
pub struct SessionStatus {
    /// The live connection, if any.
    pub connection: Mutex<Option<Connection>>,
    /// The live link as the shards know it (a restarted shard is given it again).
    pub link: Mutex<Option<Link>>,
    /// Connections established so far.
    pub connects: std::sync::atomic::AtomicU64,
    /// Datagrams of the live connection read from quinn's receive buffer: quinn's count of
    /// DATAGRAM frames received minus this is what its buffer dropped (it drops the oldest
    /// when the reader falls behind) or still holds.
    pub datagrams_read: std::sync::atomic::AtomicU64,
    /// Of those, datagrams dropped because their shard's queue was full (the shard could not
    /// keep up).
    pub shard_queue_full: std::sync::atomic::AtomicU64,
    /// The last reason a connection ended or a dial failed.
    pub last_error: Mutex<Option<String>>,
}

/// What every session task shares.
pub struct Shared {
    pub peers: Arc<Peers>,
    pub endpoint: Arc<Endpoint>,
    pub shards: Vec<mpsc::Sender<Command>>,
    /// Our hello (capabilities, shard count, instance).
    pub hello: Hello,
    /// SHA-256 of our certificate.
    pub digest: [u8; 32],
    pub shutdown: CancellationToken,
}

/// A connection whose hello exchange is done.
struct Established {
    conn: Connection,
    origin: Origin,
    hello: Hello,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

/// Runs the session with peer `index` until shutdown. `incoming` delivers connections the
/// accept loop authenticated as this peer.
pub async fn run(
    index: usize,
    shared: Arc<Shared>,
    status: Arc<SessionStatus>,
    mut incoming: mpsc::Receiver<Connection>,
) {
    let peer = shared.peers.get(index).clone();
    let peer_digest = *peer.fingerprint.as_bytes();
    let lower = shared.digest < peer_digest;
    let mut generation = 0u64;
    let mut backoff = Duration::from_millis(100);
    let mut first_dial = true;
    loop {
        // Not connected: wait for the peer to dial us, or dial it.
        let dial_delay = if first_dial && !lower {
            HIGHER_SIDE_DELAY
        } else if first_dial {
            Duration::ZERO
        } else {
            backoff
        };
        let candidate = tokio::select! {
            biased;
            _ = shared.shutdown.cancelled() => return,
            conn = incoming.recv() => match conn {
                Some(conn) => handshake(conn, Origin::Accepted, &shared).await,
                None => return,
            },
            result = dial_after(&shared, peer.endpoint, peer_digest, dial_delay), if peer.endpoint.is_some() => {
                first_dial = false;
                match result {
                    Ok(conn) => handshake(conn, Origin::Dialled, &shared).await,
                    Err(e) => Err(e),
                }
            }
        };
        let mut current = match candidate {
            Ok(established) => {
                backoff = Duration::from_millis(100);
                established
            }
            Err(e) => {
                tracing::warn!(peer = %peer.name, error = %e, "connection attempt failed");
                *status.last_error.lock().expect("status lock") = Some(e);
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        // Connected: wire it up; replace it if the peer comes back as a new instance.
        loop {
            generation += 1;
            let wiring = CancellationToken::new();
            let link = wire_up(index, generation, current, &shared, &status, &wiring).await;
            let conn = link.conn.clone();
            let remote_instance = link.instance;
            tracing::info!(
                peer = %peer.name,
                remote = %conn.remote_address(),
                generation,
                "connected"
            );
            *status.connection.lock().expect("status lock") = Some(conn.clone());
            *status.link.lock().expect("status lock") = Some(link.link.clone());
            status
                .connects
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let origin = link.origin;
            let next = loop {
                tokio::select! {
                    biased;
                    _ = shared.shutdown.cancelled() => {
                        conn.close(0u32.into(), b"shutdown");
                        wiring.cancel();
                        return;
                    }
                    reason = conn.closed() => {
                        tracing::warn!(peer = %peer.name, %reason, "connection lost");
                        *status.last_error.lock().expect("status lock") = Some(reason.to_string());
                        break None;
                    }
                    new = incoming.recv() => {
                        let Some(new) = new else { return };
                        match handshake(new, Origin::Accepted, &shared).await {
                            // A new instance: the peer restarted. The peer dialled again
                            // while we hold its earlier dial: it gave that one up. The lower
                            // digest's dial wins a simultaneous dial, and theirs is lower.
                            Ok(new)
                                if new.hello.instance != remote_instance
                                    || origin == Origin::Accepted
                                    || !lower =>
                            {
                                tracing::info!(peer = %peer.name, "replacing the connection with the peer's new one");
                                break Some(new);
                            }
                            Ok(new) => {
                                // Both dialled at once and ours, the lower digest's, stays.
                                new.conn.close(1u32.into(), b"duplicate");
                                continue;
                            }
                            Err(e) => {
                                tracing::debug!(peer = %peer.name, error = %e, "second connection failed its hello");
                                continue;
                            }
                        }
                    }
                }
            };
            broadcast(&shared, |_| Command::LinkDown {
                peer: index,
                generation,
            })
            .await;
            wiring.cancel();
            *status.connection.lock().expect("status lock") = None;
            *status.link.lock().expect("status lock") = None;
            match next {
                Some(new) => {
                    conn.close(1u32.into(), b"replaced");
                    current = new;
                }
                None => break,
            }
        }
        first_dial = false;
    }
}

/// Sleeps `delay`, then dials `endpoint`.
async fn dial_after(
    shared: &Shared,
    endpoint: Option<std::net::SocketAddr>,
    digest: [u8; 32],
    delay: Duration,
) -> Result<Connection, String> {
    tokio::time::sleep(delay).await;
    let addr = endpoint.ok_or_else(|| "no endpoint".to_string())?;
    transport::connect(&shared.endpoint, addr, digest)
        .await
        .map_err(|e| e.to_string())
}

/// Opens (dialler) or accepts (acceptor) the control stream and exchanges hellos.
async fn handshake(
    conn: Connection,
    origin: Origin,
    shared: &Shared,
) -> Result<Established, String> {
    let exchange = async {
        let (mut send, mut recv) = match origin {
            Origin::Dialled => conn.open_bi().await.map_err(|e| e.to_string())?,
            Origin::Accepted => conn.accept_bi().await.map_err(|e| e.to_string())?,
        };
        transport::write_frame(&mut send, &shared.hello.encode())
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        let n = transport::read_frame(&mut recv, &mut buf)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("control stream closed before hello")?;
        let hello = match wire::parse(&buf[..n]) {
            Ok(wire::Message::Hello(hello)) => hello,
            Ok(other) => return Err(format!("expected hello, got {other:?}")),
            Err(e) => return Err(format!("bad hello: {e}")),
        };
        if !hello.capabilities.contains(Capabilities::required()) {
            return Err(format!(
                "peer cannot decode our codecs (capabilities {:#x})",
                hello.capabilities.0
            ));
        }
        Ok(Established {
            conn: conn.clone(),
            origin,
            hello,
            send,
            recv,
        })
    };
    match tokio::time::timeout(HELLO_TIMEOUT, exchange).await {
        Ok(Ok(e)) => Ok(e),
        Ok(Err(e)) => {
            conn.close(2u32.into(), b"hello failed");
            Err(e)
        }
        Err(_) => {
            conn.close(2u32.into(), b"hello timeout");
            Err("hello timed out".into())
        }
    }
}

/// A connection wired to the shards.
struct Wired {
    /// What the shards were given.
    link: Link,
    /// The connection itself (also inside `link`), for closing and status.
    conn: Connection,
    /// The peer's per-process instance id from its hello: a new one means it restarted.
    instance: u64,
    /// Who dialled, for resolving a simultaneous dial.
    origin: Origin,
}

/// Tells the shards about an established connection, then spawns its datagram reader and
/// control reader/writer.
///
/// The order matters: each shard's queue is FIFO, so announcing the link first guarantees
/// that no datagram or control message of this connection reaches a shard before the shard
/// knows the link (an epoch announcement handled before the link would be lost).
async fn wire_up(
    peer: usize,
    generation: u64,
    est: Established,
    shared: &Arc<Shared>,
    status: &Arc<SessionStatus>,
    stop: &CancellationToken,
) -> Wired {
    let (control_tx, mut control_rx) = mpsc::channel::<Vec<u8>>(CONTROL_QUEUE);
    // Dedupe runs with the smaller of the two caches; zero on either side turns it off.
    let cache_kib = shared
        .hello
        .dedupe_cache_kib
        .min(est.hello.dedupe_cache_kib);
    let dedupe = (cache_kib > 0).then(|| Dedupe::new(cache_kib as usize * 1024));
    let link = Link {
        generation,
        conn: est.conn.clone(),
        control: control_tx,
        remote_shards: est.hello.shards,
        ack_datagrams: est.hello.capabilities.contains(Capabilities::ACK_DATAGRAMS),
        dedupe: dedupe.clone(),
    };
    let n = shared.shards.len();
    broadcast(shared, |_| Command::LinkUp {
        peer,
        link: link.clone(),
        resync: false,
    })
    .await;

    // Datagrams → shards.
    {
        let conn = est.conn.clone();
        let shards = shared.shards.clone();
        let stop = stop.clone();
        let status = status.clone();
        status.datagrams_read.store(0, Ordering::Relaxed);
        status.shard_queue_full.store(0, Ordering::Relaxed);
        tokio::spawn(async move {
            loop {
                let bytes: Bytes = tokio::select! {
                    _ = stop.cancelled() => return,
                    d = conn.read_datagram() => match d {
                        Ok(d) => d,
                        Err(_) => return,
                    },
                };
                status.datagrams_read.fetch_add(1, Ordering::Relaxed);
                let Some(&remote) = bytes.get(2) else {
                    continue;
                };
                let target = usize::from(remote) % n;
                // Never block the reader on one busy shard: drop instead (the inner TCP
                // retransmits, the shard's decoder counts the gap, `sluice status` the drop).
                let queued = shards[target].try_send(Command::Datagram {
                    peer,
                    generation,
                    bytes,
                });
                if let Err(mpsc::error::TrySendError::Full(_)) = queued {
                    status.shard_queue_full.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    // Control stream → shards.
    {
        let shards = shared.shards.clone();
        let stop = stop.clone();
        let mut recv = est.recv;
        tokio::spawn(async move {
            let mut buf = Vec::new();
            loop {
                let frame = tokio::select! {
                    _ = stop.cancelled() => return,
                    f = transport::read_frame(&mut recv, &mut buf) => f,
                };
                let Ok(Some(len)) = frame else {
                    return;
                };
                // Dedupe epoch changes concern the connection's shared contexts, not a shard.
                if let Ok(wire::Message::Dedupe(msg)) = wire::parse(&buf[..len]) {
                    if let Some(dedupe) = &dedupe {
                        match msg.kind {
                            ResetKind::Announce => dedupe.decoder.handle_announce(msg.epoch),
                            ResetKind::Request => {
                                tracing::info!(
                                    epoch = msg.epoch,
                                    "peer asked for a new dedupe epoch"
                                );
                                dedupe.encoder.handle_request(msg.epoch);
                            }
                        }
                    }
                    continue;
                }
                if let Some((target, message)) = route_control(&buf[..len], n) {
                    let _ = shards[target]
                        .send(Command::Control {
                            peer,
                            generation,
                            message,
                        })
                        .await;
                }
            }
        });
    }
    // Shards → control stream.
    {
        let stop = stop.clone();
        let mut send = est.send;
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    _ = stop.cancelled() => return,
                    m = control_rx.recv() => match m { Some(m) => m, None => return },
                };
                if transport::write_frame(&mut send, &msg).await.is_err() {
                    return;
                }
            }
        });
    }
    Wired {
        conn: est.conn,
        instance: est.hello.instance,
        origin: est.origin,
        link,
    }
}

/// Sends a command to every shard.
async fn broadcast(shared: &Shared, make: impl Fn(usize) -> Command) {
    for (i, shard) in shared.shards.iter().enumerate() {
        let _ = shard.send(make(i)).await;
    }
}
