//! Measurements behind the numbers in `src/core/compress.rs`.
//!
//! `cargo bench --bench trial` first prints a survey of lz4 trial ratios on 512-byte samples
//! of this machine's files (text, shared libraries, gzip'd docs) and of random bytes, which is
//! the evidence for `TRIAL_RATIO_PERMILLE`; then criterion times the trial and the codecs.
//! The survey reads the filesystem, which is why it lives here and not in the sans-IO core.

use std::hint::black_box;
use std::path::{Path, PathBuf};

use criterion::{BenchmarkId, Criterion, Throughput};
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use sluice::core::compress::{Codec, Compressor, TRIAL_RATIO_PERMILLE, TRIAL_SAMPLE_MAX};

/// Files per category; enough for a stable picture, few enough to run in seconds.
const FILES_PER_CATEGORY: usize = 400;

fn walk(dir: &Path, keep: &dyn Fn(&Path) -> bool, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.flatten().collect();
    entries.sort_by_key(|e| e.path());
    for entry in entries {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            walk(&path, keep, found);
        } else if kind.is_file() && keep(&path) {
            found.push(path);
        }
    }
}

/// Two samples per file: its first bytes (headers) and bytes from its middle (bulk data, like
/// a packet in the middle of a transfer).
fn samples(dirs: &[&str], keep: &dyn Fn(&Path) -> bool) -> Vec<Vec<u8>> {
    let mut files = Vec::new();
    for dir in dirs {
        walk(Path::new(dir), keep, &mut files);
    }
    let mut out = Vec::new();
    for path in files {
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        if bytes.len() < 2 * TRIAL_SAMPLE_MAX {
            continue;
        }
        out.push(bytes[..TRIAL_SAMPLE_MAX].to_vec());
        let mid = bytes.len() / 2;
        out.push(bytes[mid..mid + TRIAL_SAMPLE_MAX].to_vec());
        if out.len() >= 2 * FILES_PER_CATEGORY {
            break;
        }
    }
    out
}

fn lz4_permille(sample: &[u8]) -> usize {
    let mut out = vec![0u8; lz4_flex::block::get_maximum_output_size(sample.len())];
    let n = lz4_flex::block::compress_into(sample, &mut out).expect("worst-case output");
    n * 1000 / sample.len()
}

fn has_ext(path: &Path, ext: &str) -> bool {
    path.extension().is_some_and(|e| e == ext)
}

fn survey() {
    let mut rng = SmallRng::seed_from_u64(7);
    let random: Vec<Vec<u8>> = (0..800)
        .map(|_| {
            let mut s = vec![0u8; TRIAL_SAMPLE_MAX];
            rng.fill_bytes(&mut s);
            s
        })
        .collect();
    let text = samples(
        &[
            "/usr/share/doc",
            "/usr/share/common-licenses",
            "/usr/include",
        ],
        &|p| !has_ext(p, "gz") && !has_ext(p, "xz") && !has_ext(p, "bz2") && !has_ext(p, "zst"),
    );
    let binary = samples(&["/usr/lib"], &|p| {
        p.file_name()
            .is_some_and(|n| n.to_string_lossy().contains(".so"))
    });
    let gzip = samples(&["/usr/share/doc", "/usr/share/man"], &|p| has_ext(p, "gz"));

    println!("lz4 trial on {TRIAL_SAMPLE_MAX}-byte samples: output/input in permille");
    println!(
        "{:<8} {:>6} {:>5} {:>5} {:>5} {:>5} {:>5}  {:>22}",
        "data",
        "n",
        "min",
        "p1",
        "p50",
        "p99",
        "max",
        format!("flagged at {TRIAL_RATIO_PERMILLE}")
    );
    for (name, set) in [
        ("random", &random),
        ("text", &text),
        ("binary", &binary),
        ("gzip", &gzip),
    ] {
        let mut r: Vec<usize> = set.iter().map(|s| lz4_permille(s)).collect();
        r.sort_unstable();
        if r.is_empty() {
            println!("{name:<8} no samples found");
            continue;
        }
        let pct = |p: usize| r[(r.len() - 1) * p / 100];
        let flagged = r.iter().filter(|&&x| x >= TRIAL_RATIO_PERMILLE).count();
        println!(
            "{name:<8} {:>6} {:>5} {:>5} {:>5} {:>5} {:>5}  {:>14} ({:>5.1}%)",
            r.len(),
            r[0],
            pct(1),
            pct(50),
            pct(99),
            r[r.len() - 1],
            flagged,
            100.0 * flagged as f64 / r.len() as f64
        );
        let below: Vec<usize> = r
            .iter()
            .copied()
            .filter(|&x| (900..1000).contains(&x))
            .collect();
        println!("         in 900..1000: {below:?}");
    }
}

fn text_corpus(len: usize) -> Vec<u8> {
    let mut files = Vec::new();
    walk(
        Path::new("/usr/share/common-licenses"),
        &|_| true,
        &mut files,
    );
    walk(
        Path::new("/usr/share/doc"),
        &|p| !has_ext(p, "gz"),
        &mut files,
    );
    let mut out = Vec::new();
    for f in files {
        if out.len() >= len {
            break;
        }
        out.extend(std::fs::read(f).unwrap_or_default());
    }
    out.truncate(len);
    out
}

fn benches(c: &mut Criterion) {
    let mut rng = SmallRng::seed_from_u64(1);
    let mut random = vec![0u8; 1400];
    rng.fill_bytes(&mut random);
    let text = text_corpus(64 * 1024);
    assert_eq!(text.len(), 64 * 1024, "not enough text on this machine");

    let mut compressor = Compressor::new(1).unwrap();
    let mut group = c.benchmark_group("trial");
    for (name, sample) in [("random_1400", &random[..]), ("text_1400", &text[..1400])] {
        group.bench_function(name, |b| {
            b.iter(|| compressor.looks_incompressible(black_box(sample)))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("compress_64k_text");
    group.throughput(Throughput::Bytes(text.len() as u64));
    let mut out = vec![0u8; text.len()];
    let mut lz4 = Compressor::new(1).unwrap();
    group.bench_function("lz4", |b| {
        b.iter(|| lz4.compress(Codec::Lz4, black_box(&text), &mut out))
    });
    for level in [-7, -5, -3, -1, 1, 3] {
        let mut z = Compressor::new(level).unwrap();
        let n = z.compress(Codec::Zstd, &text, &mut out).unwrap();
        println!("zstd {level}: ratio {:.3}", n as f64 / text.len() as f64);
        group.bench_with_input(BenchmarkId::new("zstd", level), &level, |b, _| {
            b.iter(|| z.compress(Codec::Zstd, black_box(&text), &mut out))
        });
    }
    let n = lz4.compress(Codec::Lz4, &text, &mut out).unwrap();
    println!("lz4: ratio {:.3}", n as f64 / text.len() as f64);
    group.finish();
}

fn main() {
    survey();
    let mut c = Criterion::default()
        .warm_up_time(std::time::Duration::from_secs(1))
        .measurement_time(std::time::Duration::from_secs(3))
        .configure_from_args();
    benches(&mut c);
    c.final_summary();
}
