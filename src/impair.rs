//! `sluice-impair`: a seeded UDP relay that impairs traffic like a WAN link, for tests on
//! kernels without netem.
//!
//! Two layers, like the rest of the crate:
//!
//! - [`model`] decides, without IO and with time as a parameter, what happens to each
//!   datagram: loss (random and Gilbert–Elliott bursts), delay with jitter, reordering,
//!   duplication, corruption, a token-bucket rate limit with a tail-dropping queue, and link
//!   cuts. Same seed, same decisions.
//! - [`Relay`] drives it over tokio UDP sockets: it listens on one address and forwards to one
//!   upstream address. Datagrams from clients go up; replies from upstream go down to the
//!   client they answer.
//! - [`tun_relay::TunRelay`] drives it over a TUN device instead (`--tun`): IP packets routed
//!   into the device are impaired and written back, so direct routing, which has no UDP to
//!   relay, can cross the same impairment as a tunnel.
//!
//! # One upstream socket per client
//!
//! Each client address gets its own upstream socket (an ephemeral port, connected to the
//! upstream address), so the server behind the relay sees one distinct source per client, and
//! a reply arriving on that socket belongs to exactly that client. A single shared socket
//! would merge every client into one source and force the relay to guess who a reply is for.
//! Mappings are never expired (a test run is short); at most [`MAX_CLIENTS`] are made, and
//! datagrams from further clients are counted in [`RelayStats::refused_clients`] and dropped.
//!
//! # Placing it in a netns test
//!
//! Run the relay inside gateway A's namespace, with `--listen` on an address of that
//! namespace (say `10.0.0.1:4434`) and `--upstream` set to gateway B's real WAN address and
//! port. Point gateway A's peer endpoint for B at the relay's listen address instead of B.
//! Gateway A's datagrams then go up through the relay, B sees them coming from the relay's
//! upstream socket and answers it, and the relay sends the answers down to A: every datagram
//! of the tunnel, both ways, crosses the impairment. (B's own endpoint for A is only used if
//! B initiates; keep A as the side that connects.)
//!
//! ```text
//!   ns gw-a:  gateway A ──▶ relay 10.0.0.1:4434 ──(up)──▶ B's WAN address ── ns gw-b
//!             gateway A ◀──(down)── relay ◀───────────── gateway B
//! ```
//!
//! # Throughput
//!
//! Offered more than it can take on loopback (2 vCPU AMD EPYC, the sender and the sink in the
//! same test process, no impairment), the debug build the tests use forwarded about 92 000
//! datagrams/s of 100 bytes and 81 000/s of 1200 bytes (~780 Mbit/s), and about 43 000 and
//! 58 000/s (~560 Mbit/s) while two fuzzers held both cores:
//! `cargo test --test impair -- --ignored --nocapture forwarding_rate`. Beyond that the
//! kernel drops at the listening socket (not counted by the relay). Put a `--rate` well below
//! it so the impairment, not the relay, is the bottleneck.
//!
//! `kill -USR1 <pid>` toggles a cut of both directions (cut the WAN for 10 s: send it, sleep,
//! send it again); `--cut-after` / `--cut-for` schedule one. On SIGTERM or SIGINT the binary
//! prints [`RelayStats`] as one line of JSON.

pub mod model;
pub mod tun_relay;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use serde::Serialize;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use model::{Direction, Impairment, LaneStats, Settings, Verdict};

/// The most client addresses the relay maps to upstream sockets. A netns test has one or two
/// gateways per relay; the bound only stops a stray sender from exhausting file descriptors.
pub const MAX_CLIENTS: usize = 256;

/// The most copies waiting in the delay line; beyond it new copies are dropped and counted in
/// [`DirectionStats::dropped_overflow`]. 64 Ki copies of 1500 bytes is about 100 MB, and
/// holds 1 s of a 1 Gbit/s link (the largest delay-bandwidth product a test here needs).
pub const MAX_PENDING: usize = 65_536;

/// The most copies sent per wake-up before the relay looks at its sockets again, so a long
/// run of due copies cannot starve receiving. Not tuned: one send is one syscall either way,
/// so the batch only bounds latency; the forwarding rate in the module doc was measured with
/// it.
const SEND_BATCH: usize = 64;

/// Receive buffer size: the largest UDP payload.
const MAX_DATAGRAM: usize = 65_535;

/// Receive and send buffer asked for on every relay socket. A relay sits in front of a gateway
/// that sends bursts of a few hundred datagrams; the default (~200 KiB) drops some of them
/// whenever the relay loop is scheduled late. The kernel caps the request at
/// `net.core.rmem_max` / `wmem_max`, silently: best effort.
const SOCKET_BUFFER: usize = 4 << 20;

/// Depth of the channel from the upstream readers to the relay loop; when it is full the
/// readers wait and the kernel's socket buffers absorb (or drop) the excess.
const UPSTREAM_CHANNEL: usize = 1024;

/// What the relay needs to run.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Where clients send (port 0 picks one; see [`Relay::local_addr`]).
    pub listen: SocketAddr,
    /// Where datagrams go up to.
    pub upstream: SocketAddr,
    /// Seed of the model's generators.
    pub seed: u64,
    /// What the link does.
    pub impairment: Settings,
}

/// Why the relay could not start or keep running.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The listening socket could not be bound.
    #[error("cannot bind the relay's listening socket to {addr}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The system's reason.
        source: io::Error,
    },
    /// An upstream socket for a new client could not be opened or connected.
    #[error("cannot open an upstream socket to {upstream} for client {client}")]
    Upstream {
        /// The upstream address.
        upstream: SocketAddr,
        /// The client the socket was for.
        client: SocketAddr,
        /// The system's reason.
        source: io::Error,
    },
}

/// Counters of one direction: the model's decisions and what the IO layer did with them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct DirectionStats {
    /// What the model decided.
    #[serde(flatten)]
    pub model: LaneStats,
    /// Copies actually sent.
    pub forwarded: u64,
    /// Copies the system refused to send (for example after an ICMP port unreachable).
    pub send_errors: u64,
    /// Receive errors on the sockets feeding this direction.
    pub receive_errors: u64,
    /// Copies dropped because the delay line held [`MAX_PENDING`] already.
    pub dropped_overflow: u64,
    /// Copies still in the delay line when the relay stopped.
    pub unsent_at_shutdown: u64,
}

/// What a relay did, returned when it stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct RelayStats {
    /// Clients → upstream.
    pub up: DirectionStats,
    /// Upstream → clients.
    pub down: DirectionStats,
    /// Client addresses given an upstream socket.
    pub clients: u64,
    /// Datagrams dropped because they came from a client beyond [`MAX_CLIENTS`].
    pub refused_clients: u64,
    /// TUN mode: packets read from the device that were neither IPv4 nor IPv6 (dropped).
    pub not_ip: u64,
}

impl RelayStats {
    /// The counters of `direction`.
    pub fn direction(&self, direction: Direction) -> &DirectionStats {
        match direction {
            Direction::Up => &self.up,
            Direction::Down => &self.down,
        }
    }

    fn direction_mut(&mut self, direction: Direction) -> &mut DirectionStats {
        match direction {
            Direction::Up => &mut self.up,
            Direction::Down => &mut self.down,
        }
    }
}

/// A handle that cuts and restores the link of a running relay (cloneable, for a signal
/// handler).
#[derive(Debug, Clone, Default)]
pub struct CutSwitch(Arc<AtomicBool>);

impl CutSwitch {
    /// Flips the manual cut and returns whether the link is now cut.
    pub fn toggle(&self) -> bool {
        !self.0.fetch_xor(true, Ordering::Relaxed)
    }

    /// Sets the manual cut.
    pub fn set(&self, cut: bool) {
        self.0.store(cut, Ordering::Relaxed);
    }

    /// Whether the manual cut is on.
    pub fn is_cut(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// A bound relay, ready to [`run`](Relay::run).
#[derive(Debug)]
pub struct Relay {
    /// Clients send here; replies go back from here.
    listener: UdpSocket,
    /// The configuration it was bound with.
    config: RelayConfig,
    /// Shared with the handles given out by [`Relay::cut_switch`].
    cut: CutSwitch,
}

/// Binds `config.listen` and relays until `shutdown` is cancelled.
///
/// # Errors
/// As [`Relay::bind`] and [`Relay::run`].
pub async fn relay(
    config: RelayConfig,
    shutdown: CancellationToken,
) -> Result<RelayStats, RelayError> {
    Relay::bind(config).await?.run(shutdown).await
}

impl Relay {
    /// Binds the listening socket.
    ///
    /// # Errors
    /// [`RelayError::Bind`] when the address cannot be bound.
    pub async fn bind(config: RelayConfig) -> Result<Self, RelayError> {
        let listener = bind_udp(config.listen).map_err(|source| RelayError::Bind {
            addr: config.listen,
            source,
        })?;
        Ok(Self {
            listener,
            config,
            cut: CutSwitch::default(),
        })
    }

    /// The address clients should send to (the bound port when `listen` had port 0).
    pub fn local_addr(&self) -> SocketAddr {
        // A bound UDP socket always has a local address.
        self.listener.local_addr().unwrap_or(self.config.listen)
    }

    /// A handle that cuts and restores this relay's link while it runs.
    pub fn cut_switch(&self) -> CutSwitch {
        self.cut.clone()
    }

    /// Relays until `shutdown` is cancelled, then returns the counters. Copies still delayed
    /// at that moment are not sent (they are counted).
    ///
    /// # Errors
    /// [`RelayError::Upstream`] when an upstream socket for a new client cannot be opened:
    /// the relay cannot do its job then, so it stops rather than silently dropping a client.
    pub async fn run(self, shutdown: CancellationToken) -> Result<RelayStats, RelayError> {
        let mut state = RelayState {
            link: Link::new(&self.config.impairment, self.config.seed, Instant::now()),
            clients: HashMap::new(),
        };
        let (to_relay, mut from_upstream) = mpsc::channel::<FromUpstream>(UPSTREAM_CHANNEL);
        // Dropped on return, which aborts the readers.
        let mut readers = JoinSet::new();
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let next_departure = state.link.next_departure();
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                () = sleep_until(next_departure), if next_departure.is_some() => {
                    state.send_due(&self.listener).await;
                }
                received = self.listener.recv_from(&mut buf) => match received {
                    Ok((len, client)) => {
                        let Some(socket) = state
                            .upstream_socket(client, &self.config, &mut readers, &to_relay)
                            .await?
                        else {
                            continue;
                        };
                        let target = UdpTarget { upstream: Some(socket), client };
                        state.link.admit(self.cut.is_cut(), Direction::Up, buf[..len].to_vec(), target);
                    }
                    Err(_) => state.link.stats.up.receive_errors += 1,
                },
                Some(message) = from_upstream.recv() => match message {
                    FromUpstream::Datagram { client, bytes } => {
                        let target = UdpTarget { upstream: None, client };
                        state.link.admit(self.cut.is_cut(), Direction::Down, bytes, target);
                    }
                    FromUpstream::Error => state.link.stats.down.receive_errors += 1,
                },
            }
        }
        Ok(state.link.finish())
    }
}

/// Sleeps until `at`; never completes for `None` (the branch is disabled then anyway).
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A message from an upstream socket's reader task.
enum FromUpstream {
    /// A reply for `client`.
    Datagram {
        /// The client whose upstream socket received it.
        client: SocketAddr,
        /// The reply.
        bytes: Vec<u8>,
    },
    /// A receive error (typically a refused connection reported by ICMP).
    Error,
}

/// A copy waiting in the delay line; `T` says where it goes.
#[derive(Debug)]
struct Pending<T> {
    /// When it leaves.
    at: Instant,
    /// Arrival order, so copies due at the same instant leave in the order they came.
    sequence: u64,
    /// Which way it goes.
    direction: Direction,
    /// Where it goes.
    target: T,
    /// The datagram; shared between a datagram and its duplicate.
    bytes: Bytes,
}

impl<T> PartialEq for Pending<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.sequence) == (other.at, other.sequence)
    }
}
impl<T> Eq for Pending<T> {}
impl<T> PartialOrd for Pending<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Pending<T> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.sequence).cmp(&(other.at, other.sequence))
    }
}

/// The model and the copies it let through, waiting for their departure: the part of a relay
/// that does not depend on how datagrams arrive and leave (UDP sockets here, a TUN device in
/// [`tun_relay`]). `T` says where a copy goes.
struct Link<T> {
    /// Decides each datagram's fate.
    model: Impairment,
    /// The IO layer's counters (the model's are copied in by [`Link::finish`]).
    stats: RelayStats,
    /// The delay line, earliest departure first.
    pending: BinaryHeap<Reverse<Pending<T>>>,
    /// The next [`Pending::sequence`].
    sequence: u64,
}

impl<T: Clone> Link<T> {
    /// A link impaired as `settings` says, its randomness from `seed`, started at `start`.
    fn new(settings: &Settings, seed: u64, start: Instant) -> Self {
        Self {
            model: Impairment::new(settings, seed, start.into_std()),
            stats: RelayStats::default(),
            pending: BinaryHeap::new(),
            sequence: 0,
        }
    }

    /// When the earliest waiting copy leaves.
    fn next_departure(&self) -> Option<Instant> {
        self.pending.peek().map(|Reverse(p)| p.at)
    }

    /// Runs one datagram through the model (`cut`: whether the manual cut is on) and puts its
    /// copies in the delay line.
    fn admit(&mut self, cut: bool, direction: Direction, mut payload: Vec<u8>, target: T) {
        let now = Instant::now();
        self.model.set_cut(cut);
        let Verdict::Send(departures) =
            self.model
                .handle_datagram(now.into_std(), direction, &mut payload)
        else {
            return;
        };
        let bytes = Bytes::from(payload);
        let copies = [Some(departures.at), departures.duplicate_at];
        for at in copies.into_iter().flatten() {
            if self.pending.len() >= MAX_PENDING {
                self.stats.direction_mut(direction).dropped_overflow += 1;
                continue;
            }
            self.sequence += 1;
            self.pending.push(Reverse(Pending {
                at: Instant::from_std(at),
                sequence: self.sequence,
                direction,
                target: target.clone(),
                bytes: bytes.clone(),
            }));
        }
    }

    /// The next copy whose time has come at `now`.
    fn pop_due(&mut self, now: Instant) -> Option<Pending<T>> {
        if self.pending.peek().is_none_or(|Reverse(p)| p.at > now) {
            return None;
        }
        self.pending.pop().map(|Reverse(p)| p)
    }

    /// Counts the outcome of sending a copy.
    fn sent<E>(&mut self, direction: Direction, result: Result<(), E>) {
        let stats = self.stats.direction_mut(direction);
        match result {
            Ok(()) => stats.forwarded += 1,
            Err(_) => stats.send_errors += 1,
        }
    }

    /// The counters, with copies still waiting counted as unsent.
    fn finish(mut self) -> RelayStats {
        for Reverse(p) in self.pending.drain() {
            self.stats.direction_mut(p.direction).unsent_at_shutdown += 1;
        }
        self.stats.up.model = self.model.stats(Direction::Up);
        self.stats.down.model = self.model.stats(Direction::Down);
        self.stats
    }
}

/// Where a UDP relay sends a copy.
#[derive(Debug, Clone)]
struct UdpTarget {
    /// Up: the client's upstream socket. Down: `None` (sent from the listener).
    upstream: Option<Arc<UdpSocket>>,
    /// Down: where it goes. Up: where it came from.
    client: SocketAddr,
}

/// The UDP relay loop's state, apart from its listening socket.
struct RelayState {
    /// The impaired link.
    link: Link<UdpTarget>,
    /// Each client's upstream socket.
    clients: HashMap<SocketAddr, Arc<UdpSocket>>,
}

impl RelayState {
    /// The upstream socket of `client`, opened (with its reader task) on first use; `None`
    /// (counted) when the client table is full.
    async fn upstream_socket(
        &mut self,
        client: SocketAddr,
        config: &RelayConfig,
        readers: &mut JoinSet<()>,
        to_relay: &mpsc::Sender<FromUpstream>,
    ) -> Result<Option<Arc<UdpSocket>>, RelayError> {
        if let Some(socket) = self.clients.get(&client) {
            return Ok(Some(socket.clone()));
        }
        if self.clients.len() >= MAX_CLIENTS {
            self.link.stats.refused_clients += 1;
            return Ok(None);
        }
        let upstream = config.upstream;
        let error = |source| RelayError::Upstream {
            upstream,
            client,
            source,
        };
        let any: IpAddr = match upstream {
            SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
            SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
        };
        let socket = bind_udp(SocketAddr::new(any, 0)).map_err(error)?;
        socket.connect(upstream).await.map_err(error)?;
        let socket = Arc::new(socket);
        self.clients.insert(client, socket.clone());
        self.link.stats.clients += 1;
        readers.spawn(read_upstream(socket.clone(), client, to_relay.clone()));
        Ok(Some(socket))
    }

    /// Sends up to [`SEND_BATCH`] copies whose time has come.
    async fn send_due(&mut self, listener: &UdpSocket) {
        let now = Instant::now();
        for _ in 0..SEND_BATCH {
            let Some(p) = self.link.pop_due(now) else {
                return;
            };
            let sent = match &p.target.upstream {
                Some(socket) => socket.send(&p.bytes).await,
                None => listener.send_to(&p.bytes, p.target.client).await,
            };
            self.link.sent(p.direction, sent.map(drop));
        }
    }
}

/// A non-blocking UDP socket bound to `addr`, with [`SOCKET_BUFFER`] asked for both ways.
///
/// # Errors
/// When the socket cannot be created or bound, or tokio cannot register it.
fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort: a smaller buffer only means more drops under bursts, counted by the kernel.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// Reads replies from one client's upstream socket and hands them to the relay loop, until
/// the loop is gone (or the task is aborted).
async fn read_upstream(
    socket: Arc<UdpSocket>,
    client: SocketAddr,
    to_relay: mpsc::Sender<FromUpstream>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let message = match socket.recv(&mut buf).await {
            Ok(len) => FromUpstream::Datagram {
                client,
                bytes: buf[..len].to_vec(),
            },
            Err(_) => FromUpstream::Error,
        };
        if to_relay.send(message).await.is_err() {
            return;
        }
    }
}
