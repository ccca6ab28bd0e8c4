//! End-to-end tests: two sluice gateways between two LANs in network namespaces, with real
//! programs (ping, curl against an HTTP server, UDP sockets) through the tunnel.
//!
//! They need root, `/dev/net/tun` and iproute2. Without them every test prints why it was
//! skipped; with `CI=true` a skip fails the test. They run one at a time (a lock), because
//! the machine has two cores and the transfers measure bytes on the WAN link.

mod bench;
mod harness;
mod reliability;
mod security;
mod sites;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use harness::{Topology, addr, require_root, sha256};
use sites::Options;

static SERIAL: Mutex<()> = Mutex::new(());

/// Takes the lock that keeps netns tests from running side by side.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[test]
fn one_runtime_thread_per_gateway_carries_traffic() {
    if !require_root("one_runtime_thread_per_gateway_carries_traffic") {
        return;
    }
    let _serial = serial();
    let topo = Topology::new("threads");
    let opts = Options {
        threads: "1",
        ..Options::default()
    };
    let g = sites::up(&topo, opts);
    // Two shards on one thread: both directions, both address families.
    for (from, to) in [(&topo.lan_a, addr::LAN_B), (&topo.lan_b, addr::LAN_A6)] {
        let out = topo.try_exec(from, &["ping", "-c", "3", "-i", "0.2", "-W", "2", to]);
        assert!(
            out.status.success(),
            "ping {to} from {from} failed:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    // The runtime itself says how many workers it has.
    for (ns, site) in [(&topo.gw_a, &g.a), (&topo.gw_b, &g.b)] {
        let status = sites::status(&topo, ns, site);
        assert!(
            status.contains("shards 2  threads 1  "),
            "{ns}: status does not show 2 shards on 1 thread:\n{status}"
        );
    }
}

#[test]
fn ping_both_ways_ipv4_and_ipv6() {
    if !require_root("ping_both_ways_ipv4_and_ipv6") {
        return;
    }
    let _serial = serial();
    let topo = Topology::new("ping");
    let g = sites::up(&topo, Options::default());
    for (from, to) in [
        (&topo.lan_a, addr::LAN_B),
        (&topo.lan_b, addr::LAN_A),
        (&topo.lan_a, addr::LAN_B6),
        (&topo.lan_b, addr::LAN_A6),
    ] {
        let out = topo.try_exec(from, &["ping", "-c", "3", "-i", "0.2", "-W", "2", to]);
        assert!(
            out.status.success(),
            "ping {to} from {from} failed:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    // UDP requests 10 ms apart, each answered: each side's ack of what it received rides
    // beside the next packet it sends (the answer, the next request) instead of waiting
    // 25 ms to go on its own. (UDP rather than ping: the TUN device sends a flow's packets to
    // the queue, and so the shard, that wrote its last packet, which for TCP and UDP is the
    // shard holding the decoder to ack; ping's replies were not always steered back so.)
    let script = topo.dir.join("echo.py");
    std::fs::write(&script, ECHO_SCRIPT).unwrap();
    let script = script.to_string_lossy().into_owned();
    let _echo = topo.spawn(
        &topo.lan_b,
        &["python3", &script, "serve", addr::LAN_B],
        "echo.log",
    );
    std::thread::sleep(Duration::from_millis(300));
    let asked = topo.exec(&topo.lan_a, &["python3", &script, "ask", addr::LAN_B]);
    assert_eq!(asked.trim(), "40 answered", "UDP exchange");
    // Both sides know each other's endpoint, yet there is exactly one connection. And
    // `threads = "auto"` ran one runtime worker per core (at most 16).
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get().min(16));
    for (ns, site) in [(&topo.gw_a, &g.a), (&topo.gw_b, &g.b)] {
        let status = sites::status(&topo, ns, site);
        assert!(
            status.contains(&format!("  threads {cores}  ")),
            "{ns}: status does not show {cores} runtime threads:\n{status}"
        );
        assert!(
            status.contains("connected to") && status.contains("connections so far 1 "),
            "one connection, never replaced:\n{status}"
        );
        let (with_data, on_control) = acks_sent(&status);
        assert!(
            with_data >= 30,
            "acks ride beside the pings ({with_data} did, {on_control} went alone):\n{status}"
        );
    }
}

/// A UDP echo server (`serve ADDR`) and a client (`ask ADDR`) that sends 40 requests 10 ms
/// apart, each waiting for its answer.
const ECHO_SCRIPT: &str = r#"
import socket, sys, time
mode, host = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
if mode == "serve":
    s.bind((host, 7777))
    while True:
        data, peer = s.recvfrom(2048)
        s.sendto(data, peer)
s.settimeout(2)
answered = 0
for i in range(40):
    s.sendto(b"request %d" % i, (host, 7777))
    if s.recvfrom(2048)[0] == b"request %d" % i:
        answered += 1
    time.sleep(0.01)
print(answered, "answered")
"#;

/// The `acks sent: N beside data, M on the control stream` line of `sluice status`.
fn acks_sent(status: &str) -> (u64, u64) {
    let line = status
        .lines()
        .find_map(|l| l.trim().strip_prefix("acks sent: "))
        .unwrap_or_else(|| panic!("no acks line in:\n{status}"));
    let numbers: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert_eq!(numbers.len(), 2, "two counts in {line:?}");
    (numbers[0], numbers[1])
}

#[test]
fn http_transfers_of_real_files_are_byte_exact_both_ways() {
    if !require_root("http_transfers_of_real_files_are_byte_exact_both_ways") {
        return;
    }
    let _serial = serial();
    let topo = Topology::new("http");
    let _g = sites::up(&topo, Options::default());
    let served = topo.dir.join("served");
    std::fs::create_dir_all(&served).unwrap();
    let docs = sites::text_corpus(&served, 50_000_000);
    let docs_sum = sha256(&docs);
    let size = std::fs::metadata(&docs).unwrap().len();
    assert!(size >= 50_000_000, "corpus is {size} bytes");

    // lanB serves, lanA fetches.
    let _server_b = sites::http_server(&topo, &topo.lan_b, &served, addr::LAN_B);
    let got = topo.dir.join("got-a.tar");
    sites::fetch(&topo, &topo.lan_a, "http://10.2.0.2:8080/docs.tar", &got);
    assert_eq!(sha256(&got), docs_sum, "lanA received the exact bytes");
    // The sending gateway read the fetch from its TUN device in bursts of super-packets;
    // none of them may have been dropped for want of room in the encoder's queue.
    let status = sites::status(&topo, &topo.gw_b, &_g.b);
    assert!(
        status.contains(" refused 0  send errors"),
        "gwB's encoders refused packets:\n{status}"
    );

    // lanA serves, lanB fetches, over IPv6 this time.
    let _server_a = sites::http_server(&topo, &topo.lan_a, &served, addr::LAN_A6);
    let got = topo.dir.join("got-b.tar");
    sites::fetch(&topo, &topo.lan_b, "http://[fd01::2]:8080/docs.tar", &got);
    assert_eq!(sha256(&got), docs_sum, "lanB received the exact bytes");
}

#[test]
fn udp_datagrams_arrive_intact() {
    if !require_root("udp_datagrams_arrive_intact") {
        return;
    }
    let _serial = serial();
    let topo = Topology::new("udp");
    let _g = sites::up(&topo, Options::default());
    // A sender in lanA sends datagrams of many sizes (1 .. 8000 bytes: the big ones are
    // IP-fragmented by the sender and must survive the tunnel too), paced so nothing is lost
    // to socket buffers; a receiver in lanB checks that every one arrives once, byte for
    // byte. Order is not required: IP fragments and whole datagrams of one UDP flow can take
    // different TUN queues (the kernel hashes fragments without ports), as they could take
    // different paths on any IP network.
    let script = topo.dir.join("udp.py");
    std::fs::write(&script, UDP_SCRIPT).unwrap();
    let script = script.to_string_lossy().into_owned();
    let mut receiver = topo.spawn(
        &topo.lan_b,
        &["python3", &script, "recv", addr::LAN_B, "9999", "400"],
        "udp-recv.log",
    );
    std::thread::sleep(Duration::from_millis(300));
    let sent = topo.exec(
        &topo.lan_a,
        &["python3", &script, "send", addr::LAN_B, "9999", "400"],
    );
    let code = receiver.wait_exit(Duration::from_secs(20));
    let received = topo.log("udp-recv.log");
    assert_eq!(code, Some(Some(0)), "receiver finished: {received}");
    assert!(
        received.starts_with(sent.trim()),
        "every datagram arrived once with the same bytes: {received}"
    );
}

const UDP_SCRIPT: &str = r#"
import hashlib, socket, sys, time
mode, host, port, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
def payload(i):
    size = 1 + (i * 7919) % 8000
    seed = hashlib.sha256(str(i).encode()).digest()
    return (seed * (size // 32 + 1))[:size]
expected = {}
for i in range(count):
    expected[payload(i)] = i
if mode == "send":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    # IP_MTU_DISCOVER = IP_PMTUDISC_DONT: no DF bit, so datagrams bigger than the tunnel MTU
    # are fragmented on the way (as for DNS); with DF the first one would only teach the
    # sender the path MTU (that case has its own test).
    s.setsockopt(socket.IPPROTO_IP, 10, 0)
    for i in range(count):
        s.sendto(payload(i), (host, port))
        time.sleep(0.002)
    print(count, "sent")
else:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind((host, port))
    s.settimeout(15)
    seen = set()
    order = []
    while len(seen) < count:
        try:
            data, _ = s.recvfrom(65535)
        except socket.timeout:
            missing = sorted(set(range(count)) - seen)
            print("missing", len(missing), "datagrams, sizes", [len(payload(i)) for i in missing][:40], flush=True)
            sys.exit(1)
        i = expected.get(data)
        if i is None:
            print("a datagram arrived with bytes that were never sent", flush=True)
            sys.exit(1)
        if i in seen:
            print("datagram", i, "arrived twice", flush=True)
            sys.exit(1)
        seen.add(i)
        order.append(i)
    late = sum(1 for a, b in zip(order, order[1:]) if b < a)
    print(count, "sent", flush=True)
    print("out of order:", late, file=sys.stderr, flush=True)
"#;

#[test]
fn wan_bytes_shrink_for_text_and_barely_grow_for_random_data() {
    if !require_root("wan_bytes_shrink_for_text_and_barely_grow_for_random_data") {
        return;
    }
    let _serial = serial();
    let topo = Topology::new("ratio");
    let _g = sites::up(&topo, Options::default());
    let served = topo.dir.join("served");
    std::fs::create_dir_all(&served).unwrap();
    let docs = sites::text_corpus(&served, 20_000_000);
    let random = sites::random_file(&served, "random.bin", 20_000_000);
    let _server = sites::http_server(&topo, &topo.lan_b, &served, addr::LAN_B);

    for (file, url, limit) in [
        (&docs, "http://10.2.0.2:8080/docs.tar", 0.6),
        (&random, "http://10.2.0.2:8080/random.bin", 1.06),
    ] {
        let payload = std::fs::metadata(file).unwrap().len();
        let before = topo.wan_bytes();
        let got = topo.dir.join("got");
        sites::fetch(&topo, &topo.lan_a, url, &got);
        let wan = topo.wan_bytes() - before;
        assert_eq!(sha256(&got), sha256(file));
        let ratio = wan as f64 / payload as f64;
        eprintln!("{url}: {wan} WAN bytes for {payload} payload bytes: {ratio:.3}");
        eprintln!("{}", sites::status(&topo, &topo.gw_b, &_g.b));
        assert!(
            ratio < limit,
            "{url}: WAN/payload {ratio:.3} is not below {limit}"
        );
    }
}

#[test]
fn a_peer_with_the_wrong_certificate_gets_nothing_through() {
    if !require_root("a_peer_with_the_wrong_certificate_gets_nothing_through") {
        return;
    }
    let _serial = serial();
    let topo = Topology::new("cert");
    let opts = Options::default();
    let a = sites::keygen(&topo, "a");
    let b = sites::keygen(&topo, "b");
    let mallory = sites::keygen(&topo, "m");
    // A pins B; B's gateway runs with Mallory's key instead (B's config pins A correctly).
    sites::write_config(&a, true, &b.fingerprint, &opts);
    sites::write_config(&mallory, false, &a.fingerprint, &opts);
    let _gw_a = sites::start(&topo, &topo.gw_a, &a, &opts, "gw-a.log");
    let _gw_m = sites::start(&topo, &topo.gw_b, &mallory, &opts, "gw-m.log");
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        !topo.ping_ok(&topo.lan_a, addr::LAN_B),
        "no packet through A->B"
    );
    assert!(
        !topo.ping_ok(&topo.lan_b, addr::LAN_A),
        "no packet through B->A"
    );
    let log_a = topo.log("gw-a.log");
    let presented = mallory.fingerprint.trim_start_matches("sha256:");
    assert!(
        log_a.contains(presented),
        "gateway A logs the fingerprint it was shown ({presented}):\n{log_a}"
    );
    let status = sites::status(&topo, &topo.gw_a, &a);
    assert!(
        status.contains("not connected") && !status.contains("connected to"),
        "status shows no connection:\n{status}"
    );
    // Nothing was written to either TUN device: every "LAN out" count is 0.
    let status_m = sites::status(&topo, &topo.gw_b, &mallory);
    for (who, status) in [("A", &status), ("Mallory", &status_m)] {
        let written: Vec<&str> = status
            .split("LAN out")
            .skip(1)
            .filter_map(|rest| rest.split_whitespace().next())
            .collect();
        assert!(
            !written.is_empty() && written.iter().all(|n| *n == "0"),
            "gateway {who} wrote nothing to its TUN device: {written:?}\n{status}"
        );
    }
    let handshakes = status
        .lines()
        .find(|l| l.starts_with("endpoint:"))
        .unwrap_or_default();
    assert!(
        handshakes.contains("handed to a peer 0"),
        "no connection was handed to a session: {handshakes}"
    );
}

#[test]
fn oversize_df_packets_get_frag_needed_and_pmtu_works() {
    if !require_root("oversize_df_packets_get_frag_needed_and_pmtu_works") {
        return;
    }
    let _serial = serial();
    let topo = Topology::new("pmtu");
    let _g = sites::up(&topo, Options::default());
    let mtu: usize = topo
        .exec(&topo.gw_a, &["cat", "/sys/class/net/sluice0/mtu"])
        .trim()
        .parse()
        .unwrap();
    assert!((1280..1500).contains(&mtu), "tunnel MTU {mtu}");
    // 28 bytes of IPv4 + ICMP header: this payload makes a packet one byte too big.
    let too_big = (mtu - 28 + 1).to_string();
    let out = topo.try_exec(
        &topo.lan_a,
        &[
            "ping",
            "-c",
            "1",
            "-W",
            "2",
            "-M",
            "do",
            "-s",
            &too_big,
            addr::LAN_B,
        ],
    );
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an oversize DF ping does not pass");
    assert!(
        text.contains("Frag needed") || text.contains("mtu") || text.contains("Message too long"),
        "the sender learns the path MTU: {text}"
    );
    // Now the sender knows the MTU: a fitting DF ping passes and so does a TCP transfer.
    let fits = (mtu - 28).to_string();
    assert!(
        topo.try_exec(
            &topo.lan_a,
            &[
                "ping",
                "-c",
                "2",
                "-W",
                "2",
                "-M",
                "do",
                "-s",
                &fits,
                addr::LAN_B
            ]
        )
        .status
        .success()
    );
    let served = topo.dir.join("served");
    std::fs::create_dir_all(&served).unwrap();
    let file = sites::random_file(&served, "r.bin", 3_000_000);
    let _server = sites::http_server(&topo, &topo.lan_b, &served, addr::LAN_B);
    let got = topo.dir.join("got");
    sites::fetch(&topo, &topo.lan_a, "http://10.2.0.2:8080/r.bin", &got);
    assert_eq!(sha256(&got), sha256(&file));
}

#[test]
fn packets_from_outside_allowed_ips_are_dropped() {
    if !require_root("packets_from_outside_allowed_ips_are_dropped") {
        return;
    }
    let _serial = serial();
    let topo = Topology::new("spoof");
    let g = sites::up(&topo, Options::default());
    // lanB gets a second address outside what gateway A allows for site B, and pings lanA
    // from it. Gateway B forwards it into the tunnel; gateway A must drop it.
    topo.exec(
        &topo.lan_b,
        &["ip", "addr", "add", "10.77.0.1/32", "dev", "eth0"],
    );
    topo.exec(
        &topo.gw_b,
        &["ip", "route", "add", "10.77.0.1/32", "via", addr::LAN_B],
    );
    assert!(
        topo.ping_ok(&topo.lan_b, addr::LAN_A),
        "the allowed source works"
    );
    let spoofed = topo.try_exec(
        &topo.lan_b,
        &[
            "ping",
            "-c",
            "3",
            "-i",
            "0.2",
            "-W",
            "1",
            "-I",
            "10.77.0.1",
            addr::LAN_A,
        ],
    );
    assert!(
        !spoofed.status.success(),
        "a source outside allowed_ips gets nothing through"
    );
    let status = sites::status(&topo, &topo.gw_a, &g.a);
    assert!(
        status.contains("source not allowed"),
        "gateway A counts the drops:\n{status}"
    );
}

#[test]
fn sigterm_cleans_up_and_a_killed_gateway_comes_back() {
    if !require_root("sigterm_cleans_up_and_a_killed_gateway_comes_back") {
        return;
    }
    let _serial = serial();
    let topo = Topology::new("life");
    let mut g = sites::up(&topo, Options::default());

    // kill -9 gateway B, restart it: traffic flows again within 5 s, A untouched.
    g.gw_b.signal("KILL");
    assert!(g.gw_b.wait_exit(Duration::from_secs(2)).is_some());
    // The device of a killed process disappears with its file descriptor.
    let restarted = Instant::now();
    g.gw_b = sites::start(&topo, &topo.gw_b, &g.b, &g.opts, "gw-b2.log");
    let back = topo.wait_for(Duration::from_secs(5), || {
        topo.ping_ok(&topo.lan_a, addr::LAN_B)
    });
    assert!(
        back.is_some(),
        "traffic resumed within 5 s of the restart ({:?})\n--- gw-a\n{}\n--- gw-b2\n{}",
        restarted.elapsed(),
        topo.log("gw-a.log"),
        topo.log("gw-b2.log")
    );
    assert!(g.gw_a.is_running(), "gateway A was not restarted");

    // SIGTERM: exits 0 within 2 s, leaves no device and no route.
    g.gw_a.signal("TERM");
    let code = g.gw_a.wait_exit(Duration::from_secs(2));
    assert_eq!(
        code,
        Some(Some(0)),
        "gateway A exits 0 within 2 s:\n{}",
        topo.log("gw-a.log")
    );
    assert!(!topo.has_link(&topo.gw_a, "sluice0"), "device removed");
    assert!(
        topo.routes_matching(&topo.gw_a, "sluice0").is_empty(),
        "routes removed: {:?}",
        topo.routes_matching(&topo.gw_a, "sluice0")
    );
}

/// A copy of `src` with a few bytes changed every `every` bytes: a new version of a file set
/// with scattered edits.
fn edited_copy(src: &std::path::Path, dst: &std::path::Path, every: usize) {
    let mut bytes = std::fs::read(src).expect("read corpus");
    let mut at = every / 2;
    while at + 8 < bytes.len() {
        for b in &mut bytes[at..at + 8] {
            *b = b.wrapping_add(1);
        }
        at += every;
    }
    std::fs::write(dst, bytes).expect("write edited corpus");
}

#[test]
fn dedupe_makes_repeat_fetches_cheap_and_survives_a_restart() {
    if !require_root("dedupe_makes_repeat_fetches_cheap_and_survives_a_restart") {
        return;
    }
    let _serial = serial();
    let topo = Topology::new("dedupe");
    let mut g = sites::up(&topo, Options::default());
    let served = topo.dir.join("served");
    std::fs::create_dir_all(&served).unwrap();
    let docs = sites::text_corpus(&served, 20_000_000);
    let edited = served.join("docs-v2.tar");
    edited_copy(&docs, &edited, 64 * 1024);
    // Stands for a compressed file (an update package) fetched by two machines: the
    // compression trial calls its flow incompressible, so dedupe scans it with sparse anchors.
    let package = sites::random_file(&served, "package.bin", 10_000_000);
    let _server = sites::http_server(&topo, &topo.lan_b, &served, addr::LAN_B);

    let fetch = |url: &str, want: &std::path::Path| {
        let payload = std::fs::metadata(want).unwrap().len();
        let before = topo.wan_bytes();
        let got = topo.dir.join("got");
        sites::fetch(&topo, &topo.lan_a, url, &got);
        let wan = topo.wan_bytes() - before;
        assert_eq!(sha256(&got), sha256(want), "{url} arrived byte-exact");
        eprintln!(
            "{url}: {wan} WAN bytes for {payload} payload bytes ({:.4})",
            wan as f64 / payload as f64
        );
        eprintln!("{}", sites::status(&topo, &topo.gw_b, &g.b));
        wan
    };
    let first = fetch("http://10.2.0.2:8080/docs.tar", &docs);
    let second = fetch("http://10.2.0.2:8080/docs.tar", &docs);
    let version = fetch("http://10.2.0.2:8080/docs-v2.tar", &edited);
    let package_first = fetch("http://10.2.0.2:8080/package.bin", &package);
    let package_second = fetch("http://10.2.0.2:8080/package.bin", &package);
    let payload = std::fs::metadata(&docs).unwrap().len();
    let status = sites::status(&topo, &topo.gw_b, &g.b);
    eprintln!("{status}");
    // The issue asks for at most 10% of the first fetch; measured here: 6.6% (was 15-18%
    // before the encoder followed its trail from one packet to the next, see
    // `dedupe::encode::Trail`). The first fetch is itself deduplicated (the docs repeat
    // themselves), so it costs only 0.06 of its payload; the repeat costs about 0.4%.
    assert!(
        second * 100 <= first * 10,
        "the second fetch took {second} WAN bytes, more than 10% of the first's {first}"
    );
    assert!(
        second * 100 <= payload,
        "the second fetch took {second} WAN bytes, more than 1% of its {payload} payload bytes"
    );
    assert!(
        version * 5 <= first,
        "the edited version took {version} WAN bytes, more than 20% of the first's {first}"
    );
    assert!(
        package_second * 10 <= package_first,
        "the incompressible file's second fetch took {package_second} WAN bytes, more than 10% \
         of the first's {package_first}"
    );
    assert!(
        status.contains("references rejected 0") || !status.contains("references rejected"),
        "no reference was refused:\n{status}"
    );

    // Gateway B (the sending side) killed and restarted in the middle of a slowed-down fetch:
    // TCP retransmits across the gap, the new connection starts empty dedupe rings, and the
    // file still arrives byte-exact.
    let got = topo.dir.join("got-restart");
    let got_arg = got.to_string_lossy().into_owned();
    let mut curl = topo.spawn(
        &topo.lan_a,
        &[
            "curl",
            "-sS",
            "--fail",
            "--limit-rate",
            "4M",
            "--max-time",
            "120",
            "-o",
            &got_arg,
            "http://10.2.0.2:8080/docs.tar",
        ],
        "curl-restart.log",
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        curl.is_running(),
        "the fetch is still running at the restart"
    );
    g.gw_b.signal("KILL");
    assert!(g.gw_b.wait_exit(Duration::from_secs(2)).is_some());
    g.gw_b = sites::start(&topo, &topo.gw_b, &g.b, &g.opts, "gw-b2.log");
    let code = curl.wait_exit(Duration::from_secs(120));
    assert_eq!(
        code,
        Some(Some(0)),
        "curl finished across the restart:\n{}\n--- gw-b2\n{}",
        topo.log("curl-restart.log"),
        topo.log("gw-b2.log")
    );
    assert_eq!(sha256(&got), sha256(&docs), "byte-exact across the restart");
}
