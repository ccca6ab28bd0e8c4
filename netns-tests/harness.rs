//! The end-to-end test bench: two sites in Linux network namespaces.
//!
//! ```text
//!  lanA ──veth── gwA ══ WAN veth ══ gwB ──veth── lanB
//! 10.1.0.2   10.1.0.1   192.168.200.1/.2   10.2.0.1   10.2.0.2
//! fd01::2    fd01::1    fd00:200::1/::2    fd02::1    fd02::2
//! ```
//!
//! Each [`Topology`] gets namespace names unique to this process and test, so tests can run
//! side by side; everything is deleted when it is dropped (also when a test panics). The
//! gateways forward IPv4 and IPv6. Without a tunnel, [`Topology::route_direct`] routes the
//! LANs over the WAN veth: the baseline the benchmarks compare against.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Whether this process may build namespaces. Without root (or without `ip`/TUN) the tests
/// skip with a message; with `CI=true` a skip is a failure.
pub fn require_root(test: &str) -> bool {
    let root = unsafe_free_euid_is_root();
    let tun = Path::new("/dev/net/tun").exists();
    let ip = Command::new("ip")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if root && tun && ip {
        return true;
    }
    let why = format!(
        "SKIPPED: netns test `{test}` needs root, /dev/net/tun and iproute2 (root: {root}, tun: {tun}, ip: {ip})"
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{why}; under CI=true a skip is a failure");
    }
    eprintln!("{why}");
    false
}

/// Effective uid 0, read from /proc so no libc call is needed.
fn unsafe_free_euid_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// Runs a command, returning its output; panics with the command line if it cannot start.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs a command and panics with its stderr unless it succeeds.
pub fn must(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ip(args: &[&str]) -> String {
    must(Command::new("ip").args(args))
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A child process killed (SIGKILL) and reaped on drop unless already stopped.
pub struct Process {
    pub child: Option<Child>,
    pub name: String,
}

impl Process {
    /// Sends `signal` (e.g. "TERM", "KILL") to the process.
    pub fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .args([format!("-{signal}"), child.id().to_string()])
                .status();
        }
    }

    /// Waits up to `limit` for the process to exit; returns its exit code (None: still up or
    /// killed by a signal).
    pub fn wait_exit(&mut self, limit: Duration) -> Option<Option<i32>> {
        let child = self.child.as_mut()?;
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status.code());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// The process id (`ip netns exec` execs the command, so this is the command's own).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Resident memory in KiB (`VmRSS` from /proc), if the process runs.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kib| kib.parse().ok())
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The four namespaces and their links. Deleted on drop.
pub struct Topology {
    pub lan_a: String,
    pub gw_a: String,
    pub gw_b: String,
    pub lan_b: String,
    /// Scratch folder for keys, configs, corpora and logs.
    pub dir: PathBuf,
}

/// Addresses of the bench.
pub mod addr {
    pub const LAN_A: &str = "10.1.0.2";
    pub const GW_A_LAN: &str = "10.1.0.1";
    pub const LAN_B: &str = "10.2.0.2";
    pub const GW_B_LAN: &str = "10.2.0.1";
    pub const WAN_A: &str = "192.168.200.1";
    pub const WAN_B: &str = "192.168.200.2";
    pub const LAN_A6: &str = "fd01::2";
    pub const LAN_B6: &str = "fd02::2";
    pub const WAN_A6: &str = "fd00:200::1";
    pub const WAN_B6: &str = "fd00:200::2";
    /// Name of the WAN veth end inside each gateway.
    pub const WAN_IF: &str = "wan0";
}

impl Topology {
    /// Builds the four namespaces. `tag` names the test (kept short: interface names are
    /// limited to 15 bytes).
    pub fn new(tag: &str) -> Topology {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}{}", std::process::id() % 100_000, n);
        let name = |role: &str| format!("sl{role}{id}");
        let t = Topology {
            lan_a: name("la"),
            gw_a: name("ga"),
            gw_b: name("gb"),
            lan_b: name("lb"),
            dir: std::env::temp_dir().join(format!("sluice-netns-{tag}-{id}")),
        };
        let _ = std::fs::remove_dir_all(&t.dir);
        std::fs::create_dir_all(&t.dir).expect("scratch dir");
        for ns in t.all() {
            ip(&["netns", "add", ns]);
            t.exec(ns, &["ip", "link", "set", "lo", "up"]);
        }
        // veth pairs, created in the root namespace with temporary names, then moved.
        t.link(&t.lan_a, "eth0", &t.gw_a, "lan0", &id, "a");
        t.link(&t.gw_a, addr::WAN_IF, &t.gw_b, addr::WAN_IF, &id, "w");
        t.link(&t.gw_b, "lan0", &t.lan_b, "eth0", &id, "b");
        t.addr(&t.lan_a, "eth0", &["10.1.0.2/24", "fd01::2/64"]);
        t.addr(&t.gw_a, "lan0", &["10.1.0.1/24", "fd01::1/64"]);
        t.addr(
            &t.gw_a,
            addr::WAN_IF,
            &["192.168.200.1/24", "fd00:200::1/64"],
        );
        t.addr(
            &t.gw_b,
            addr::WAN_IF,
            &["192.168.200.2/24", "fd00:200::2/64"],
        );
        t.addr(&t.gw_b, "lan0", &["10.2.0.1/24", "fd02::1/64"]);
        t.addr(&t.lan_b, "eth0", &["10.2.0.2/24", "fd02::2/64"]);
        t.exec(
            &t.lan_a,
            &["ip", "route", "add", "default", "via", "10.1.0.1"],
        );
        t.exec(
            &t.lan_a,
            &["ip", "-6", "route", "add", "default", "via", "fd01::1"],
        );
        t.exec(
            &t.lan_b,
            &["ip", "route", "add", "default", "via", "10.2.0.1"],
        );
        t.exec(
            &t.lan_b,
            &["ip", "-6", "route", "add", "default", "via", "fd02::1"],
        );
        for gw in [&t.gw_a, &t.gw_b] {
            t.exec(gw, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
            t.exec(gw, &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
        }
        t.wait_dad();
        t
    }

    fn all(&self) -> [&String; 4] {
        [&self.lan_a, &self.gw_a, &self.gw_b, &self.lan_b]
    }

    fn link(&self, ns1: &str, if1: &str, ns2: &str, if2: &str, id: &str, which: &str) {
        let t1 = format!("v{which}1{id}");
        let t2 = format!("v{which}2{id}");
        ip(&["link", "add", &t1, "type", "veth", "peer", "name", &t2]);
        ip(&["link", "set", &t1, "netns", ns1]);
        ip(&["link", "set", &t2, "netns", ns2]);
        self.exec(ns1, &["ip", "link", "set", &t1, "name", if1]);
        self.exec(ns2, &["ip", "link", "set", &t2, "name", if2]);
        self.exec(ns1, &["ip", "link", "set", if1, "up"]);
        self.exec(ns2, &["ip", "link", "set", if2, "up"]);
    }

    fn addr(&self, ns: &str, dev: &str, addrs: &[&str]) {
        for a in addrs {
            // nodad: IPv6 addresses usable at once, no duplicate detection delay.
            let mut args = vec!["ip", "addr", "add", a, "dev", dev];
            if a.contains(':') {
                args.push("nodad");
            }
            self.exec(ns, &args);
        }
    }

    /// Waits until no IPv6 address is tentative anywhere.
    fn wait_dad(&self) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            let tentative = self.all().iter().any(|ns| {
                let out = run(Command::new("ip").args(["netns", "exec", ns, "ip", "-6", "addr"]));
                String::from_utf8_lossy(&out.stdout).contains("tentative")
            });
            if !tentative {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `args` inside `ns` and panics unless it succeeds; returns stdout.
    pub fn exec(&self, ns: &str, args: &[&str]) -> String {
        must(Command::new("ip").args(["netns", "exec", ns]).args(args))
    }

    /// Runs `args` inside `ns`; returns the raw output, success or not.
    pub fn try_exec(&self, ns: &str, args: &[&str]) -> Output {
        run(Command::new("ip").args(["netns", "exec", ns]).args(args))
    }

    /// Starts `args` inside `ns` in the background, output to `log` in the scratch folder.
    pub fn spawn(&self, ns: &str, args: &[&str], log: &str) -> Process {
        self.spawn_env(ns, args, log, &[])
    }

    /// Like [`Topology::spawn`] with extra environment variables.
    pub fn spawn_env(&self, ns: &str, args: &[&str], log: &str, env: &[(&str, &str)]) -> Process {
        let log_path = self.dir.join(log);
        let out = std::fs::File::create(&log_path).expect("log file");
        let err = out.try_clone().expect("log file");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns])
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {args:?} in {ns}: {e}"));
        Process {
            child: Some(child),
            name: log.to_string(),
        }
    }

    /// Contents of a log in the scratch folder.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }

    /// Routes each LAN to the other over the WAN veth, without any tunnel.
    pub fn route_direct(&self) {
        self.exec(
            &self.gw_a,
            &["ip", "route", "replace", "10.2.0.0/24", "via", addr::WAN_B],
        );
        self.exec(
            &self.gw_a,
            &[
                "ip",
                "-6",
                "route",
                "replace",
                "fd02::/64",
                "via",
                addr::WAN_B6,
            ],
        );
        self.exec(
            &self.gw_b,
            &["ip", "route", "replace", "10.1.0.0/24", "via", addr::WAN_A],
        );
        self.exec(
            &self.gw_b,
            &[
                "ip",
                "-6",
                "route",
                "replace",
                "fd01::/64",
                "via",
                addr::WAN_A6,
            ],
        );
    }

    /// Removes the direct routes again.
    pub fn unroute_direct(&self) {
        let _ = self.try_exec(&self.gw_a, &["ip", "route", "del", "10.2.0.0/24"]);
        let _ = self.try_exec(&self.gw_a, &["ip", "-6", "route", "del", "fd02::/64"]);
        let _ = self.try_exec(&self.gw_b, &["ip", "route", "del", "10.1.0.0/24"]);
        let _ = self.try_exec(&self.gw_b, &["ip", "-6", "route", "del", "fd01::/64"]);
    }

    /// Routes IPv4 between the LANs directly, as [`Topology::route_direct`], but makes gateway
    /// A pass every packet of both directions through the TUN device `dev` once (where
    /// `sluice-impair --tun` impairs it and writes it back): policy routing by input device,
    /// as the module doc of `sluice::impair::tun_relay` describes. IPv6 is left unrouted.
    pub fn route_direct_through(&self, dev: &str) {
        let wan = addr::WAN_IF;
        let wan_b = addr::WAN_B;
        let commands = [
            // A TUN device queues 500 packets for its reader by default; a TCP burst overflows
            // that before the relay sees it (an impairment nobody asked for).
            format!("ip link set {dev} up txqueuelen 10000"),
            // Packets the relay writes back come in on `dev` with sources whose route points
            // elsewhere: strict reverse-path filtering would drop them.
            "sysctl -qw net.ipv4.conf.all.rp_filter=0".to_string(),
            format!("sysctl -qw net.ipv4.conf.{dev}.rp_filter=0"),
            // lanA -> lanB into the relay; lanB -> lanA (arriving on the WAN) too ...
            format!("ip route replace 10.2.0.0/24 dev {dev}"),
            format!("ip rule add iif {wan} lookup 101 pref 100"),
            format!("ip route replace 10.1.0.0/24 dev {dev} table 101"),
            // ... and what the relay writes back leaves the normal way.
            format!("ip rule add iif {dev} lookup 100 pref 101"),
            format!("ip route replace 10.2.0.0/24 via {wan_b} dev {wan} table 100"),
            "ip route replace 10.1.0.0/24 dev lan0 table 100".to_string(),
        ];
        for command in &commands {
            let args: Vec<&str> = command.split_whitespace().collect();
            self.exec(&self.gw_a, &args);
        }
        self.exec(
            &self.gw_b,
            &["ip", "route", "replace", "10.1.0.0/24", "via", addr::WAN_A],
        );
    }

    /// Bytes the WAN veth of gateway A has sent and received so far.
    pub fn wan_bytes(&self) -> u64 {
        let read = |what: &str| -> u64 {
            self.exec(
                &self.gw_a,
                &[
                    "cat",
                    &format!("/sys/class/net/{}/statistics/{what}", addr::WAN_IF),
                ],
            )
            .trim()
            .parse()
            .expect("byte counter")
        };
        read("tx_bytes") + read("rx_bytes")
    }

    /// True if `ns` has a link named `dev`.
    pub fn has_link(&self, ns: &str, dev: &str) -> bool {
        self.try_exec(ns, &["ip", "link", "show", "dev", dev])
            .status
            .success()
    }

    /// Routes in `ns` that mention `needle`.
    pub fn routes_matching(&self, ns: &str, needle: &str) -> Vec<String> {
        let v4 = self.exec(ns, &["ip", "route", "show"]);
        let v6 = self.exec(ns, &["ip", "-6", "route", "show"]);
        v4.lines()
            .chain(v6.lines())
            .filter(|l| l.contains(needle))
            .map(str::to_string)
            .collect()
    }

    /// Polls `check` every 100 ms until it is true or `limit` passes; returns the time taken.
    pub fn wait_for(&self, limit: Duration, mut check: impl FnMut() -> bool) -> Option<Duration> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if check() {
                return Some(start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    /// True if one ping from `ns` to `dst` gets an answer within a second.
    pub fn ping_ok(&self, ns: &str, dst: &str) -> bool {
        self.try_exec(ns, &["ping", "-c", "1", "-W", "1", dst])
            .status
            .success()
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in self.all() {
            // Kill whatever still runs in the namespace (only our own processes live there).
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-KILL", pid]).status();
                }
            }
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        if std::env::var_os("SLUICE_KEEP_NETNS_LOGS").is_none() && !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// SHA-256 of a file, via `sha256sum`.
pub fn sha256(path: &Path) -> String {
    must(Command::new("sha256sum").arg(path))
        .split_whitespace()
        .next()
        .expect("sha256sum output")
        .to_string()
}
