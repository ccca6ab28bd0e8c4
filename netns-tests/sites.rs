//! Two sluice gateways on the test bench: keys, configs, start and stop.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::harness::{Process, Topology, addr, must};

/// The sluice binary under test.
pub fn sluice() -> &'static str {
    env!("CARGO_BIN_EXE_sluice")
}

/// Options for one run of the two gateways.
#[derive(Clone, Debug)]
pub struct Options {
    pub compression: &'static str,
    pub shards: u32,
    /// `interface.threads`: "auto" or a number.
    pub threads: &'static str,
    pub log: &'static str,
    /// `optimize.dedupe_cache`, e.g. "64MiB" or "0" (off).
    pub dedupe_cache: &'static str,
    /// Put `sluice-impair` with these options on the WAN path (see [`RELAY`]).
    pub relay: Option<Vec<String>>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            compression: "auto",
            shards: 2,
            threads: "\"auto\"",
            log: "info",
            dedupe_cache: "64MiB",
            relay: None,
        }
    }
}

/// Where the impairment relay listens, in gateway A's namespace. With a relay, gateway A dials
/// this address instead of B's, the relay forwards to B's WAN address from its own socket,
/// and B (which then has no endpoint for A and only accepts) answers the relay: every tunnel
/// datagram of both directions crosses the impairment, and the WAN veth carries it.
pub const RELAY: &str = "127.0.0.1:7000";

/// Seed of the relay's random decisions (fixed: a failure can be replayed).
pub const RELAY_SEED: &str = "5";

/// Starts `sluice-impair` in gateway A's namespace with `args` (impairments) and waits until
/// it listens.
pub fn start_relay(topo: &Topology, args: &[String]) -> Process {
    let upstream = format!("{}:7443", addr::WAN_B);
    let mut argv = vec![
        env!("CARGO_BIN_EXE_sluice-impair"),
        "--listen",
        RELAY,
        "--upstream",
        &upstream,
        "--seed",
        RELAY_SEED,
    ];
    argv.extend(args.iter().map(String::as_str));
    let p = topo.spawn(&topo.gw_a, &argv, "relay.log");
    let ready = topo.wait_for(Duration::from_secs(10), || {
        topo.log("relay.log").contains("listening on")
    });
    assert!(
        ready.is_some(),
        "relay did not start: {}",
        topo.log("relay.log")
    );
    p
}

/// Stops the relay with SIGTERM and returns the counters it prints (one JSON line).
pub fn stop_relay(topo: &Topology, relay: &mut Process) -> serde_json::Value {
    relay.signal("TERM");
    let code = relay.wait_exit(Duration::from_secs(5));
    assert_eq!(
        code,
        Some(Some(0)),
        "relay exits 0: {}",
        topo.log("relay.log")
    );
    let log = topo.log("relay.log");
    let line = log
        .lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("relay printed no counters: {log}"));
    serde_json::from_str(line).expect("relay counters are JSON")
}

/// Key material and config of one site.
pub struct Site {
    pub name: &'static str,
    pub dir: PathBuf,
    pub fingerprint: String,
    pub config: PathBuf,
}

/// Generates a key pair for `name` under the topology's scratch folder.
pub fn keygen(topo: &Topology, name: &'static str) -> Site {
    let dir = topo.dir.join(name);
    let out = must(Command::new(sluice()).args(["keygen", "--out"]).arg(&dir));
    let fingerprint = out.trim().to_string();
    assert!(
        fingerprint.starts_with("sha256:") && out.lines().count() == 1,
        "keygen prints one fingerprint line, got {out:?}"
    );
    Site {
        name,
        config: dir.join("peers.toml"),
        dir,
        fingerprint,
    }
}

/// Writes the config of site A (`a == true`) or B, pinning `peer_fingerprint`.
pub fn write_config(site: &Site, a: bool, peer_fingerprint: &str, opts: &Options) {
    let (me4, me6, peer_wan, lan_peer4, lan_peer6, tun_peer4, tun_peer6) = if a {
        (
            "10.99.0.1/24",
            "fd99::1/64",
            addr::WAN_B,
            "10.2.0.0/24",
            "fd02::/64",
            "10.99.0.2/32",
            "fd99::2/128",
        )
    } else {
        (
            "10.99.0.2/24",
            "fd99::2/64",
            addr::WAN_A,
            "10.1.0.0/24",
            "fd01::/64",
            "10.99.0.1/32",
            "fd99::1/128",
        )
    };
    let peer_name = if a { "site-b" } else { "site-a" };
    let endpoint = match (&opts.relay, a) {
        (None, _) => format!("endpoint = \"{peer_wan}:7443\"\n"),
        (Some(_), true) => format!("endpoint = \"{RELAY}\"\n"),
        // Behind the relay B only accepts: if it dialled A, its datagrams would bypass it.
        (Some(_), false) => String::new(),
    };
    let text = format!(
        r#"# written by netns-tests
[interface]
name = "sluice0"
address = ["{me4}", "{me6}"]
listen = "0.0.0.0:7443"
key = "key.pem"
certificate = "cert.pem"
mtu = "auto"
shards = {shards}
threads = {threads}
routes = true
control_socket = "control.sock"

[optimize]
compression = "{compression}"
zstd_level = 1
max_delay = "0ms"
dedupe_cache = "{dedupe_cache}"

[[peer]]
name = "{peer_name}"
{endpoint}fingerprint = "{peer_fingerprint}"
allowed_ips = ["{lan_peer4}", "{lan_peer6}", "{tun_peer4}", "{tun_peer6}"]
"#,
        shards = opts.shards,
        threads = opts.threads,
        compression = opts.compression,
        dedupe_cache = opts.dedupe_cache,
    );
    std::fs::write(&site.config, text).expect("write config");
}

/// Two configured sites and their running gateways.
pub struct Gateways {
    pub a: Site,
    pub b: Site,
    pub gw_a: Process,
    pub gw_b: Process,
    pub opts: Options,
    /// The impairment relay, when `opts.relay` asked for one.
    pub relay: Option<Process>,
}

/// Starts `sluice up` in gateway namespace `ns` for `site`.
pub fn start(topo: &Topology, ns: &str, site: &Site, opts: &Options, log: &str) -> Process {
    let config = site.config.to_string_lossy().into_owned();
    // SLUICE_TEST_LOG overrides the log filter, e.g. "debug" to see why a test failed.
    let filter = std::env::var("SLUICE_TEST_LOG").unwrap_or_else(|_| opts.log.to_string());
    topo.spawn_env(
        ns,
        &[sluice(), "up", "-c", &config],
        log,
        &[("RUST_LOG", filter.as_str())],
    )
}

/// Generates keys, writes configs and starts both gateways, then waits (up to 15 s) until
/// lanA reaches lanB through the tunnel.
pub fn up(topo: &Topology, opts: Options) -> Gateways {
    let a = keygen(topo, "a");
    let b = keygen(topo, "b");
    write_config(&a, true, &b.fingerprint, &opts);
    write_config(&b, false, &a.fingerprint, &opts);
    let relay = opts.relay.as_ref().map(|args| start_relay(topo, args));
    let gw_a = start(topo, &topo.gw_a, &a, &opts, "gw-a.log");
    let gw_b = start(topo, &topo.gw_b, &b, &opts, "gw-b.log");
    let g = Gateways {
        a,
        b,
        gw_a,
        gw_b,
        opts,
        relay,
    };
    let waited = topo.wait_for(Duration::from_secs(15), || {
        topo.ping_ok(&topo.lan_a, addr::LAN_B)
    });
    assert!(
        waited.is_some(),
        "tunnel did not come up in 15 s\n--- gw-a.log\n{}\n--- gw-b.log\n{}",
        topo.log("gw-a.log"),
        topo.log("gw-b.log")
    );
    g
}

/// `sluice status -c CONFIG` run in namespace `ns`.
pub fn status(topo: &Topology, ns: &str, site: &Site) -> String {
    let config = site.config.to_string_lossy().into_owned();
    let out = topo.try_exec(ns, &[sluice(), "status", "-c", &config]);
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// A folder of real, compressible files from this machine (HTML documentation, Python
/// sources), at least `min_bytes` in all, packed as one tar file for a single HTTP fetch.
pub fn text_corpus(dir: &Path, min_bytes: u64) -> PathBuf {
    let out = dir.join("docs.tar");
    let sysroot = must(Command::new("rustc").args(["--print", "sysroot"]));
    let candidates = [
        format!("{}/share/doc/rust/html", sysroot.trim()),
        "/usr/share/doc".to_string(),
        "/usr/lib/python3".to_string(),
    ];
    let mut files = Vec::new();
    let mut total = 0u64;
    for root in candidates.iter().filter(|c| Path::new(c).is_dir()) {
        let list = must(Command::new("find").args([
            root.as_str(),
            "-type",
            "f",
            "(",
            "-name",
            "*.html",
            "-o",
            "-name",
            "*.py",
            "-o",
            "-name",
            "*.js",
            "-o",
            "-name",
            "*.css",
            "-o",
            "-name",
            "*.txt",
            ")",
        ]));
        let mut names: Vec<&str> = list.lines().collect();
        names.sort_unstable();
        for name in names {
            let Ok(meta) = std::fs::metadata(name) else {
                continue;
            };
            total += meta.len();
            files.push(name.to_string());
            if total >= min_bytes {
                break;
            }
        }
        if total >= min_bytes {
            break;
        }
    }
    assert!(
        total >= min_bytes,
        "found only {total} bytes of documentation on this machine"
    );
    let list = dir.join("docs.list");
    std::fs::write(&list, files.join("\n")).expect("file list");
    must(
        Command::new("tar")
            .arg("cf")
            .arg(&out)
            .arg("--absolute-names")
            .arg("-T")
            .arg(&list),
    );
    out
}

/// A file of `bytes` random bytes.
pub fn random_file(dir: &Path, name: &str, bytes: u64) -> PathBuf {
    let out = dir.join(name);
    must(
        Command::new("head")
            .args(["-c", &bytes.to_string(), "/dev/urandom"])
            .stdout(std::fs::File::create(&out).expect("random file")),
    );
    out
}

/// Serves `dir` over HTTP on port 8080 in namespace `ns` (Python's http.server, a real
/// HTTP/1.0 server available on every machine of this kind).
pub fn http_server(topo: &Topology, ns: &str, dir: &Path, bind: &str) -> Process {
    let dir = dir.to_string_lossy().into_owned();
    let p = topo.spawn(
        ns,
        &[
            "python3",
            "-m",
            "http.server",
            "8080",
            "--bind",
            bind,
            "--directory",
            &dir,
        ],
        &format!("http-{ns}.log"),
    );
    let url = if bind.contains(':') {
        format!("http://[{bind}]:8080/")
    } else {
        format!("http://{bind}:8080/")
    };
    let ready = topo.wait_for(Duration::from_secs(10), || {
        topo.try_exec(ns, &["curl", "-s", "-o", "/dev/null", &url])
            .status
            .success()
    });
    assert!(ready.is_some(), "HTTP server in {ns} did not start");
    p
}

/// Fetches `url` with curl in namespace `ns` into `out`; panics on failure.
pub fn fetch(topo: &Topology, ns: &str, url: &str, out: &Path) {
    let out = out.to_string_lossy().into_owned();
    topo.exec(
        ns,
        &[
            "curl",
            "-sS",
            "--fail",
            "--max-time",
            "120",
            "-o",
            &out,
            url,
        ],
    );
}
