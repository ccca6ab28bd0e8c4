//! `sluice demo`: two sites in network namespaces on this machine, two gateways between them,
//! real files from this machine through the tunnel, and what it cost on the WAN.
//!
//! ```text
//!  lanA ──── gwA ══ WAN veth ══ gwB ──── lanB
//! 10.1.0.2        192.168.200.1/.2        10.2.0.2
//! ```
//!
//! Everything lives in namespaces named `sldemo-*` created for the run and deleted at the end
//! (also on Ctrl-C); no traffic leaves them. The transfer is a plain TCP stream from lanA to
//! lanB made by this same binary (`sluice demo-source` / `demo-sink`), so the demo needs
//! nothing but iproute2.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

const NS: [&str; 4] = ["sldemo-la", "sldemo-ga", "sldemo-gb", "sldemo-lb"];

/// Bytes of real files the demo sends.
const CORPUS_BYTES: u64 = 64 * 1024 * 1024;

/// Runs the demo; returns an error (non-zero exit) when not root or a step fails.
pub fn run() -> anyhow::Result<()> {
    if !is_root() {
        bail!("`sluice demo` builds network namespaces and TUN devices: run it as root");
    }
    let exe = std::env::current_exe().context("locating the sluice binary")?;
    let dir = std::env::temp_dir().join(format!("sluice-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut world = World {
        children: Vec::new(),
        dir: dir.clone(),
    };
    world.cleanup_namespaces();
    let result = world.run(&exe);
    world.stop();
    result
}

struct World {
    children: Vec<Child>,
    dir: PathBuf,
}

impl Drop for World {
    fn drop(&mut self) {
        self.stop();
    }
}

impl World {
    fn stop(&mut self) {
        for child in &mut self.children {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
        for mut child in self.children.drain(..) {
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(3) {
                if child.try_wait().ok().flatten().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        self.cleanup_namespaces();
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    fn cleanup_namespaces(&self) {
        for ns in NS {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }

    fn run(&mut self, exe: &Path) -> anyhow::Result<()> {
        println!("sluice demo: building lanA - gwA - WAN - gwB - lanB in network namespaces");
        build_topology()?;
        let corpus = collect_corpus(CORPUS_BYTES)?;
        let total: u64 = corpus.iter().map(|(_, len)| len).sum();
        println!(
            "corpus: {} real files from this machine, {:.1} MB",
            corpus.len(),
            total as f64 / 1e6
        );
        let list = self.dir.join("files");
        std::fs::write(
            &list,
            corpus
                .iter()
                .map(|(p, _)| p.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("\n"),
        )?;

        // Baseline: the same transfer routed directly over the WAN veth.
        route_direct(true)?;
        let direct = self.transfer(exe, &list)?;
        route_direct(false)?;

        // Through sluice.
        let fingerprints = self.keys(exe)?;
        self.write_configs(&fingerprints)?;
        for (ns, site) in [(NS[1], "a"), (NS[2], "b")] {
            let config = self.dir.join(site).join("peers.toml");
            let log = std::fs::File::create(self.dir.join(format!("gw-{site}.log")))?;
            let child = Command::new("ip")
                .args(["netns", "exec", ns])
                .arg(exe)
                .args(["up", "-c"])
                .arg(&config)
                .env("RUST_LOG", "warn")
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context("starting a gateway")?;
            self.children.push(child);
        }
        let start = Instant::now();
        while !ping(NS[0], "10.2.0.2") {
            if start.elapsed() > Duration::from_secs(15) {
                bail!(
                    "the tunnel did not come up; gateway logs:\n{}\n{}",
                    std::fs::read_to_string(self.dir.join("gw-a.log")).unwrap_or_default(),
                    std::fs::read_to_string(self.dir.join("gw-b.log")).unwrap_or_default()
                );
            }
        }
        println!("tunnel up after {:.1} s", start.elapsed().as_secs_f64());
        let tunnel = self.transfer(exe, &list)?;

        println!();
        println!("| path | payload MB | WAN MB | WAN / payload | seconds | Mbit/s |");
        println!("|---|---|---|---|---|---|");
        for (name, t) in [("direct routing", &direct), ("sluice", &tunnel)] {
            println!(
                "| {name} | {:.1} | {:.1} | {:.3} | {:.2} | {:.0} |",
                t.payload as f64 / 1e6,
                t.wan as f64 / 1e6,
                t.wan as f64 / t.payload as f64,
                t.seconds,
                t.payload as f64 * 8.0 / t.seconds / 1e6
            );
        }
        println!();
        println!(
            "sluice put {:.2}x fewer bytes on the WAN than direct routing for the same files \
             (sha256 {} on both sides).",
            direct.wan as f64 / tunnel.wan.max(1) as f64,
            &tunnel.digest[..16]
        );
        if direct.digest != tunnel.digest {
            bail!("the receiver got different bytes through the tunnel");
        }
        Ok(())
    }

    /// Sends the corpus from lanA to lanB over TCP; measures WAN bytes and time.
    fn transfer(&mut self, exe: &Path, list: &Path) -> anyhow::Result<Transfer> {
        let before = wan_bytes()?;
        let mut sink = Command::new("ip")
            .args(["netns", "exec", NS[3]])
            .arg(exe)
            .args(["demo-sink", "10.2.0.2:9000"])
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the receiver")?;
        std::thread::sleep(Duration::from_millis(300));
        let start = Instant::now();
        let status = Command::new("ip")
            .args(["netns", "exec", NS[0]])
            .arg(exe)
            .args(["demo-source", "10.2.0.2:9000"])
            .arg(list)
            .status()
            .context("starting the sender")?;
        if !status.success() {
            let _ = sink.kill();
            bail!("the sender failed");
        }
        let mut out = String::new();
        sink.stdout
            .take()
            .context("receiver output")?
            .read_to_string(&mut out)?;
        sink.wait()?;
        let seconds = start.elapsed().as_secs_f64();
        let mut parts = out.split_whitespace();
        let payload: u64 = parts.next().context("receiver byte count")?.parse()?;
        let digest = parts.next().context("receiver digest")?.to_string();
        Ok(Transfer {
            payload,
            wan: wan_bytes()? - before,
            seconds,
            digest,
        })
    }

    fn keys(&self, exe: &Path) -> anyhow::Result<[String; 2]> {
        let mut out = [String::new(), String::new()];
        for (i, site) in ["a", "b"].into_iter().enumerate() {
            let o = Command::new(exe)
                .args(["keygen", "--out"])
                .arg(self.dir.join(site))
                .output()?;
            if !o.status.success() {
                bail!("keygen failed: {}", String::from_utf8_lossy(&o.stderr));
            }
            out[i] = String::from_utf8(o.stdout)?.trim().to_string();
        }
        Ok(out)
    }

    fn write_configs(&self, fp: &[String; 2]) -> anyhow::Result<()> {
        for (site, me, peer_wan, peer_lan, peer_tun, peer_fp) in [
            (
                "a",
                "10.99.0.1/24",
                "192.168.200.2",
                "10.2.0.0/24",
                "10.99.0.2/32",
                &fp[1],
            ),
            (
                "b",
                "10.99.0.2/24",
                "192.168.200.1",
                "10.1.0.0/24",
                "10.99.0.1/32",
                &fp[0],
            ),
        ] {
            let text = format!(
                "[interface]\nname = \"sluice0\"\naddress = [\"{me}\"]\nlisten = \"0.0.0.0:7443\"\n\
                 key = \"key.pem\"\ncertificate = \"cert.pem\"\ncontrol_socket = \"control.sock\"\n\n\
                 [optimize]\ncompression = \"auto\"\n\n[[peer]]\nname = \"other-site\"\n\
                 endpoint = \"{peer_wan}:7443\"\nfingerprint = \"{peer_fp}\"\n\
                 allowed_ips = [\"{peer_lan}\", \"{peer_tun}\"]\n"
            );
            std::fs::write(self.dir.join(site).join("peers.toml"), text)?;
        }
        Ok(())
    }
}

struct Transfer {
    payload: u64,
    wan: u64,
    seconds: f64,
    digest: String,
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

fn sh(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("running {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn in_ns(ns: &str, args: &[&str]) -> anyhow::Result<()> {
    let mut all = vec!["ip", "netns", "exec", ns];
    all.extend_from_slice(args);
    sh(&all)
}

fn build_topology() -> anyhow::Result<()> {
    for ns in NS {
        sh(&["ip", "netns", "add", ns])?;
        in_ns(ns, &["ip", "link", "set", "lo", "up"])?;
    }
    let links = [
        (NS[0], "eth0", "10.1.0.2/24", NS[1], "lan0", "10.1.0.1/24"),
        (
            NS[1],
            "wan0",
            "192.168.200.1/24",
            NS[2],
            "wan0",
            "192.168.200.2/24",
        ),
        (NS[2], "lan0", "10.2.0.1/24", NS[3], "eth0", "10.2.0.2/24"),
    ];
    for (i, (ns1, if1, a1, ns2, if2, a2)) in links.into_iter().enumerate() {
        let (t1, t2) = (format!("sldemo{i}a"), format!("sldemo{i}b"));
        sh(&[
            "ip", "link", "add", &t1, "type", "veth", "peer", "name", &t2,
        ])?;
        sh(&["ip", "link", "set", &t1, "netns", ns1])?;
        sh(&["ip", "link", "set", &t2, "netns", ns2])?;
        in_ns(ns1, &["ip", "link", "set", &t1, "name", if1])?;
        in_ns(ns2, &["ip", "link", "set", &t2, "name", if2])?;
        in_ns(ns1, &["ip", "addr", "add", a1, "dev", if1])?;
        in_ns(ns2, &["ip", "addr", "add", a2, "dev", if2])?;
        in_ns(ns1, &["ip", "link", "set", if1, "up"])?;
        in_ns(ns2, &["ip", "link", "set", if2, "up"])?;
    }
    in_ns(NS[0], &["ip", "route", "add", "default", "via", "10.1.0.1"])?;
    in_ns(NS[3], &["ip", "route", "add", "default", "via", "10.2.0.1"])?;
    for gw in [NS[1], NS[2]] {
        in_ns(gw, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
    }
    Ok(())
}

fn route_direct(on: bool) -> anyhow::Result<()> {
    let verb = if on { "replace" } else { "del" };
    in_ns(
        NS[1],
        &["ip", "route", verb, "10.2.0.0/24", "via", "192.168.200.2"],
    )?;
    in_ns(
        NS[2],
        &["ip", "route", verb, "10.1.0.0/24", "via", "192.168.200.1"],
    )?;
    Ok(())
}

fn ping(ns: &str, dst: &str) -> bool {
    Command::new("ip")
        .args(["netns", "exec", ns, "ping", "-c", "1", "-W", "1", dst])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn wan_bytes() -> anyhow::Result<u64> {
    let mut total = 0;
    for what in ["tx_bytes", "rx_bytes"] {
        let out = Command::new("ip")
            .args(["netns", "exec", NS[1], "cat"])
            .arg(format!("/sys/class/net/wan0/statistics/{what}"))
            .output()?;
        total += String::from_utf8(out.stdout)?.trim().parse::<u64>()?;
    }
    Ok(total)
}

/// Real files: the Rust documentation, then /usr/share/doc and Python's library.
fn collect_corpus(limit: u64) -> anyhow::Result<Vec<(PathBuf, u64)>> {
    let mut roots = Vec::new();
    if let Ok(out) = Command::new("rustc").args(["--print", "sysroot"]).output() {
        let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_string();
        roots.push(PathBuf::from(sysroot).join("share/doc/rust/html"));
    }
    roots.push(PathBuf::from("/usr/share/doc"));
    roots.push(PathBuf::from("/usr/lib/python3"));
    let mut files = Vec::new();
    let mut total = 0;
    for root in roots {
        walk(&root, &mut |path, len| {
            if total < limit && len > 0 {
                total += len;
                files.push((path.to_path_buf(), len));
            }
        });
        if total >= limit {
            break;
        }
    }
    if files.is_empty() {
        bail!("found no documentation files on this machine to send");
    }
    Ok(files)
}

fn walk(dir: &Path, visit: &mut dyn FnMut(&Path, u64)) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            walk(&path, visit);
        } else if meta.is_file() {
            visit(&path, meta.len());
        }
    }
}

/// `sluice demo-sink ADDR`: accepts one TCP connection, reads it to the end, prints the
/// byte count and the SHA-256 of what arrived.
pub fn sink(addr: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr)?;
    let (mut stream, _) = listener.accept()?;
    let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    let digest = hasher.finish();
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    println!("{total} {hex}");
    Ok(())
}

/// `sluice demo-source ADDR LIST`: sends every file named in LIST over one TCP connection.
pub fn source(addr: SocketAddr, list: &Path) -> anyhow::Result<()> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    for name in std::fs::read_to_string(list)?.lines() {
        if let Ok(bytes) = std::fs::read(name) {
            stream.write_all(&bytes)?;
        }
    }
    stream.shutdown(std::net::Shutdown::Write)?;
    Ok(())
}
