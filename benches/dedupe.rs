//! Dedupe speed per core and the choice of the minimum match length.
//!
//! ```text
//! cargo bench --bench dedupe
//! ```
//!
//! Input: 16 MiB of real text (the Rust HTML docs, `$(rustc --print sysroot)/share/doc/rust/html`,
//! else Python's standard library) cut into 64,000-byte areas, the size of one batch or TUN GSO
//! super-packet. Throughput counts area bytes. Every case runs the gateway's default minimum
//! match (`DEFAULT_MIN_MATCH`, 128 bytes); before c0d6d07 the text cases ran 64, which finds
//! more short references and is slower.
//!
//! - `encode_fresh`: areas whose own earlier copy is gone (a 4 MiB ring cycling through the
//!   16 MiB): placement, ring write, anchor scan, index lookups and inserts. The docs repeat
//!   themselves, so many references are still found within the ring; it prints how many.
//! - `encode_random`, `encode_random_sparse`: 160 MiB of random bytes (nothing repeats) through
//!   the default 64 MiB ring with dense and with sparse anchors (`Density`): the cost dedupe
//!   adds to incompressible traffic.
//! - `encode_repeat`: the same areas a second time, everything acknowledged in a 64 MiB ring:
//!   the scan finds and verifies references.
//! - `decode_plain`: the receiving side of a block without references: the ring write.
//! - `decode_repeat`: expanding the references of `encode_repeat`'s streams, then the ring
//!   write.
//!
//! After the timings it prints, for minimum match lengths 32 to 512, what a new version of
//! the corpus (8 bytes changed every 4 KiB, and 100 bytes inserted every 64 KiB) costs after
//! dedupe and lz4, next to lz4 alone: the numbers behind `DEFAULT_MIN_MATCH`.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use criterion::{Criterion, Throughput};
use sluice::core::dedupe::encode::{Density, Encoded, Trail};
use sluice::core::dedupe::{
    DEFAULT_CACHE, DEFAULT_MIN_MATCH, DecoderCache, DedupeConfig, EncoderCache, Place,
};

const CORPUS_LEN: usize = 16 << 20;
const AREA: usize = 64_000;

fn files(dir: &Path, ext: &str, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            files(&path, ext, found);
        } else if path.extension().is_some_and(|e| e == ext) {
            found.push(path);
        }
    }
}

fn text_corpus() -> Vec<u8> {
    let sysroot = Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let python = Command::new("python3")
        .args([
            "-c",
            "import sysconfig;print(sysconfig.get_paths()['stdlib'])",
        ])
        .output()
        .ok()
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let sources = [
        sysroot.map(|r| (r.join("share/doc/rust/html"), "html")),
        python.map(|p| (p, "py")),
    ];
    for (dir, ext) in sources.into_iter().flatten() {
        let mut paths = Vec::new();
        files(&dir, ext, &mut paths);
        let mut corpus = Vec::with_capacity(CORPUS_LEN);
        for path in paths {
            if corpus.len() >= CORPUS_LEN {
                break;
            }
            corpus.extend(std::fs::read(&path).unwrap_or_default());
        }
        if corpus.len() >= CORPUS_LEN {
            corpus.truncate(CORPUS_LEN);
            eprintln!(
                "corpus: {CORPUS_LEN} bytes of *.{ext} under {}",
                dir.display()
            );
            return corpus;
        }
    }
    eprintln!("error: benches/dedupe.rs needs 16 MiB of the Rust HTML docs or Python sources");
    std::process::exit(2);
}

/// `len` bytes from a xorshift generator: nothing in them repeats.
fn pseudo_random(len: usize) -> Vec<u8> {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Places, stores and acknowledges `area` on both ends without looking for references.
fn send_plain(enc: &EncoderCache, dec: &DecoderCache, area: &[u8], stream: &mut Vec<u8>) {
    let place = enc.reserve(area.len());
    let mut out = vec![0; area.len()];
    match enc.encode(place, area, stream) {
        Encoded::Plain => out.copy_from_slice(area),
        Encoded::Stream => dec.expand(place, stream, &mut out).expect("resolves"),
    }
    dec.store(place, &out);
    enc.acked(place, area.len());
}

fn pair(cache: usize, min_match: usize) -> (EncoderCache, DecoderCache) {
    let config = DedupeConfig { cache, min_match };
    let enc = EncoderCache::new(config);
    let dec = DecoderCache::new(config);
    dec.handle_announce(enc.poll_announce().expect("epoch"));
    (enc, dec)
}

fn main() {
    let corpus = text_corpus();
    let areas: Vec<&[u8]> = corpus.chunks_exact(AREA).collect();
    let mut c = Criterion::default()
        .configure_from_args()
        .sample_size(20)
        .measurement_time(Duration::from_secs(4));
    let mut group = c.benchmark_group("dedupe");
    group.throughput(Throughput::Bytes(AREA as u64));

    {
        let (enc, _dec) = pair(4 << 20, DEFAULT_MIN_MATCH);
        let mut stream = Vec::new();
        bench_encode(
            &mut group,
            "encode_fresh",
            &enc,
            &areas,
            &mut stream,
            Density::Dense,
        );
        let s = enc.stats();
        eprintln!(
            "encode_fresh: {} of {} bytes matched (text repeats itself inside the 4 MiB ring)",
            s.bytes_matched, s.bytes_in
        );
    }

    {
        // Incompressible fresh data (encrypted or compressed payloads): every anchor is a
        // lookup that finds nothing, the cost dedupe adds to a tunnel full of such traffic.
        // The default ring (64 MiB, and its 16 MiB index) as a gateway runs it: a smaller one
        // fits the CPU caches and flatters the scan (a 4 MiB ring ran at ~980 MiB/s where
        // the gateway's encoder managed a third of that). Cycling through 2.5 ring sizes: no
        // area is still there when it comes again.
        let random = pseudo_random(DEFAULT_CACHE * 5 / 2);
        let random_areas: Vec<&[u8]> = random.chunks_exact(AREA).collect();
        // Dense anchors, as for data that compresses, and sparse, as the encoder scans flows
        // whose compression trial failed (the case of a tunnel full of such traffic).
        for (name, density) in [
            ("encode_random", Density::Dense),
            ("encode_random_sparse", Density::Sparse),
        ] {
            let (enc, _dec) = pair(DEFAULT_CACHE, DEFAULT_MIN_MATCH);
            let mut stream = Vec::new();
            bench_encode(&mut group, name, &enc, &random_areas, &mut stream, density);
            let s = enc.stats();
            eprintln!(
                "{name}: {} of {} bytes matched, {} lookups",
                s.bytes_matched, s.bytes_in, s.lookups
            );
        }
    }

    let (enc, dec) = pair(64 << 20, DEFAULT_MIN_MATCH);
    let mut stream = Vec::new();
    for area in &areas {
        send_plain(&enc, &dec, area, &mut stream);
    }
    bench_encode(
        &mut group,
        "encode_repeat",
        &enc,
        &areas,
        &mut stream,
        Density::Dense,
    );
    // A second pair whose decoder holds everything its encoder references: streams of one
    // repeat pass, for the decoder. (The first pair's encoder acked blocks its decoder never
    // saw, so its references would not resolve.)
    let (enc, dec) = pair(64 << 20, DEFAULT_MIN_MATCH);
    for area in &areas {
        send_plain(&enc, &dec, area, &mut stream);
    }
    let repeats: Vec<(Place, Vec<u8>)> = areas
        .iter()
        .map(|area| {
            let place = enc.reserve(area.len());
            let kind = enc.encode(place, area, &mut stream);
            assert_eq!(kind, Encoded::Stream, "a repeated area has references");
            (place, stream.clone())
        })
        .collect();
    let stream_bytes: usize = repeats.iter().map(|(_, s)| s.len()).sum();
    eprintln!(
        "encode_repeat: {} area bytes became {stream_bytes} stream bytes ({:.4})",
        areas.len() * AREA,
        stream_bytes as f64 / (areas.len() * AREA) as f64
    );
    {
        let mut out = vec![0u8; AREA];
        let mut k = 0;
        group.bench_function("decode_repeat", |b| {
            b.iter(|| {
                let (place, s) = &repeats[k % repeats.len()];
                k += 1;
                dec.expand(*place, black_box(s), &mut out)
                    .expect("references resolve");
                dec.store(*place, &out);
            })
        });
        let mut k = 0;
        group.bench_function("decode_plain", |b| {
            b.iter(|| {
                let (place, _) = &repeats[k % repeats.len()];
                let area = areas[k % areas.len()];
                k += 1;
                dec.store(*place, black_box(area));
            })
        });
    }
    group.finish();
    c.final_summary();

    min_match_table(&corpus[..8 << 20]);
    fetch_table(&corpus);
}

/// Times placing, scanning and acknowledging `areas` in turn through `enc`.
fn bench_encode(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    enc: &EncoderCache,
    areas: &[&[u8]],
    stream: &mut Vec<u8>,
    density: Density,
) {
    let mut k = 0;
    group.bench_function(name, |b| {
        b.iter(|| {
            let area = areas[k % areas.len()];
            k += 1;
            let place = enc.reserve(area.len());
            let kind = enc.encode_after(
                place,
                black_box(area),
                stream,
                &mut Trail::default(),
                density,
            );
            enc.acked(place, area.len());
            black_box(kind)
        })
    });
}

/// What a new version of `corpus` costs after dedupe and lz4, per minimum match length.
fn min_match_table(corpus: &[u8]) {
    let mut version = Vec::with_capacity(corpus.len() + corpus.len() / 600);
    for (i, piece) in corpus.chunks(4096).enumerate() {
        let mut piece = piece.to_vec();
        if piece.len() > 100 {
            for b in &mut piece[50..58] {
                *b = b.wrapping_add(1);
            }
        }
        version.extend_from_slice(&piece);
        if i % 16 == 15 {
            version.extend(std::iter::repeat_n(b'#', 100));
        }
    }
    let lz4 = |bytes: &[u8]| lz4_flex::block::compress(bytes).len();
    let baseline: usize = version.chunks(AREA).map(lz4).sum();
    println!();
    println!(
        "new version of {} bytes of text (8 bytes changed every 4 KiB, 100 inserted every 64 KiB)",
        version.len()
    );
    println!("lz4 alone: {baseline} bytes");
    println!("| min_match | references | stream bytes | after lz4 | vs lz4 alone |");
    println!("|---:|---:|---:|---:|---:|");
    for min_match in [32, 48, 64, 96, 128, 256, 512] {
        let (enc, dec) = pair(64 << 20, min_match);
        let mut stream = Vec::new();
        for area in corpus.chunks(AREA) {
            send_plain(&enc, &dec, area, &mut stream);
        }
        let before = enc.stats().refs;
        let (mut stream_bytes, mut packed) = (0, 0);
        for area in version.chunks(AREA) {
            let place = enc.reserve(area.len());
            let body: &[u8] = match enc.encode(place, area, &mut stream) {
                Encoded::Plain => area,
                Encoded::Stream => &stream,
            };
            stream_bytes += body.len();
            packed += lz4(body).min(body.len());
            enc.acked(place, area.len());
        }
        println!(
            "| {min_match} | {} | {stream_bytes} | {packed} | {:.3} |",
            enc.stats().refs - before,
            packed as f64 / baseline as f64
        );
    }
}

/// `corpus` cut into packet-like areas the way a TCP transfer through the tunnel cuts it: a
/// 64-byte header (IP, TCP, offload metadata) that differs per packet, then a payload whose
/// size varies from one super-packet to the next, so two transfers of the same bytes never
/// cut them at the same places.
fn packetize(corpus: &[u8], seed: u64) -> Vec<Vec<u8>> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut areas = Vec::new();
    let mut at = 0;
    while at < corpus.len() {
        let len = (1448 * (1 + next() % 44) as usize).min(corpus.len() - at);
        let mut area = Vec::with_capacity(64 + len);
        for _ in 0..8 {
            area.extend_from_slice(&next().to_le_bytes());
        }
        area.extend_from_slice(&corpus[at..at + len]);
        areas.push(area);
        at += len;
    }
    areas
}

/// WAN-side bytes (after lz4) of a first transfer of `corpus`, the same again, and a new
/// version (8 bytes changed every 64 KiB), with dedupe on and off, each cut into packets
/// differently (see [`packetize`]).
fn fetch_table(corpus: &[u8]) {
    let mut version = corpus.to_vec();
    let mut at = 32 * 1024;
    while at + 8 < version.len() {
        for b in &mut version[at..at + 8] {
            *b = b.wrapping_add(1);
        }
        at += 64 * 1024;
    }
    let lz4 = |bytes: &[u8]| lz4_flex::block::compress(bytes).len().min(bytes.len());
    let (enc, _dec) = pair(64 << 20, DEFAULT_MIN_MATCH);
    let mut stream = Vec::new();
    println!();
    println!(
        "transfers of {} bytes of text, cut into packets of 64-byte headers and 1448 to 63712 payload bytes",
        corpus.len()
    );
    println!("| transfer | lz4 alone | dedupe + lz4 | ratio | references | matched bytes |");
    println!("|---|---:|---:|---:|---:|---:|");
    let mut first = 0;
    let mut trail = Trail::default();
    for (name, bytes, seed) in [
        ("first", corpus, 1),
        ("repeat", corpus, 2),
        ("new version", &version[..], 3),
    ] {
        let before = enc.stats();
        let (mut plain, mut packed) = (0, 0);
        for area in packetize(bytes, seed) {
            plain += lz4(&area);
            let place = enc.reserve(area.len());
            packed += match enc.encode_after(place, &area, &mut stream, &mut trail, Density::Dense)
            {
                Encoded::Plain => lz4(&area),
                Encoded::Stream => lz4(&stream),
            };
            enc.acked(place, area.len());
        }
        if first == 0 {
            first = packed;
        }
        let after = enc.stats();
        println!(
            "| {name} | {plain} | {packed} | {:.4} of first | {} | {} |",
            packed as f64 / first as f64,
            after.refs - before.refs,
            after.bytes_matched - before.bytes_matched
        );
    }
}
