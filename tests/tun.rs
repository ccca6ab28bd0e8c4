//! TUN device and netlink setup against the real kernel, inside network namespaces the tests
//! create (and delete, also on failure). Root-only: without root and `/dev/net/tun` each test
//! prints `SKIPPED: ...` and passes, unless `CI=true`, where a skip fails.
//!
//! No traffic leaves the namespaces: every address used lives on a TUN device in one of them.

mod netns;

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use netns::{Namespace, can_run};
use sha2::{Digest, Sha256};
use sluice::netlink::{Applied, InterfaceSetup, Netlink};
use sluice::tun::{GsoKind, GsoMeta, TunConfig, TunDevice, TunQueue};
use tokio::runtime::Runtime;

const MTU: u16 = 1400;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn net(s: &str) -> IpNet {
    s.parse().expect("a valid CIDR literal")
}

/// Creates a TUN device in `ns` and configures it with netlink from inside `ns`; the device's
/// file descriptors and the netlink socket are then driven by `rt` from any thread.
fn gateway(
    ns: &Namespace,
    rt: &Runtime,
    config: TunConfig,
    setup: InterfaceSetup,
) -> (TunDevice, Netlink, Applied) {
    ns.run(|| {
        let _runtime = rt.enter();
        let device = TunDevice::create(&config).expect("TUN device created");
        let netlink = Netlink::connect().expect("netlink socket");
        let applied = rt
            .block_on(netlink.configure(device.index(), &setup))
            .expect("interface configured");
        (device, netlink, applied)
    })
}

fn config(name: &str, queues: usize, offload: bool) -> TunConfig {
    TunConfig {
        name: name.to_owned(),
        mtu: MTU,
        queues,
        offload,
    }
}

// ---------------------------------------------------------------------------------------------
// Checksums and a raw-socket ping (no `ping` binary needed).

fn fold(mut sum: u64) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

fn sum16(mut sum: u64, bytes: &[u8]) -> u64 {
    for word in bytes.chunks(2) {
        let hi = u64::from(word[0]) << 8;
        sum += hi | word.get(1).map_or(0, |&lo| u64::from(lo));
    }
    sum
}

/// Turns an ICMP(v6) echo request read from the TUN into its reply, or `None` for anything else.
fn echo_reply(packet: &[u8]) -> Option<Vec<u8>> {
    let mut p = packet.to_vec();
    match p.first()? >> 4 {
        4 => {
            let ihl = usize::from(p[0] & 0x0f) * 4;
            if p.len() < ihl + 8 || p[9] != 1 || p[ihl] != 8 {
                return None;
            }
            let (src, dst) = (p[12..16].to_vec(), p[16..20].to_vec());
            p[12..16].copy_from_slice(&dst);
            p[16..20].copy_from_slice(&src);
            p[ihl] = 0;
            p[ihl + 2..ihl + 4].fill(0);
            let csum = !fold(sum16(0, &p[ihl..]));
            p[ihl + 2..ihl + 4].copy_from_slice(&csum.to_be_bytes());
            Some(p)
        }
        6 => {
            if p.len() < 48 || p[6] != 58 || p[40] != 128 {
                return None;
            }
            let (src, dst) = (p[8..24].to_vec(), p[24..40].to_vec());
            p[8..24].copy_from_slice(&dst);
            p[24..40].copy_from_slice(&src);
            p[40] = 129;
            p[42..44].fill(0);
            let pseudo = sum16(0, &p[8..40]) + 58 + (p.len() - 40) as u64;
            let csum = !fold(sum16(pseudo, &p[40..]));
            p[42..44].copy_from_slice(&csum.to_be_bytes());
            Some(p)
        }
        _ => None,
    }
}

/// Sends one echo request to `dst` from a raw socket of the calling thread's namespace and
/// waits up to 3 s for the matching reply.
fn ping(dst: IpAddr) -> io::Result<Duration> {
    const ID: u16 = 0x5c1c;
    let (domain, protocol, request, reply) = match dst {
        IpAddr::V4(_) => (libc::AF_INET, libc::IPPROTO_ICMP, 8u8, 0u8),
        IpAddr::V6(_) => (libc::AF_INET6, libc::IPPROTO_ICMPV6, 128, 129),
    };
    // SAFETY: plain socket(2); the result is checked before it is owned.
    let fd = unsafe { libc::socket(domain, libc::SOCK_RAW | libc::SOCK_CLOEXEC, protocol) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let timeout = libc::timeval {
        tv_sec: 3,
        tv_usec: 0,
    };
    // SAFETY: the option value is a live timeval of the size given.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const timeout).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut message = vec![request, 0, 0, 0];
    message.extend_from_slice(&ID.to_be_bytes());
    message.extend_from_slice(&1u16.to_be_bytes());
    message.extend_from_slice(b"sluice ping payload");
    if dst.is_ipv4() {
        let csum = !fold(sum16(0, &message));
        message[2..4].copy_from_slice(&csum.to_be_bytes());
    } // ICMPv6 raw sockets: the kernel fills the checksum in.
    let start = Instant::now();
    // SAFETY: each sockaddr is a live, fully initialised value of the length passed.
    let sent = unsafe {
        match dst {
            IpAddr::V4(v4) => {
                let mut addr: libc::sockaddr_in = std::mem::zeroed();
                addr.sin_family = libc::AF_INET as libc::sa_family_t;
                addr.sin_addr.s_addr = u32::from_ne_bytes(v4.octets());
                libc::sendto(
                    fd.as_raw_fd(),
                    message.as_ptr().cast(),
                    message.len(),
                    0,
                    (&raw const addr).cast(),
                    size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            }
            IpAddr::V6(v6) => {
                let mut addr: libc::sockaddr_in6 = std::mem::zeroed();
                addr.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                addr.sin6_addr.s6_addr = v6.octets();
                libc::sendto(
                    fd.as_raw_fd(),
                    message.as_ptr().cast(),
                    message.len(),
                    0,
                    (&raw const addr).cast(),
                    size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                )
            }
        }
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = [0u8; 2048];
    loop {
        // SAFETY: buf is writable for its whole length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error()); // EAGAIN after the 3 s timeout
        }
        let got = &buf[..n as usize];
        // IPv4 raw sockets deliver the IP header too; ICMPv6 ones only the message.
        let icmp = if dst.is_ipv4() {
            &got[usize::from(got[0] & 0x0f) * 4..]
        } else {
            got
        };
        if icmp.len() >= 8 && icmp[0] == reply && icmp[4..6] == ID.to_be_bytes() {
            return Ok(start.elapsed());
        }
    }
}

/// (a) Addresses, MTU and link state come up; an echo request routed into the device is read
/// from it, the reply written back reaches the pinging socket, over IPv4 and IPv6, with and
/// without offload.
#[test]
fn ping_is_answered_through_the_device() {
    if !can_run("ping_is_answered_through_the_device") {
        return;
    }
    let rt = runtime();
    for offload in [false, true] {
        let ns = Namespace::new("ping");
        let setup = InterfaceSetup {
            mtu: None,
            addresses: vec![net("10.77.0.1/24"), net("fd77::1/64")],
            routes: vec![],
        };
        let (device, _netlink, _applied) = gateway(&ns, &rt, config("sl0", 1, offload), setup);
        assert_eq!(
            device.offload().tcp,
            offload,
            "this kernel takes TUN offload"
        );
        let link = ns.ip(&["-d", "link", "show", "sl0"]);
        assert!(link.contains(&format!("mtu {MTU}")), "{link}");
        assert!(link.contains("UP"), "{link}");
        assert!(link.contains("tun type tun"), "{link}");
        let addrs = ns.ip(&["addr", "show", "sl0"]);
        assert!(
            addrs.contains("10.77.0.1/24") && addrs.contains("fd77::1/64"),
            "{addrs}"
        );

        let queue = device.into_queues().pop().expect("one queue");
        let answered = Arc::new(AtomicUsize::new(0));
        let responder = rt.spawn({
            let answered = answered.clone();
            async move {
                let mut buf = vec![0u8; queue.recv_buffer_len()];
                loop {
                    let received = queue.recv(&mut buf).await.expect("TUN read");
                    if let Some(reply) = echo_reply(&buf[..received.len]) {
                        // Count before the write: the ping can return (and the test abort this
                        // task) as soon as the reply is delivered, before a later increment.
                        answered.fetch_add(1, Ordering::Relaxed);
                        queue.send(&reply, None).await.expect("TUN write");
                    }
                }
            }
        });
        for dst in [
            IpAddr::V4(Ipv4Addr::new(10, 77, 0, 2)),
            IpAddr::V6("fd77::2".parse::<Ipv6Addr>().expect("literal")),
        ] {
            let rtt = ns
                .run(|| ping(dst))
                .unwrap_or_else(|e| panic!("ping {dst} (offload {offload}): {e}"));
            eprintln!("ping {dst} through sl0 (offload {offload}): {rtt:?}");
        }
        responder.abort();
        assert_eq!(answered.load(Ordering::Relaxed), 2);
    }
}

/// (b) Routes go through the device and are removed again; removing the device leaves nothing.
#[test]
fn routes_and_addresses_are_removed_on_shutdown() {
    if !can_run("routes_and_addresses_are_removed_on_shutdown") {
        return;
    }
    let rt = runtime();
    let ns = Namespace::new("routes");
    let setup = InterfaceSetup {
        mtu: Some(1300),
        addresses: vec![net("10.88.0.1/30"), net("fd88::1/64")],
        routes: vec![net("10.89.0.0/16"), net("192.0.2.77/32"), net("fd89::/48")],
    };
    let (device, netlink, applied) = gateway(&ns, &rt, config("sl0", 1, true), setup);
    // The offload self-test's probe entered the fresh namespace's IP layer once and was
    // dropped there for its header checksum: nothing delivered, forwarded or answered.
    let ip_mib = ns.run(|| {
        // thread-self: /proc/self/net would show the main thread's namespace.
        std::fs::read_to_string("/proc/thread-self/net/snmp").expect("IP MIB")
    });
    let ip_mib = snmp(&ip_mib, "Ip");
    assert_eq!(ip_mib("InReceives"), 1);
    assert_eq!(ip_mib("InHdrErrors"), 1);
    for counter in ["InDelivers", "ForwDatagrams", "OutRequests"] {
        assert_eq!(ip_mib(counter), 0, "{counter}");
    }
    assert_eq!(applied.routes().len(), 3);
    assert!(ns.ip(&["link", "show", "sl0"]).contains("mtu 1300"));
    let v4 = ns.ip(&["-4", "route", "show"]);
    assert!(v4.contains("10.89.0.0/16 dev sl0"), "{v4}");
    assert!(v4.contains("192.0.2.77 dev sl0"), "{v4}");
    let v6 = ns.ip(&["-6", "route", "show"]);
    assert!(v6.contains("fd89::/48 dev sl0"), "{v6}");
    let lookup = ns.ip(&["route", "get", "10.89.200.1"]);
    assert!(lookup.contains("dev sl0"), "{lookup}");
    let lookup = ns.ip(&["-6", "route", "get", "fd89:0:0:1::9"]);
    assert!(lookup.contains("dev sl0"), "{lookup}");

    // Shutdown, step 1: remove what sluice added; the device stays until its queues close.
    rt.block_on(applied.clone().remove(&netlink))
        .expect("routes and addresses removed");
    let v4 = ns.ip(&["-4", "route", "show"]);
    let v6 = ns.ip(&["-6", "route", "show"]);
    assert!(!v4.contains("sl0"), "{v4}");
    assert!(!v6.contains("10.89") && !v6.contains("fd89"), "{v6}");
    let addrs = ns.ip(&["addr", "show", "sl0"]);
    assert!(
        !addrs.contains("10.88.0.1") && !addrs.contains("fd88::1"),
        "{addrs}"
    );
    // Removing twice is harmless: already gone counts as removed.
    rt.block_on(applied.clone().remove(&netlink))
        .expect("second removal is a no-op");

    // Step 2: closing the last queue deletes the device.
    drop(device);
    let links = ns.ip(&["-d", "link", "show"]);
    assert!(!links.contains("sl0"), "{links}");
    assert!(!ns.ip(&["route", "show"]).contains("sl0"));
    assert!(!ns.ip(&["-6", "route", "show"]).contains("sl0"));
    assert!(!ns.ip(&["addr", "show"]).contains("10.88.0.1"));
    // And removal after the device is gone (crash-style shutdown order) succeeds too.
    rt.block_on(applied.remove(&netlink))
        .expect("removal after the device is gone");

    // A device deleted over netlink takes its routes with it as well.
    let setup = InterfaceSetup {
        mtu: None,
        addresses: vec![net("10.88.1.1/30")],
        routes: vec![net("10.90.0.0/16")],
    };
    let (device, netlink, _applied) = gateway(&ns, &rt, config("sl1", 1, false), setup);
    assert!(ns.ip(&["route", "show"]).contains("10.90.0.0/16 dev sl1"));
    rt.block_on(netlink.delete_link(device.index()))
        .expect("link deleted");
    assert!(!ns.ip(&["-d", "link", "show"]).contains("sl1"));
    assert!(!ns.ip(&["route", "show"]).contains("10.90.0.0"));
}

/// A counter lookup into one protocol's lines of `/proc/net/snmp`.
fn snmp<'a>(text: &'a str, protocol: &str) -> impl Fn(&str) -> u64 + 'a {
    let prefix = format!("{protocol}:");
    let mut lines = text.lines().filter(move |l| l.starts_with(&prefix));
    let names: Vec<&str> = lines
        .next()
        .expect("header line")
        .split_whitespace()
        .collect();
    let values: Vec<&str> = lines
        .next()
        .expect("value line")
        .split_whitespace()
        .collect();
    move |name| {
        let at = names
            .iter()
            .position(|n| *n == name)
            .expect("known counter");
        values[at].parse().expect("numeric counter")
    }
}

// ---------------------------------------------------------------------------------------------
// (c) Offload round trip through a user-space relay.

/// What one direction of the relay saw.
#[derive(Default)]
struct RelayStats {
    /// Packets relayed.
    packets: AtomicU64,
    /// Of which super-packets (GSO kind other than none).
    super_packets: AtomicU64,
    /// Longest packet relayed.
    max_len: AtomicU64,
    /// Packets whose tunnel encoding of the metadata failed to decode (must stay 0).
    bad_meta: AtomicU64,
}

/// Deterministic incompressible-looking test data (xorshift).
fn test_data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Sends `data` over TCP from a socket in `client_ns` to a listener in `server_ns` and returns
/// the SHA-256 the server computed over what it received, and the transfer time.
fn tcp_transfer(
    server_ns: &Namespace,
    client_ns: &Namespace,
    server: SocketAddr,
    data: Arc<Vec<u8>>,
) -> ([u8; 32], Duration) {
    let listener = server_ns.run(|| TcpListener::bind(server).expect("bind"));
    let receiver = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = stream.read(&mut buf).expect("server read");
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        <[u8; 32]>::from(hasher.finalize())
    });
    let start = Instant::now();
    client_ns.run(move || {
        let mut stream =
            TcpStream::connect_timeout(&server, Duration::from_secs(5)).expect("connect");
        stream
            .set_write_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        stream.write_all(&data).expect("client write");
        stream
            .shutdown(std::net::Shutdown::Write)
            .expect("shutdown");
    });
    let digest = receiver.join().expect("server thread");
    (digest, start.elapsed())
}

/// Two namespaces, each with a TUN device; the test relays between them and runs TCP
/// transfers both ways (IPv4 B->A, IPv6 A->B). Returns the relay stats (A->B, B->A).
fn relay_round_trip(offload_a: bool, offload_b: bool) -> (Arc<RelayStats>, Arc<RelayStats>) {
    let rt = runtime();
    let ns_a = Namespace::new("gw-a");
    let ns_b = Namespace::new("gw-b");
    let setup = |v4: &str, v6: &str| InterfaceSetup {
        mtu: None,
        addresses: vec![net(v4), net(v6)],
        routes: vec![],
    };
    let (dev_a, _nl_a, _) = gateway(
        &ns_a,
        &rt,
        config("sl0", 1, offload_a),
        setup("10.66.0.1/24", "fd66::1/64"),
    );
    let (dev_b, _nl_b, _) = gateway(
        &ns_b,
        &rt,
        config("sl0", 1, offload_b),
        setup("10.66.0.2/24", "fd66::2/64"),
    );
    eprintln!(
        "offload asked A={offload_a} B={offload_b}; in effect A={:?} B={:?}",
        dev_a.offload(),
        dev_b.offload()
    );
    assert_eq!(dev_a.offload().tcp, offload_a);
    assert_eq!(dev_b.offload().tcp, offload_b);
    let queue_a = dev_a.into_queues().pop().expect("queue");
    let queue_b = dev_b.into_queues().pop().expect("queue");
    // Each queue is used by both relay directions (one reads, one writes): share them.
    let queue_a = Arc::new(queue_a);
    let queue_b = Arc::new(queue_b);
    let a_to_b = Arc::new(RelayStats::default());
    let b_to_a = Arc::new(RelayStats::default());
    let tasks = [
        rt.spawn(relay(queue_a.clone(), queue_b.clone(), a_to_b.clone())),
        rt.spawn(relay(queue_b, queue_a, b_to_a.clone())),
    ];

    const LEN: usize = 4 << 20;
    let data = Arc::new(test_data(LEN, 0x5eed));
    let expected = <[u8; 32]>::from(Sha256::digest(data.as_slice()));
    let server_v4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 66, 0, 1)), 5001);
    let (digest, took) = tcp_transfer(&ns_a, &ns_b, server_v4, data.clone());
    assert_eq!(digest, expected, "IPv4 transfer B->A arrived intact");
    eprintln!(
        "IPv4 B->A: {LEN} bytes in {took:?} ({:.0} Mbit/s, debug build)",
        LEN as f64 * 8.0 / took.as_secs_f64() / 1e6
    );
    let server_v6 = SocketAddr::new(IpAddr::V6("fd66::2".parse().expect("literal")), 5002);
    let (digest, took) = tcp_transfer(&ns_b, &ns_a, server_v6, data);
    assert_eq!(digest, expected, "IPv6 transfer A->B arrived intact");
    eprintln!(
        "IPv6 A->B: {LEN} bytes in {took:?} ({:.0} Mbit/s, debug build)",
        LEN as f64 * 8.0 / took.as_secs_f64() / 1e6
    );
    for task in tasks {
        task.abort();
    }
    for (name, stats) in [("A->B", &a_to_b), ("B->A", &b_to_a)] {
        eprintln!(
            "relay {name}: {} packets, {} super-packets, longest {} bytes",
            stats.packets.load(Ordering::Relaxed),
            stats.super_packets.load(Ordering::Relaxed),
            stats.max_len.load(Ordering::Relaxed)
        );
        assert_eq!(stats.bad_meta.load(Ordering::Relaxed), 0);
    }
    (a_to_b, b_to_a)
}

/// Copies packets from `from` to `to` the way the tunnel will: the metadata goes through its
/// tunnel encoding and back.
async fn relay(from: Arc<TunQueue>, to: Arc<TunQueue>, stats: Arc<RelayStats>) {
    let mut buf = vec![0u8; from.recv_buffer_len()];
    loop {
        let received = from.recv(&mut buf).await.expect("relay read");
        let packet = &buf[..received.len];
        let gso = match received.gso {
            Some(meta) => {
                let mut wire = [0u8; GsoMeta::MAX_ENCODED_LEN];
                let n = meta.encode(&mut wire);
                match GsoMeta::decode(&wire[..n]) {
                    Ok((decoded, _)) => Some(decoded),
                    Err(_) => {
                        stats.bad_meta.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                }
            }
            None => None,
        };
        stats.packets.fetch_add(1, Ordering::Relaxed);
        if gso.is_some_and(|m| m.kind != GsoKind::None) {
            stats.super_packets.fetch_add(1, Ordering::Relaxed);
        }
        stats
            .max_len
            .fetch_max(received.len as u64, Ordering::Relaxed);
        if let Err(e) = to.send(packet, gso).await {
            panic!("relay write of {} bytes with {gso:?}: {e}", packet.len());
        }
    }
}

/// (c) Both gateways with offload: super-packets larger than the MTU cross whole, TCP data
/// arrives intact both ways.
#[test]
fn offload_round_trip_carries_super_packets_whole() {
    if !can_run("offload_round_trip_carries_super_packets_whole") {
        return;
    }
    let (a_to_b, b_to_a) = relay_round_trip(true, true);
    for stats in [&a_to_b, &b_to_a] {
        assert!(stats.super_packets.load(Ordering::Relaxed) > 0);
        assert!(stats.max_len.load(Ordering::Relaxed) > u64::from(MTU));
    }
}

/// (c') A gateway with offload talking to one without: the plain side finishes checksums and
/// cuts super-packets in software, and the transfers still arrive intact.
#[test]
fn super_packets_are_segmented_for_a_device_without_offload() {
    if !can_run("super_packets_are_segmented_for_a_device_without_offload") {
        return;
    }
    let (a_to_b, b_to_a) = relay_round_trip(true, false);
    assert!(a_to_b.super_packets.load(Ordering::Relaxed) > 0);
    assert!(a_to_b.max_len.load(Ordering::Relaxed) > u64::from(MTU));
    assert_eq!(b_to_a.super_packets.load(Ordering::Relaxed), 0);
    assert!(b_to_a.max_len.load(Ordering::Relaxed) <= u64::from(MTU));
}

/// (d) Multi-queue: every queue opens, and the kernel spreads flows over all of them.
#[test]
fn flows_are_spread_over_all_queues() {
    if !can_run("flows_are_spread_over_all_queues") {
        return;
    }
    const QUEUES: usize = 4;
    const FLOWS: usize = 256;
    let rt = runtime();
    let ns = Namespace::new("mq");
    let setup = InterfaceSetup {
        mtu: None,
        addresses: vec![net("10.55.0.1/24")],
        routes: vec![],
    };
    let (device, _netlink, _applied) = gateway(&ns, &rt, config("sl0", QUEUES, true), setup);
    assert_eq!(device.queues().len(), QUEUES);
    let counts: Arc<Vec<AtomicUsize>> =
        Arc::new((0..QUEUES).map(|_| AtomicUsize::new(0)).collect());
    let readers: Vec<_> = device
        .into_queues()
        .into_iter()
        .enumerate()
        .map(|(i, queue)| {
            let counts = counts.clone();
            rt.spawn(async move {
                let mut buf = vec![0u8; queue.recv_buffer_len()];
                loop {
                    let received = queue.recv(&mut buf).await.expect("TUN read");
                    if buf[..received.len].ends_with(b"sluice-mq") {
                        counts[i].fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    ns.run(|| {
        for flow in 0..FLOWS {
            let socket = std::net::UdpSocket::bind("10.55.0.1:0").expect("bind");
            let port = 9000 + (flow % 100) as u16;
            socket
                .send_to(b"sluice-mq", (Ipv4Addr::new(10, 55, 0, 2), port))
                .expect("send");
        }
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    let total = || {
        counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum::<usize>()
    };
    while total() < FLOWS && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    for reader in readers {
        reader.abort();
    }
    let per_queue: Vec<usize> = counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    eprintln!("{FLOWS} UDP flows over {QUEUES} queues: {per_queue:?}");
    assert_eq!(total(), FLOWS, "every datagram read from some queue");
    assert!(
        per_queue.iter().all(|&n| n > 0),
        "every queue got packets: {per_queue:?}"
    );
}
