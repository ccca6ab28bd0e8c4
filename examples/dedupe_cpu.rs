//! Dedupe encode speed in user CPU time, which a busy VM host's steal does not inflate
//! (criterion's wall-clock medians moved by a third from one run to the next on the 2-vCPU
//! guest this was written on).
//!
//! ```text
//! cargo run --release --example dedupe_cpu [DIR]
//! ```
//!
//! Reads the first 16 MiB of `.html` files under DIR (default: the Rust HTML docs,
//! `$(rustc --print sysroot)/share/doc/rust/html`), cuts it into 64,000-byte areas and sends
//! them [`PASSES`] times through an encoder cache with a 4 MiB ring (as `cargo bench --bench dedupe`
//! does for `encode_fresh`: the text finds most of its bytes elsewhere in the ring), each area
//! acknowledged at once, with the gateway's default minimum match (64 bytes before c0d6d07).
//! Prints MiB per user-CPU second and the bytes matched, which must not change when only the
//! speed of the scan does.

use std::path::{Path, PathBuf};

use sluice::core::dedupe::encode::{Density, Trail};
use sluice::core::dedupe::{DEFAULT_MIN_MATCH, DedupeConfig, EncoderCache};

fn html_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut paths: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    for path in paths {
        if path.is_dir() {
            html_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "html") {
            out.push(path);
        }
    }
}

/// Times the corpus goes through the encoder: 80, about 1.3 GB and 1.4 s on a 2-vCPU Intel
/// Xeon guest, so that the clock's hundredths of a second are 1% of the measure (with 8 they
/// were 7%, and two builds 9% apart measured alike).
const PASSES: usize = 80;

/// User CPU seconds of this process so far (field 14 of /proc/self/stat, in clock ticks of
/// 1/100 s on Linux).
fn user_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    let fields: Vec<&str> = stat[stat.rfind(')').expect("comm") + 2..]
        .split(' ')
        .collect();
    fields[11].parse::<f64>().expect("utime") / 100.0
}

fn main() {
    let dir = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let sysroot = std::process::Command::new("rustc")
                .args(["--print", "sysroot"])
                .output()
                .expect("rustc --print sysroot");
            PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim())
                .join("share/doc/rust/html")
        });
    let mut files = Vec::new();
    html_files(&dir, &mut files);
    let mut corpus = Vec::new();
    for file in files {
        corpus.extend(std::fs::read(file).expect("read"));
        if corpus.len() >= 16 << 20 {
            break;
        }
    }
    corpus.truncate(16 << 20);
    assert!(
        corpus.len() >= 1 << 20,
        "less than 1 MiB of .html under {}",
        dir.display()
    );
    let enc = EncoderCache::new(DedupeConfig {
        cache: 4 << 20,
        min_match: DEFAULT_MIN_MATCH,
    });
    let mut stream = Vec::new();
    let mut bytes = 0u64;
    let start = user_seconds();
    for _ in 0..PASSES {
        for area in corpus.chunks_exact(64_000) {
            let place = enc.reserve(area.len());
            enc.encode_after(
                place,
                area,
                &mut stream,
                &mut Trail::default(),
                Density::Dense,
            );
            enc.acked(place, area.len());
            bytes += area.len() as u64;
        }
    }
    let seconds = user_seconds() - start;
    println!(
        "encode of {bytes} bytes of {}: {seconds:.2} user CPU s, {:.0} MiB/s; {} bytes matched",
        dir.display(),
        bytes as f64 / seconds / 1048576.0,
        enc.stats().bytes_matched
    );
}
