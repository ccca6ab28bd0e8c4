//! `sluice-impair` on 127.0.0.1: an echo server behind the relay, a client sending through it.
//! The model's decisions depend only on the seed and the order of arrivals (no rate limit here),
//! so the counts are steady run to run; the bounds are still statistical (5 standard
//! deviations), so a change of generator cannot make them flaky. Nothing asserts on timing:
//! the client stops reading after a quiet spell, which only bounds how long a test takes.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sluice::impair::model::{Corrupt, LaneSettings, Probability, Settings};
use sluice::impair::{Relay, RelayConfig, RelayStats};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

/// Datagrams per run.
const N: u32 = 2000;
/// Bytes per datagram: a sequence number and a pattern derived from it.
const LEN: usize = 64;
/// Sent back to back, then a 1 ms pause, so no socket buffer on the way overflows: 5k
/// datagrams/s, up to 11k/s at the echo server with duplication both ways. The relay's
/// sockets get at most `rmem_max` (about 200 KiB by default), so a task of the relay or the
/// echo server scheduled late on a busy machine must not face a faster flood (at 20 per
/// burst CI lost 197 of 2988 copies on the way to the echo server under heavy CPU steal).
const BURST: u32 = 5;
/// How long the client waits for more replies before it counts.
const QUIET: Duration = Duration::from_millis(400);

fn p(x: f64) -> Probability {
    Probability::new(x).unwrap()
}

/// Datagram `seq`: the number, then bytes that depend on it.
fn datagram(seq: u32) -> [u8; LEN] {
    let mut d = [0u8; LEN];
    d[..4].copy_from_slice(&seq.to_be_bytes());
    for (i, b) in d[4..].iter_mut().enumerate() {
        *b = (seq as usize).wrapping_mul(31).wrapping_add(i * 7) as u8;
    }
    d
}

/// The sequence number of an intact datagram, `None` for a corrupted one.
fn intact(bytes: &[u8]) -> Option<u32> {
    let seq = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?);
    (seq < N && bytes == datagram(seq)).then_some(seq)
}

/// Gives the client 4 MiB of receive buffer (past `rmem_max`, which root may do), so a
/// reader that the test machine schedules late does not lose replies. Best effort: without
/// the privilege the default buffer stays, and the concurrent reader usually suffices.
fn large_receive_buffer(socket: &std::net::UdpSocket) {
    use std::os::fd::AsRawFd;
    let size: libc::c_int = 4 << 20;
    // SAFETY: setsockopt on a socket we own, with a pointer to a live c_int and its size.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Echoes every datagram back to its sender until the task is dropped. Its socket gets the
/// large receive buffer too: with duplication the relay sends it bursts of up to four copies
/// per datagram, and an echo task scheduled late on a busy machine (CI saw 197 of 2988 lost
/// here under heavy CPU steal) would otherwise look like loss the model never made.
async fn echo_server() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    large_receive_buffer(&socket);
    socket.set_nonblocking(true).unwrap();
    let socket = UdpSocket::from_std(socket).unwrap();
    let addr = socket.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok((len, from)) = socket.recv_from(&mut buf).await {
            let _ = socket.send_to(&buf[..len], from).await;
        }
    });
    (addr, task)
}

/// What came back to the client.
#[derive(Debug, Default)]
struct Received {
    /// Every reply.
    total: usize,
    /// Replies that matched a datagram sent.
    intact: usize,
    /// Distinct datagrams that came back intact at least once.
    distinct: usize,
}

/// Sends `N` datagrams to `relay` while a second task collects the replies, until `QUIET`
/// passes without one after the last send. Reading concurrently keeps the client's own socket
/// buffer from overflowing, which would look like loss.
async fn send_and_collect(relay: SocketAddr) -> Received {
    let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    large_receive_buffer(&client);
    client.set_nonblocking(true).unwrap();
    let client = Arc::new(UdpSocket::from_std(client).unwrap());
    client.connect(relay).await.unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (client, done) = (client.clone(), done.clone());
        tokio::spawn(async move {
            let mut seen = vec![false; N as usize];
            let mut got = Received::default();
            let mut buf = [0u8; 2048];
            loop {
                match tokio::time::timeout(QUIET, client.recv(&mut buf)).await {
                    Ok(Ok(len)) => {
                        got.total += 1;
                        if let Some(seq) = intact(&buf[..len]) {
                            got.intact += 1;
                            if !std::mem::replace(&mut seen[seq as usize], true) {
                                got.distinct += 1;
                            }
                        }
                    }
                    _ if done.load(Ordering::Relaxed) => return got,
                    _ => {}
                }
            }
        })
    };
    for seq in 0..N {
        client.send(&datagram(seq)).await.unwrap();
        if seq % BURST == BURST - 1 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    done.store(true, Ordering::Relaxed);
    reader.await.unwrap()
}

/// Runs the relay in this process with `settings` both ways, sends `N` datagrams through it
/// and returns what came back and the relay's counters.
async fn through_relay(lane: LaneSettings, seed: u64) -> (Received, RelayStats) {
    let (echo, echo_task) = echo_server().await;
    let relay = Relay::bind(RelayConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        upstream: echo,
        seed,
        impairment: Settings {
            up: lane,
            down: lane,
            cut: None,
        },
    })
    .await
    .unwrap();
    let addr = relay.local_addr();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(relay.run(shutdown.clone()));
    let received = send_and_collect(addr).await;
    shutdown.cancel();
    let stats = running.await.unwrap().unwrap();
    echo_task.abort();
    (received, stats)
}

/// Asserts `x` is within `sds` standard deviations `sd` of `mean`.
fn within(what: &str, x: usize, mean: f64, sd: f64) {
    assert!(
        (x as f64 - mean).abs() <= 5.0 * sd,
        "{what}: {x}, expected {mean:.0} ± {:.0}",
        5.0 * sd
    );
}

/// The counters every run must satisfy: each datagram received up is accounted for.
fn assert_conserved(stats: &RelayStats) {
    for d in [&stats.up, &stats.down] {
        let m = &d.model;
        let copies = m.received + m.duplicated;
        let dropped = m.dropped_cut + m.dropped_burst + m.dropped_loss + m.dropped_queue;
        assert_eq!(
            copies,
            dropped + d.forwarded + d.send_errors + d.dropped_overflow + d.unsent_at_shutdown,
            "{stats:?}"
        );
    }
    assert_eq!(stats.clients, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loss_in_both_directions_returns_the_product_of_the_survival_rates() {
    let lane = LaneSettings {
        loss: p(0.1),
        ..Default::default()
    };
    let (got, stats) = through_relay(lane, 1).await;
    assert_conserved(&stats);
    assert_eq!(stats.up.model.received, u64::from(N), "{stats:?}");
    // Survives both ways with 0.9 × 0.9.
    let n = f64::from(N);
    within("replies", got.total, n * 0.81, (n * 0.81 * 0.19).sqrt());
    assert_eq!(got.intact, got.total);
    assert_eq!(got.total as u64, stats.down.forwarded);
    within(
        "lost up",
        stats.up.model.dropped_loss as usize,
        n * 0.1,
        (n * 0.09).sqrt(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplication_multiplies_the_replies() {
    let lane = LaneSettings {
        duplicate: p(0.5),
        ..Default::default()
    };
    let (got, stats) = through_relay(lane, 2).await;
    assert_conserved(&stats);
    // Every datagram comes back at least once; on average 1.5 × 1.5 copies.
    assert_eq!(got.distinct, N as usize, "{got:?} {stats:?}");
    let n = f64::from(N);
    // Per datagram: 1 or 2 copies up, each 1 or 2 down; variance 0.6875.
    within("replies", got.total, n * 2.25, (n * 0.6875).sqrt());
    assert_eq!(
        stats.up.forwarded,
        stats.up.model.received + stats.up.model.duplicated
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corruption_spoils_the_expected_share_and_nothing_is_lost() {
    let lane = LaneSettings {
        corrupt: Some(Corrupt {
            probability: p(0.2),
            max_bytes: 2.try_into().unwrap(),
        }),
        ..Default::default()
    };
    let (got, stats) = through_relay(lane, 3).await;
    assert_conserved(&stats);
    assert_eq!(got.total, N as usize);
    let n = f64::from(N);
    // Intact both ways: 0.8 × 0.8.
    within("intact", got.intact, n * 0.64, (n * 0.64 * 0.36).sqrt());
    // The relay counts per direction; a datagram spoiled both ways counts twice there.
    let spoiled = (got.total - got.intact) as u64;
    let (up, down) = (stats.up.model.corrupted, stats.down.model.corrupted);
    assert!(
        up.max(down) <= spoiled && spoiled <= up + down,
        "{spoiled} {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_link_passes_nothing_until_restored() {
    let (echo, echo_task) = echo_server().await;
    let relay = Relay::bind(RelayConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        upstream: echo,
        seed: 4,
        impairment: Settings::default(),
    })
    .await
    .unwrap();
    let addr = relay.local_addr();
    let cut = relay.cut_switch();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(relay.run(shutdown.clone()));
    assert!(cut.toggle());
    let during = send_and_collect(addr).await;
    assert!(!cut.toggle());
    let after = send_and_collect(addr).await;
    shutdown.cancel();
    let stats = running.await.unwrap().unwrap();
    echo_task.abort();
    assert_eq!(during.total, 0);
    assert_eq!(after.distinct, N as usize);
    assert_eq!(stats.up.model.dropped_cut, u64::from(N), "{stats:?}");
    assert_eq!(stats.clients, 2);
}

/// The binary, started with `args` in front of an echo server; returns it and its address.
fn start_binary(
    upstream: SocketAddr,
    args: &[&str],
) -> (Impair, SocketAddr, BufReader<std::process::ChildStderr>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice-impair"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &upstream.to_string(),
        ])
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sluice-impair starts");
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let addr = wait_for_line(&mut stderr, "listening on ")
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    (Impair(Some(child)), addr, stderr)
}

/// The binary under test; killed when dropped, so a failing test leaves no relay running.
struct Impair(Option<Child>);

impl Impair {
    fn signal(&self, signal: libc::c_int) {
        let child = self.0.as_ref().expect("still running");
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        let rc = unsafe { libc::kill(child.id() as libc::pid_t, signal) };
        assert_eq!(rc, 0);
    }

    /// Waits for the exit and returns the output.
    fn finish(mut self) -> std::process::Output {
        let child = self.0.take().expect("still running");
        child.wait_with_output().unwrap()
    }
}

impl Drop for Impair {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Reads stderr lines until one contains `needle`, and returns it.
fn wait_for_line(stderr: &mut impl BufRead, needle: &str) -> String {
    let mut line = String::new();
    loop {
        line.clear();
        let n = stderr.read_line(&mut line).unwrap();
        assert!(n > 0, "stderr closed before {needle:?}");
        if line.contains(needle) {
            return line.trim().to_owned();
        }
    }
}

/// Sends `n` datagrams through the relay at `addr` from a std socket while a second thread
/// counts the replies (as `send_and_collect`, without tokio).
fn send_blocking(addr: SocketAddr, n: u32) -> usize {
    let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    large_receive_buffer(&client);
    client.connect(addr).unwrap();
    client.set_read_timeout(Some(QUIET)).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (client, done) = (client.try_clone().unwrap(), done.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            let mut replies = 0;
            loop {
                match client.recv(&mut buf) {
                    Ok(_) => replies += 1,
                    Err(_) if done.load(Ordering::Relaxed) => return replies,
                    Err(_) => {}
                }
            }
        })
    };
    for seq in 0..n {
        client.send(&datagram(seq)).unwrap();
        if seq % BURST == BURST - 1 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    done.store(true, Ordering::Relaxed);
    reader.join().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_cuts_on_sigusr1_and_prints_its_counters_on_sigterm() {
    let (echo, echo_task) = echo_server().await;
    let (child, addr, mut stderr) = start_binary(echo, &["--seed", "5", "--loss", "down:0.2"]);
    let sent_before = 500;
    let replies = tokio::task::spawn_blocking(move || send_blocking(addr, sent_before))
        .await
        .unwrap();
    // 0.8 × 500 = 400, sd 9.
    assert!((355..=445).contains(&replies), "{replies}");

    child.signal(libc::SIGUSR1);
    wait_for_line(&mut stderr, "link cut");
    let during = tokio::task::spawn_blocking(move || send_blocking(addr, 100))
        .await
        .unwrap();
    assert_eq!(during, 0);
    child.signal(libc::SIGUSR1);
    wait_for_line(&mut stderr, "link restored");

    child.signal(libc::SIGTERM);
    let output = child.finish();
    echo_task.abort();
    assert!(output.status.success(), "{:?}", output.status);
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let up = &json["up"];
    let down = &json["down"];
    assert_eq!(up["received"], 600, "{json}");
    assert_eq!(up["dropped_cut"], 100);
    assert_eq!(up["forwarded"], 500);
    assert_eq!(up["dropped_loss"], 0);
    assert_eq!(down["received"], 500);
    assert_eq!(down["forwarded"].as_u64().unwrap() as usize, replies);
    assert_eq!(
        down["dropped_loss"].as_u64().unwrap() + down["forwarded"].as_u64().unwrap(),
        500
    );
    for key in [
        "dropped_burst",
        "dropped_queue",
        "duplicated",
        "corrupted",
        "reordered",
        "send_errors",
        "unsent_at_shutdown",
    ] {
        assert_eq!(up[key], 0, "{key} in {json}");
    }
    assert_eq!(json["clients"], 2);
}

#[test]
fn the_binary_refuses_bad_options() {
    for args in [
        &["--loss", "1.5"][..],
        &["--queue", "1000"],
        &["--cut-after", "3"],
        &["--reorder", "0.1"],
        &["--rate", "0"],
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_sluice-impair"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--upstream",
                "127.0.0.1:9",
                "--seed",
                "1",
            ])
            .args(args)
            .output()
            .unwrap();
        assert!(!output.status.success(), "{args:?} was accepted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    // The two modes: UDP needs both addresses, TUN needs --up-to and takes no address.
    for (args, says) in [
        (&["--seed", "1"][..], "--listen"),
        (&["--seed", "1", "--listen", "127.0.0.1:0"], "--upstream"),
        (&["--seed", "1", "--tun", "imp9"], "--up-to"),
        (
            &[
                "--seed",
                "1",
                "--tun",
                "imp9",
                "--up-to",
                "10.2.0.0/24",
                "--listen",
                "127.0.0.1:0",
            ],
            "cannot be used with",
        ),
        (
            &["--seed", "1", "--tun", "imp9", "--up-to", "10.2.0.0/33"],
            "--up-to",
        ),
        (
            &[
                "--seed",
                "1",
                "--listen",
                "127.0.0.1:0",
                "--upstream",
                "127.0.0.1:9",
                "--up-to",
                "10.2.0.0/24",
            ],
            "--tun",
        ),
    ] {
        // A wrongly accepted command line would relay forever: give it 10 s.
        let mut child = Command::new(env!("CARGO_BIN_EXE_sluice-impair"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let start = std::time::Instant::now();
        while child.try_wait().unwrap().is_none() && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
        }
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            let _ = child.wait();
            panic!("{args:?} was accepted (the relay kept running)");
        }
        let output = child.wait_with_output().unwrap();
        assert!(!output.status.success(), "{args:?} was accepted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(says),
            "{args:?}: expected {says:?} in {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// Not a check: prints how many datagrams per second the binary forwards on loopback when
/// offered more than it can take (one sender thread, one sink thread, the relay, all here).
/// `cargo test --test impair -- --ignored --nocapture forwarding_rate` (debug, as the netns
/// tests run it; add `--release` for the optimised figure).
#[test]
#[ignore = "a measurement, not a check"]
fn forwarding_rate() {
    for size in [100usize, 1200] {
        let sink = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        large_receive_buffer(&sink);
        sink.set_read_timeout(Some(QUIET)).unwrap();
        let sink_addr = sink.local_addr().unwrap();
        let counting = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            let mut n = 0u64;
            while sink.recv(&mut buf).is_ok() {
                n += 1;
            }
            n
        });
        let (child, addr, _stderr) = start_binary(sink_addr, &["--seed", "1"]);
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        client.connect(addr).unwrap();
        let payload = vec![0u8; size];
        let run = Duration::from_secs(3);
        let start = std::time::Instant::now();
        let mut offered = 0u64;
        while start.elapsed() < run {
            for _ in 0..100 {
                let _ = client.send(&payload);
                offered += 1;
            }
        }
        let secs = start.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_millis(200));
        child.signal(libc::SIGTERM);
        let output = child.finish();
        let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        let forwarded = json["up"]["forwarded"].as_u64().unwrap();
        let sunk = counting.join().unwrap();
        println!(
            "{size} B: offered {:.0} pps, forwarded {:.0} pps ({:.0} Mbit/s), sink got {sunk}",
            offered as f64 / secs,
            forwarded as f64 / secs,
            (forwarded * size as u64 * 8) as f64 / secs / 1e6,
        );
    }
}
