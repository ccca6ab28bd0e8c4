//! The daemon benchmark (not a test: it asserts nothing about speed). Run it as root with
//!
//! ```sh
//! cargo test --release --test netns -- --ignored --nocapture bench_
//! ```
//!
//! It measures, in one run and on the same namespaces: iperf3 TCP throughput lanA → lanB on
//! fresh random data (`iperf3 -F` on a random file, so nothing repeats for a dedupe engine
//! or a compressor to exploit), and the WAN bytes of a real-text corpus fetched over HTTP,
//! each for direct routing and for sluice, and prints them with their ratios.

use std::process::Command;
use std::time::Instant;

use crate::harness::{Topology, addr, must, require_root, sha256};
use crate::sites::{self, Options};

/// Size of the random file iperf3 sends.
const RANDOM_BYTES: u64 = 400 * 1024 * 1024;

/// One iperf3 run from lanA to lanB; returns Mbit/s as the receiver measured it.
fn iperf(topo: &Topology, file: &std::path::Path) -> f64 {
    let file = file.to_string_lossy().into_owned();
    let out = topo.exec(
        &topo.lan_a,
        &["iperf3", "-c", addr::LAN_B, "-F", &file, "-J"],
    );
    // The receiver's figure: "sum_received": { ... "bits_per_second": N }.
    let at = out
        .find("\"sum_received\"")
        .expect("iperf3 JSON has sum_received");
    let rest = &out[at..];
    let bps = rest
        .split("\"bits_per_second\":")
        .nth(1)
        .and_then(|s| s.split([',', '}']).next())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .expect("bits_per_second");
    bps / 1e6
}

/// WAN bytes over payload bytes of fetching `url` into a scratch file.
fn wire_ratio(topo: &Topology, url: &str, original: &std::path::Path) -> f64 {
    let payload = std::fs::metadata(original).unwrap().len();
    let before = topo.wan_bytes();
    let got = topo.dir.join("got");
    sites::fetch(topo, &topo.lan_a, url, &got);
    let wan = topo.wan_bytes() - before;
    assert_eq!(sha256(&got), sha256(original), "transfer was byte-exact");
    wan as f64 / payload as f64
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("?")
        .trim()
        .to_string();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = must(Command::new("uname").arg("-r"));
    format!("{cpu}, {cores} cores, Linux {}", kernel.trim())
}

#[test]
#[ignore = "benchmark: run explicitly, as root, with --ignored --nocapture"]
fn bench_throughput_and_wire_bytes() {
    if !require_root("bench_throughput_and_wire_bytes") {
        return;
    }
    let _serial = crate::serial();
    let topo = Topology::new("bench");
    let served = topo.dir.join("served");
    std::fs::create_dir_all(&served).unwrap();
    let random = sites::random_file(&topo.dir, "random.bin", RANDOM_BYTES);
    let docs = sites::text_corpus(&served, 50_000_000);
    let _iperf = topo.spawn(&topo.lan_b, &["iperf3", "-s"], "iperf3.log");
    let _http = sites::http_server(&topo, &topo.lan_b, &served, addr::LAN_B);
    std::thread::sleep(std::time::Duration::from_millis(300));

    let started = Instant::now();
    topo.route_direct();
    let direct_mbps: Vec<f64> = (0..3).map(|_| iperf(&topo, &random)).collect();
    let direct_text = wire_ratio(&topo, "http://10.2.0.2:8080/docs.tar", &docs);
    topo.unroute_direct();

    let _g = sites::up(&topo, Options::default());
    let sluice_mbps: Vec<f64> = (0..3).map(|_| iperf(&topo, &random)).collect();
    let sluice_text = wire_ratio(&topo, "http://10.2.0.2:8080/docs.tar", &docs);

    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (d, s) = (median(&direct_mbps), median(&sluice_mbps));
    println!();
    println!("machine: {}", machine());
    println!(
        "iperf3 -F on {} MB of random data, lanA -> lanB, 3 runs each (median, min-max); \
         text: {} MB of HTML/JS/Python docs over HTTP",
        RANDOM_BYTES / 1_000_000,
        std::fs::metadata(&docs).unwrap().len() / 1_000_000
    );
    println!();
    println!(
        "| path | TCP Mbit/s (median) | min-max | vs direct | WAN bytes / payload, text | vs direct |"
    );
    println!("|---|---|---|---|---|---|");
    let range = |v: &[f64]| {
        format!(
            "{:.0}-{:.0}",
            v.iter().cloned().fold(f64::MAX, f64::min),
            v.iter().cloned().fold(0.0, f64::max)
        )
    };
    println!(
        "| direct routing | {d:.0} | {} | 1.00 | {direct_text:.3} | 1.00 |",
        range(&direct_mbps)
    );
    println!(
        "| sluice (auto) | {s:.0} | {} | {:.2} | {sluice_text:.3} | {:.2} |",
        range(&sluice_mbps),
        s / d,
        sluice_text / direct_text
    );
    println!();
    println!("(benchmark took {:.0} s)", started.elapsed().as_secs_f64());
}
