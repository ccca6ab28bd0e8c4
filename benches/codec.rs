//! Throughput of the sans-IO [`Encoder`] / [`Decoder`] per core, next to the bare codec on the
//! same bytes.
//!
//! Run everything and print the summary table (ours MB/s, bare MB/s, ours/bare, sizes):
//!
//! ```text
//! cargo bench --bench codec
//! ```
//!
//! A filter runs a subset and tables only what ran, e.g.
//! `cargo bench --bench codec -- random_1400`. The table is built from criterion's
//! `target/criterion/<case>/<bench>/new/estimates.json` (median time per iteration) and the
//! sizes this bench measured while preparing its inputs.
//!
//! After criterion's runs of a codec, the same four closures run once more in alternation for
//! the `paired` column: ours and bare back to back in 31 short rounds, the median of the
//! per-round ratios (see [`paired_ratio`]). On this VM, whose speed drifts by tens of percent
//! within minutes, criterion's two medians for ours and bare are taken seconds to minutes
//! apart and their ratio moves by ±20% between runs; the paired ratio is the one to read.
//!
//! # Inputs
//!
//! All packets are IPv4/TCP of one flow; throughput counts IP-packet bytes.
//!
//! - `text_1400`: 1400-byte packets of real text, one packet per block (`handle_packet`, then
//!   `poll_datagram` until `None`, `max_delay` 0), 1500-byte datagrams so a block fits one
//!   datagram (as with a TUN MTU set below the tunnel's datagram size).
//! - `text_64k`: one 65,000-byte packet per block (the size of a TUN GSO super-packet),
//!   fragmented to 1400-byte datagrams.
//! - `text_46x1400`: 46 text packets of 1400 bytes queued, then polled as one block
//!   (64,492 area bytes), 1400-byte datagrams.
//! - `random_1400`: random (incompressible) 1400-byte packets, one per block, 1500-byte
//!   datagrams.
//!
//! Text is read at bench time: a few MB of the Rust HTML docs
//! (`$(rustc --print sysroot)/share/doc/rust/html`), else of Python's standard library.
//!
//! # Codecs
//!
//! `lz4`, `zstd-1` (level -1), `zstd1` (level 1) run with the bypass off, so every block goes
//! through the codec; `auto` is [`Compression::Auto`] at zstd level 1 with the per-flow bypass
//! on (the configuration a gateway runs). The bare codec for `auto` is zstd level 1.
//!
//! Bare: lz4_flex's block compressor with one reused hash table, or one reused zstd
//! `CCtx`/`DCtx` at the same level, on the same IP bytes (for `text_46x1400`, the 46 packets
//! concatenated). Bare decode restores what bare encode produced.
//!
//! Ours, encode: `handle_packet` for each packet of the block, then `poll_datagram` until
//! `None`. Ours, decode: `handle_datagram` for each datagram of the block, then `next_packet`
//! (no copy) until `None`.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use criterion::{Criterion, Throughput};
use lz4_flex::block::{CompressTable, compress_into_with_table, get_maximum_output_size};
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use sluice::core::encoder::Compression;
use sluice::core::packet::testing::ipv4_packet;
use sluice::core::wire::{self, Message, Reset, ResetKind};
use sluice::core::{Decoder, DecoderConfig, Encoder, EncoderConfig, Timestamp};
use zstd::zstd_safe::{CCtx, CParameter, DCtx};

/// Bytes of text read for the text inputs.
const CORPUS_LEN: usize = 4 << 20;
/// IP length of the small packets.
const PACKET_LEN: usize = 1400;
/// IP length of the GSO super-packet.
const GSO_PACKET_LEN: usize = 65_000;
/// Packets per block in the batched input: as many 1400-byte packets as fit 64 KiB.
const BATCH_PACKETS: usize = 46;
/// IPv4 + TCP header bytes `ipv4_packet` writes.
const HEADERS_LEN: usize = 40;
/// Datagram size for one-packet blocks: a raw 1400-byte block (1422 bytes) fits one datagram.
const DATAGRAM_WHOLE: usize = 1500;
/// Datagram size for 64 KiB blocks.
const DATAGRAM_FRAGMENTS: usize = 1400;
/// Random packets cycled through (1.4 MB: not all in L2, like the text).
const RANDOM_PACKETS: usize = 1024;
const SHARD: u8 = 0;
const EPOCH: u16 = 7;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Variant {
    Lz4,
    ZstdMinus1,
    Zstd1,
    Auto,
}

impl Variant {
    const ALL: [Variant; 4] = [
        Variant::Lz4,
        Variant::ZstdMinus1,
        Variant::Zstd1,
        Variant::Auto,
    ];

    fn name(self) -> &'static str {
        match self {
            Variant::Lz4 => "lz4",
            Variant::ZstdMinus1 => "zstd-1",
            Variant::Zstd1 => "zstd1",
            Variant::Auto => "auto",
        }
    }

    fn bare(self) -> Bare {
        match self {
            Variant::Lz4 => Bare::Lz4,
            Variant::ZstdMinus1 => Bare::Zstd(-1),
            Variant::Zstd1 | Variant::Auto => Bare::Zstd(1),
        }
    }

    fn config(self) -> EncoderConfig {
        let (compression, zstd_level) = match self {
            Variant::Lz4 => (Compression::Lz4, 1),
            Variant::ZstdMinus1 => (Compression::Zstd, -1),
            Variant::Zstd1 => (Compression::Zstd, 1),
            Variant::Auto => (Compression::Auto, 1),
        };
        EncoderConfig {
            compression,
            zstd_level,
            max_delay: Duration::ZERO,
            bypass: self == Variant::Auto,
            ..EncoderConfig::default()
        }
    }
}

/// A bare codec with its reused context.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Bare {
    Lz4,
    Zstd(i32),
}

/// One input: blocks of packets, and the datagram size they are sent with.
struct Input {
    name: &'static str,
    /// The packets of each block.
    blocks: Vec<Vec<Vec<u8>>>,
    datagram_size: usize,
}

impl Input {
    fn block_bytes(&self) -> u64 {
        self.blocks[0].iter().map(|p| p.len() as u64).sum()
    }

    fn total_bytes(&self) -> u64 {
        self.blocks.iter().flatten().map(|p| p.len() as u64).sum()
    }
}

fn tcp_packet(dst_port: u16, payload: &[u8]) -> Vec<u8> {
    ipv4_packet([10, 0, 0, 1], [10, 0, 1, 1], 6, 40_000, dst_port, payload)
}

fn text_packets(corpus: &[u8], len: usize) -> Vec<Vec<u8>> {
    corpus
        .chunks_exact(len - HEADERS_LEN)
        .map(|payload| tcp_packet(80, payload))
        .collect()
}

fn inputs(corpus: &[u8]) -> Vec<Input> {
    let small = text_packets(corpus, PACKET_LEN);
    let mut rng = SmallRng::seed_from_u64(1);
    let random = (0..RANDOM_PACKETS)
        .map(|_| {
            let mut payload = vec![0u8; PACKET_LEN - HEADERS_LEN];
            rng.fill_bytes(&mut payload);
            vec![tcp_packet(443, &payload)]
        })
        .collect();
    vec![
        Input {
            name: "text_1400",
            blocks: small.iter().map(|p| vec![p.clone()]).collect(),
            datagram_size: DATAGRAM_WHOLE,
        },
        Input {
            name: "text_64k",
            blocks: text_packets(corpus, GSO_PACKET_LEN)
                .into_iter()
                .map(|p| vec![p])
                .collect(),
            datagram_size: DATAGRAM_FRAGMENTS,
        },
        Input {
            name: "text_46x1400",
            blocks: small
                .chunks_exact(BATCH_PACKETS)
                .map(<[Vec<u8>]>::to_vec)
                .collect(),
            datagram_size: DATAGRAM_FRAGMENTS,
        },
        Input {
            name: "random_1400",
            blocks: random,
            datagram_size: DATAGRAM_WHOLE,
        },
    ]
}

/// Files under `dir` whose name ends in `ext`, sorted, recursively.
fn files(dir: &Path, ext: &str, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    for path in paths {
        if path.is_dir() {
            files(&path, ext, found);
        } else if path.extension().is_some_and(|e| e == ext) {
            found.push(path);
        }
    }
}

fn command_output(program: &str, args: &[&str]) -> Option<PathBuf> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// [`CORPUS_LEN`] bytes of real text: Rust's HTML docs, else Python's standard library.
fn text_corpus() -> Vec<u8> {
    let sources = [
        command_output("rustc", &["--print", "sysroot"])
            .map(|root| (root.join("share/doc/rust/html"), "html")),
        command_output(
            "python3",
            &[
                "-c",
                "import sysconfig;print(sysconfig.get_paths()['stdlib'])",
            ],
        )
        .map(|dir| (dir, "py")),
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
                "text corpus: {CORPUS_LEN} bytes of *.{ext} under {}",
                dir.display()
            );
            return corpus;
        }
    }
    eprintln!(
        "error: benches/codec.rs needs {CORPUS_LEN} bytes of text and found neither the Rust \
         HTML docs ($(rustc --print sysroot)/share/doc/rust/html, rustup component rust-docs) \
         nor the Python standard library (python3's sysconfig stdlib path)"
    );
    std::process::exit(2);
}

/// The datagrams of every block, and the wire bytes they add up to.
struct Encoded {
    datagrams: Vec<Vec<Vec<u8>>>,
    wire_bytes: u64,
}

fn encode_all(input: &Input, variant: Variant, decoder: &mut Decoder) -> Encoded {
    let now = Timestamp::ZERO;
    let mut encoder = Encoder::new(variant.config(), SHARD, EPOCH).expect("valid config");
    let mut buf = vec![0u8; 64 * 1024];
    let n = encoder.poll_control(&mut buf).expect("announcement");
    let Ok(Message::Reset(reset)) = wire::parse(&buf[..n]) else {
        panic!("the encoder announces its epoch with a reset");
    };
    decoder.handle_reset(now, reset);
    let mut datagrams = Vec::with_capacity(input.blocks.len());
    let mut wire_bytes = 0;
    for block in &input.blocks {
        for packet in block {
            encoder.handle_packet(now, packet).expect("packet accepted");
        }
        let mut pieces = Vec::new();
        while let Some(n) = encoder.poll_datagram(now, input.datagram_size, &mut buf) {
            wire_bytes += n as u64;
            pieces.push(buf[..n].to_vec());
        }
        datagrams.push(pieces);
    }
    assert_eq!(
        encoder.stats().blocks,
        input.blocks.len() as u64,
        "{}: one block per input block",
        input.name
    );
    Encoded {
        datagrams,
        wire_bytes,
    }
}

/// Bare codec state: compression contexts and output buffers, reused.
struct BareCodec {
    codec: Bare,
    lz4_small: CompressTable,
    lz4_large: CompressTable,
    zstd_c: CCtx<'static>,
    zstd_d: DCtx<'static>,
}

impl BareCodec {
    fn new(codec: Bare) -> BareCodec {
        let mut zstd_c = CCtx::create();
        if let Bare::Zstd(level) = codec {
            zstd_c
                .set_parameter(CParameter::CompressionLevel(level))
                .expect("zstd level");
        }
        BareCodec {
            codec,
            lz4_small: CompressTable::small(),
            lz4_large: CompressTable::large(),
            zstd_c,
            zstd_d: DCtx::create(),
        }
    }

    fn compress(&mut self, input: &[u8], out: &mut [u8]) -> usize {
        match self.codec {
            Bare::Lz4 => {
                let table = if input.len() < u16::MAX as usize {
                    &mut self.lz4_small
                } else {
                    &mut self.lz4_large
                };
                compress_into_with_table(input, out, table).expect("worst-case output")
            }
            Bare::Zstd(_) => self.zstd_c.compress2(out, input).expect("zstd compress"),
        }
    }

    fn decompress(&mut self, input: &[u8], out: &mut [u8]) -> usize {
        match self.codec {
            Bare::Lz4 => lz4_flex::block::decompress_into(input, out).expect("lz4 decompress"),
            Bare::Zstd(_) => self.zstd_d.decompress(out, input).expect("zstd decompress"),
        }
    }
}

/// Sizes measured while preparing, for the table: (case, variant) → wire / input.
type Sizes = BTreeMap<(String, String), f64>;

/// Bare codec output for every block of `input`.
fn bare_encode_all(codec: &mut BareCodec, raw_blocks: &[Vec<u8>], out: &mut [u8]) -> Vec<Vec<u8>> {
    raw_blocks
        .iter()
        .map(|raw| {
            let n = codec.compress(raw, out);
            out[..n].to_vec()
        })
        .collect()
}

/// Benchmarks one input. Ours and bare run back to back for each codec (encode ours, encode
/// bare, decode ours, decode bare), so a change in the machine's load between them skews
/// their ratio as little as possible.
fn bench_input(c: &mut Criterion, input: &Input, sizes: &mut Sizes, paired: &mut Paired) {
    let now = Timestamp::ZERO;
    let mut group = c.benchmark_group(input.name);
    group.throughput(Throughput::Bytes(input.block_bytes()));
    let raw_blocks: Vec<Vec<u8>> = input.blocks.iter().map(|b| b.concat()).collect();
    let raw_max = raw_blocks.iter().map(Vec::len).max().unwrap_or(0);
    let mut out = vec![0u8; get_maximum_output_size(raw_max).max(raw_max + 1024)];

    for variant in Variant::ALL {
        let name = variant.name();
        let mut decoder = Decoder::new(DecoderConfig::default(), SHARD).expect("decoder");
        let encoded = encode_all(input, variant, &mut decoder);
        let mut encoder = Encoder::new(variant.config(), SHARD, EPOCH).expect("valid config");
        let mut bare = BareCodec::new(variant.bare());
        let compressed = bare_encode_all(&mut bare, &raw_blocks, &mut out);
        let bare_wire: usize = compressed.iter().map(Vec::len).sum();
        let total = input.total_bytes() as f64;
        sizes.insert(
            (input.name.into(), name.into()),
            encoded.wire_bytes as f64 / total,
        );
        sizes.insert(
            (input.name.into(), format!("bare_{name}")),
            bare_wire as f64 / total,
        );

        // One step of each of the four measurements, as closures so criterion and the paired
        // pass run the very same code. Each has its own buffers.
        let mut i = 0;
        let mut enc_buf = vec![0u8; 64 * 1024];
        let mut encode_ours = || {
            let block = &input.blocks[i % input.blocks.len()];
            i += 1;
            for packet in block {
                encoder
                    .handle_packet(now, black_box(packet))
                    .expect("queue drained every iteration");
            }
            while let Some(n) = encoder.poll_datagram(now, input.datagram_size, &mut enc_buf) {
                black_box(&enc_buf[..n]);
            }
        };
        let mut j = 0;
        let mut bare_encoder = BareCodec::new(variant.bare());
        let mut enc_out = out.clone();
        let mut encode_bare = || {
            let raw = &raw_blocks[j % raw_blocks.len()];
            j += 1;
            black_box(bare_encoder.compress(black_box(raw), &mut enc_out));
        };
        let mut k = 0;
        let blocks = encoded.datagrams.len();
        let mut decode_ours = || {
            if k == blocks {
                // Start over: a new epoch, then this one again, so sequence numbers restart.
                for epoch in [EPOCH.wrapping_add(1), EPOCH] {
                    let kind = ResetKind::Announce;
                    let reset = Reset {
                        shard: SHARD,
                        epoch,
                        kind,
                    };
                    decoder.handle_reset(now, reset);
                }
                k = 0;
            }
            for datagram in &encoded.datagrams[k] {
                let _ = decoder.handle_datagram(now, black_box(datagram));
            }
            k += 1;
            while let Some(packet) = decoder.next_packet() {
                black_box(packet);
            }
        };
        let mut l = 0;
        let mut dec_out = out.clone();
        let mut decode_bare = || {
            let m = l % compressed.len();
            l += 1;
            let restored = &mut dec_out[..raw_blocks[m].len()];
            black_box(bare.decompress(black_box(&compressed[m]), restored));
        };

        group.bench_function(format!("encode_ours_{name}"), |b| b.iter(&mut encode_ours));
        group.bench_function(format!("encode_bare_{name}"), |b| b.iter(&mut encode_bare));
        group.bench_function(format!("decode_ours_{name}"), |b| b.iter(&mut decode_ours));
        group.bench_function(format!("decode_bare_{name}"), |b| b.iter(&mut decode_bare));
        for (dir, ours, theirs) in [
            (
                "encode",
                &mut encode_ours as &mut dyn FnMut(),
                &mut encode_bare as &mut dyn FnMut(),
            ),
            ("decode", &mut decode_ours, &mut decode_bare),
        ] {
            if paired.wanted(input.name, dir, name) {
                let ratio = paired_ratio(ours, theirs);
                paired
                    .ratios
                    .insert((input.name.into(), dir.into(), name.into()), ratio);
            }
        }
        assert_eq!(
            decoder.stats().malformed.iter().sum::<u64>(),
            0,
            "{}/{name}: decoder rejected datagrams",
            input.name,
        );
    }
    group.finish();
}

/// Rounds of the paired measurement.
const PAIRED_ROUNDS: usize = 31;
/// Time per side per round of the paired measurement.
const PAIRED_SLICE: Duration = Duration::from_millis(10);

/// The paired ours/bare measurement: which cases run, and their ratios, by
/// (case, direction, codec).
struct Paired {
    enabled: bool,
    filter: Option<String>,
    ratios: BTreeMap<(String, String, String), f64>,
}

impl Paired {
    /// From the command line: off when criterion profiles or lists; criterion's filter (a
    /// plain substring here) selects the same cases.
    fn from_args() -> Paired {
        const WITH_VALUE: &[&str] = &[
            "--save-baseline",
            "-s",
            "--baseline",
            "-b",
            "--baseline-lenient",
            "--load-baseline",
            "--color",
            "-c",
            "--profile-time",
            "--sample-size",
            "--warm-up-time",
            "--measurement-time",
            "--nresamples",
            "--noise-threshold",
            "--confidence-level",
            "--significance-level",
            "--plotting-backend",
            "--output-format",
            "--format",
        ];
        let args: Vec<String> = std::env::args().skip(1).collect();
        let enabled = !args
            .iter()
            .any(|a| a == "--profile-time" || a == "--list" || a == "--test");
        let mut filter = None;
        let mut skip = false;
        for arg in &args {
            if skip {
                skip = false;
            } else if WITH_VALUE.contains(&arg.as_str()) {
                skip = true;
            } else if !arg.starts_with('-') {
                filter = Some(arg.clone());
                break;
            }
        }
        Paired {
            enabled,
            filter,
            ratios: BTreeMap::new(),
        }
    }

    fn wanted(&self, case: &str, dir: &str, codec: &str) -> bool {
        self.enabled
            && self.filter.as_deref().is_none_or(|f| {
                [
                    format!("{case}/{dir}_ours_{codec}"),
                    format!("{case}/{dir}_bare_{codec}"),
                ]
                .iter()
                .any(|id| id.contains(f))
            })
    }
}

/// Ours / bare throughput, measured in alternation: [`PAIRED_ROUNDS`] rounds, each running
/// the same number of steps of both back to back (which goes first alternates), about
/// [`PAIRED_SLICE`] for the slower one. The median of the per-round ratios: a change in the
/// machine's speed (this VM's varies by tens of percent within minutes) hits both sides of a
/// round alike, where criterion's two medians can be taken minutes apart.
fn paired_ratio(ours: &mut dyn FnMut(), bare: &mut dyn FnMut()) -> f64 {
    fn step_time(f: &mut dyn FnMut()) -> Duration {
        let start = Instant::now();
        let mut steps = 0u32;
        while start.elapsed() < PAIRED_SLICE {
            f();
            steps += 1;
        }
        start.elapsed() / steps
    }
    fn run(f: &mut dyn FnMut(), steps: u32) -> f64 {
        let start = Instant::now();
        for _ in 0..steps {
            f();
        }
        start.elapsed().as_secs_f64()
    }
    let slower = step_time(ours).max(step_time(bare));
    let steps = (PAIRED_SLICE.as_nanos() / slower.as_nanos().max(1)).max(1) as u32;
    let mut ratios: Vec<f64> = (0..PAIRED_ROUNDS)
        .map(|round| {
            let (t_ours, t_bare) = if round % 2 == 0 {
                let t_ours = run(ours, steps);
                (t_ours, run(bare, steps))
            } else {
                let t_bare = run(bare, steps);
                (run(ours, steps), t_bare)
            };
            t_bare / t_ours
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    ratios[ratios.len() / 2]
}

/// Where criterion writes its results (its own rule, minus the `cargo metadata` step).
fn criterion_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return PathBuf::from(home);
    }
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("criterion")
}

/// Median MB/s of one benchmark if it ran in this process (its estimates are newer than
/// `since`).
fn throughput(dir: &Path, case: &str, bench: &str, bytes: u64, since: SystemTime) -> Option<f64> {
    let path = dir.join(case).join(bench).join("new/estimates.json");
    let fresh = std::fs::metadata(&path).ok()?.modified().ok()? >= since;
    if !fresh {
        return None;
    }
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
    let ns = json["median"]["point_estimate"].as_f64()?;
    Some(bytes as f64 / ns * 1e3)
}

fn summary(inputs: &[Input], sizes: &Sizes, paired: &Paired, since: SystemTime) {
    let dir = criterion_dir();
    let fmt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}"));
    println!();
    println!(
        "{:<13} {:<7} {:<7} {:>9} {:>9} {:>9} {:>7} {:>10} {:>10}",
        "case",
        "codec",
        "dir",
        "ours MB/s",
        "bare MB/s",
        "ours/bare",
        "paired",
        "wire/in",
        "bare out/in"
    );
    for input in inputs {
        let bytes = input.block_bytes();
        for variant in Variant::ALL {
            for dir_name in ["encode", "decode"] {
                let ours = throughput(
                    &dir,
                    input.name,
                    &format!("{dir_name}_ours_{}", variant.name()),
                    bytes,
                    since,
                );
                let theirs = throughput(
                    &dir,
                    input.name,
                    &format!("{dir_name}_bare_{}", variant.name()),
                    bytes,
                    since,
                );
                let pair = paired.ratios.get(&(
                    input.name.to_string(),
                    dir_name.to_string(),
                    variant.name().to_string(),
                ));
                if ours.is_none() && theirs.is_none() && pair.is_none() {
                    continue;
                }
                let ratio = ours
                    .zip(theirs)
                    .map_or("-".to_string(), |(o, t)| format!("{:.2}", o / t));
                let size = |key: String| {
                    sizes
                        .get(&(input.name.to_string(), key))
                        .map_or("-".to_string(), |r| format!("{r:.3}"))
                };
                println!(
                    "{:<13} {:<7} {:<7} {:>9} {:>9} {:>9} {:>7} {:>10} {:>10}",
                    input.name,
                    variant.name(),
                    dir_name,
                    fmt(ours),
                    fmt(theirs),
                    ratio,
                    pair.map_or("-".to_string(), |r| format!("{r:.2}")),
                    size(variant.name().to_string()),
                    size(format!("bare_{}", variant.name())),
                );
            }
        }
    }
    println!(
        "MB/s = 10^6 IP-packet bytes per second, one core, criterion median; ours/bare = their \
         ratio; paired = ours/bare measured in alternation ({PAIRED_ROUNDS} rounds, median), \
         steadier on a machine whose speed drifts; wire/in = datagram bytes / IP bytes; \
         bare out/in = bare codec output / IP bytes"
    );
}

fn main() {
    let since = SystemTime::now();
    let corpus = text_corpus();
    let inputs = inputs(&corpus);
    let mut sizes = Sizes::new();
    let mut paired = Paired::from_args();
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    for input in &inputs {
        bench_input(&mut c, input, &mut sizes, &mut paired);
    }
    c.final_summary();
    summary(&inputs, &sizes, &paired, since);
}
