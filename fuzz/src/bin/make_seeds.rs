//! Writes the seed corpus of the `datagram` and `roundtrip` targets from real encoder and
//! decoder output, so the fuzzer starts from messages that get deep into the decoder.
//!
//! Run from `fuzz/`: `cargo +nightly run --bin make_seeds`. It replaces the `*.bin` files in
//! `seeds/datagram/` and `seeds/roundtrip/`; the output is deterministic, so a rerun only
//! changes files when the wire format or the codecs changed.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use sluice::core::compress::Codec;
use sluice::core::decoder;
use sluice::core::encoder::Compression;
use sluice::core::packet::{PROTO_TCP, PROTO_UDP, testing};
use sluice::core::stats::DecoderStats;
use sluice::core::wire::{self, Capabilities, Hello, MAX_PACKET_LEN, Message, Reset, ResetKind};
use sluice::core::{Decoder, DecoderConfig, Encoder, EncoderConfig, Timestamp};
use sluice_fuzz::{
    FLAG_ACK_EACH, FLAG_NO_ANNOUNCE, FLAG_SHORT_BUFFER, FLAG_SMALL_BUDGET, Record, Session,
};

const SHARD: u8 = 2;
const EPOCH: u16 = 0x5eed;

/// Text that compresses like web and source traffic does.
const TEXT: &str = "<div class=\"item\"><a href=\"/doc/std/net/\">network</a> fn main() { let mut \
                    packet = tunnel.batch(); return compress(packet); }</div>\n";

fn main() -> Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let mut datagram = Seeds::new(root.join("datagram"))?;
    single_messages(&mut datagram)?;
    sessions(&mut datagram)?;
    let mut roundtrip = Seeds::new(root.join("roundtrip"))?;
    roundtrip_inputs(&mut roundtrip)?;
    println!(
        "wrote {} datagram seeds ({} bytes) and {} roundtrip seeds ({} bytes)",
        datagram.files, datagram.bytes, roundtrip.files, roundtrip.bytes
    );
    Ok(())
}

/// A seed directory being rewritten.
struct Seeds {
    dir: PathBuf,
    files: usize,
    bytes: usize,
}

impl Seeds {
    /// Empties `dir` of generated seeds and makes sure it exists. Other files, and the
    /// fuzzer's finds kept as `regress_*.bin` regression seeds, are left alone.
    fn new(dir: PathBuf) -> Result<Seeds> {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))?
        {
            let path = entry?.path();
            let regression = path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("regress_"));
            if path.extension().is_some_and(|e| e == "bin") && !regression {
                std::fs::remove_file(&path)
                    .with_context(|| format!("removing {}", path.display()))?;
            }
        }
        Ok(Seeds {
            dir,
            files: 0,
            bytes: 0,
        })
    }

    /// Writes a session seed after replaying it, checking it reaches what it was made for.
    fn write_session(
        &mut self,
        name: &str,
        bytes: &[u8],
        reaches: impl Fn(&DecoderStats) -> bool,
    ) -> Result<()> {
        let stats = replay(bytes)?;
        ensure!(reaches(&stats), "{name} misses its purpose: {stats:?}");
        self.write(name, bytes)
    }

    fn write(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        let path: &Path = &self.dir.join(format!("{name}.bin"));
        std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
        self.files += 1;
        self.bytes += bytes.len();
        Ok(())
    }
}

/// What a generated packet carries.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Content {
    /// Repeated markup and code: compresses very well.
    Text,
    /// Random hex digits: compresses to about half.
    Hex,
    /// Random bytes: incompressible.
    Noise,
}

/// A packet of flow `flow` with about `len` bytes of IP packet.
fn packet(flow: u16, len: usize, content: Content) -> Vec<u8> {
    let payload_len = len.saturating_sub(40 + 20).max(8);
    let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(flow);
    let mut random = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 24) as u8
    };
    let payload: Vec<u8> = match content {
        Content::Text => TEXT.bytes().cycle().take(payload_len).collect(),
        Content::Hex => (0..payload_len)
            .map(|_| b"0123456789abcdef"[usize::from(random() & 15)])
            .collect(),
        Content::Noise => (0..payload_len).map(|_| random()).collect(),
    };
    if flow.is_multiple_of(2) {
        testing::ipv4_packet(
            [10, 0, 0, 1],
            [10, 0, 0, 2],
            PROTO_TCP,
            1000 + flow,
            443,
            &payload,
        )
    } else {
        let mut src = [0u8; 16];
        src[0] = 0xfd;
        src[15] = 1;
        let mut dst = src;
        dst[15] = 2;
        testing::ipv6_packet(src, dst, PROTO_UDP, 1000 + flow, 53, &payload)
    }
}

/// An encoder for [`SHARD`] and [`EPOCH`] whose announcement was taken.
fn encoder(compression: Compression, bypass: bool, max_batch_bytes: usize) -> Result<Encoder> {
    let config = EncoderConfig {
        compression,
        bypass,
        max_batch_bytes,
        ..EncoderConfig::default()
    };
    let mut encoder =
        Encoder::new(config, SHARD, EPOCH).map_err(|e| anyhow::anyhow!("encoder settings: {e}"))?;
    let mut buf = [0u8; 64];
    encoder.poll_control(&mut buf);
    Ok(encoder)
}

/// Queues `packets` and returns every datagram the encoder then sends at `size`.
fn encode(encoder: &mut Encoder, packets: &[Vec<u8>], size: usize) -> Result<Vec<Vec<u8>>> {
    let now = Timestamp::ZERO;
    for p in packets {
        encoder
            .handle_packet(now, p)
            .map_err(|e| anyhow::anyhow!("packet refused: {e}"))?;
    }
    let mut buf = vec![0u8; size];
    let mut out = Vec::new();
    while let Some(n) = encoder.poll_datagram(now, size, &mut buf) {
        out.push(buf[..n].to_vec());
    }
    Ok(out)
}

/// The codec of the block a data message carries.
fn data_codec(datagram: &[u8]) -> Option<Codec> {
    match wire::parse(datagram).ok()? {
        Message::Data { block, .. } => Some(wire::parse_block(block).ok()?.0.codec),
        _ => None,
    }
}

/// The only datagram `datagrams` holds, checked to be a data message with `codec`.
fn one_data(datagrams: Vec<Vec<u8>>, codec: Codec) -> Result<Vec<u8>> {
    ensure!(
        datagrams.len() == 1,
        "{} datagrams, want one",
        datagrams.len()
    );
    let d = datagrams.into_iter().next().unwrap_or_default();
    ensure!(
        data_codec(&d) == Some(codec),
        "want a {codec:?} data message"
    );
    Ok(d)
}

/// The fragments of one block of 65535-byte packet area or more, at `size` bytes each.
fn big_block(compression: Compression, size: usize) -> Result<Vec<Vec<u8>>> {
    let mut enc = encoder(compression, false, wire::MAX_AREA_LEN)?;
    let frags = encode(&mut enc, &[packet(0, MAX_PACKET_LEN, Content::Hex)], size)?;
    for f in &frags {
        ensure!(
            matches!(wire::parse(f), Ok(Message::Fragment { .. })),
            "a 64 KiB block goes in fragments"
        );
    }
    ensure!(frags.len() >= 2, "only {} fragment", frags.len());
    Ok(frags)
}

/// Single messages of every type.
fn single_messages(seeds: &mut Seeds) -> Result<()> {
    let small: Vec<_> = (0..3).map(|f| packet(f, 300, Content::Text)).collect();
    for (name, compression, codec) in [
        ("data_raw", Compression::Off, Codec::Raw),
        ("data_lz4", Compression::Lz4, Codec::Lz4),
        ("data_zstd", Compression::Zstd, Codec::Zstd),
    ] {
        let mut enc = encoder(compression, true, wire::MAX_AREA_LEN)?;
        seeds.write(name, &one_data(encode(&mut enc, &small, 1500)?, codec)?)?;
    }
    // A flow of noise is bypassed: its block goes raw although compression is on.
    let mut enc = encoder(Compression::Auto, true, wire::MAX_AREA_LEN)?;
    let noise = encode(&mut enc, &[packet(1, 900, Content::Noise)], 1500)?;
    seeds.write("data_bypassed_raw", &one_data(noise, Codec::Raw)?)?;

    let raw = big_block(Compression::Off, 1400)?;
    seeds.write("fragment_64k_raw_first", &raw[0])?;
    seeds.write("fragment_64k_raw_middle", &raw[raw.len() / 2])?;
    seeds.write("fragment_64k_raw_last", &raw[raw.len() - 1])?;
    let zstd = big_block(Compression::Zstd, 256)?;
    seeds.write("fragment_64k_zstd_first", &zstd[0])?;
    seeds.write("fragment_64k_zstd_last", &zstd[zstd.len() - 1])?;

    let mut dec = decoder(DecoderConfig {
        ack_every: 1,
        ..DecoderConfig::default()
    })?;
    let mut enc = encoder(Compression::Lz4, true, 600)?;
    let mut ack = None;
    let mut buf = vec![0u8; MAX_PACKET_LEN];
    for d in encode(&mut enc, &small, 1500)? {
        let now = Timestamp::ZERO;
        dec.handle_datagram(now, &d)
            .map_err(|e| anyhow::anyhow!("own datagram refused: {e}"))?;
        while dec.poll_packet(&mut buf).is_some() {}
        while let Some(n) = dec.poll_control(now, &mut buf) {
            ack = Some(buf[..n].to_vec());
        }
    }
    let ack = ack.context("the decoder acknowledges")?;
    ensure!(matches!(wire::parse(&ack), Ok(Message::Ack(_))), "an ack");
    seeds.write("ack", &ack)?;

    let mut enc = encoder(Compression::Off, true, wire::MAX_AREA_LEN)?;
    enc.handle_reset(
        Timestamp::ZERO,
        Reset {
            shard: SHARD,
            epoch: EPOCH,
            kind: ResetKind::Request,
        },
    );
    let n = enc.poll_control(&mut buf).context("an announcement")?;
    seeds.write("reset_announce", &buf[..n])?;
    seeds.write("reset_request", &reset_request()?)?;
    let hello = Hello {
        dedupe_cache_kib: 65536,
        capabilities: Capabilities::supported(),
        shards: 4,
        instance: 0x5eed_5eed_5eed_5eed,
    };
    seeds.write("hello", &hello.encode())?;
    Ok(())
}

/// A decoder for [`SHARD`] that knows [`EPOCH`].
fn decoder(config: DecoderConfig) -> Result<Decoder> {
    let mut dec = Decoder::new(config, SHARD).context("zstd context")?;
    dec.handle_reset(
        Timestamp::ZERO,
        Reset {
            shard: SHARD,
            epoch: EPOCH,
            kind: ResetKind::Announce,
        },
    );
    Ok(dec)
}

/// The reset request a decoder without an epoch sends after its grace period.
fn reset_request() -> Result<Vec<u8>> {
    let mut dec = Decoder::new(DecoderConfig::default(), SHARD).context("zstd context")?;
    let mut enc = encoder(Compression::Off, true, wire::MAX_AREA_LEN)?;
    let datagrams = encode(&mut enc, &[packet(0, 100, Content::Text)], 1500)?;
    let mut buf = [0u8; 64];
    for ms in [0, 200] {
        let now = Timestamp::from_millis(ms);
        let _ = dec.handle_datagram(now, &datagrams[0]);
        if let Some(n) = dec.poll_control(now, &mut buf) {
            return Ok(buf[..n].to_vec());
        }
    }
    anyhow::bail!("no reset request")
}

/// Builds one session input.
struct SessionSeed {
    bytes: Vec<u8>,
}

impl SessionSeed {
    fn new(flags: u8) -> SessionSeed {
        let mut bytes = Vec::new();
        Session {
            flags,
            shard: SHARD,
            epoch: EPOCH,
        }
        .write(&mut bytes);
        SessionSeed { bytes }
    }

    /// Adds a datagram arriving `step` (see `Record::pause`) after the previous one.
    fn push(&mut self, step: u8, datagram: &[u8]) -> &mut Self {
        Record::write(step, datagram, &mut self.bytes);
        self
    }
}

/// Runs a session through a decoder the way the `datagram` target does (without its checks).
fn replay(input: &[u8]) -> Result<DecoderStats> {
    let (session, records) = Session::split(input).context("session header")?;
    let config = DecoderConfig {
        max_held_bytes: if session.has(FLAG_SMALL_BUDGET) {
            96 * 1024
        } else {
            DecoderConfig::default().max_held_bytes
        },
        ack_every: if session.has(FLAG_ACK_EACH) { 1 } else { 8 },
        ..DecoderConfig::default()
    };
    let mut dec = Decoder::new(config, session.shard).context("zstd context")?;
    let mut now = Timestamp::ZERO;
    if !session.has(FLAG_NO_ANNOUNCE) {
        let announce = Reset {
            shard: session.shard,
            epoch: session.epoch,
            kind: ResetKind::Announce,
        };
        dec.handle_reset(now, announce);
    }
    let buf_len = if session.has(FLAG_SHORT_BUFFER) {
        1500
    } else {
        MAX_PACKET_LEN
    };
    let mut buf = vec![0u8; buf_len];
    let mut control = [0u8; 64];
    let mut drain = |dec: &mut Decoder, now| {
        while dec.poll_packet(&mut buf).is_some() {}
        while dec.poll_control(now, &mut control).is_some() {}
    };
    for record in records {
        now = now + record.pause();
        if dec.poll_timeout().is_some_and(|t| t <= now) {
            dec.handle_timeout(now);
        }
        match wire::parse(record.datagram) {
            Ok(Message::Reset(reset)) => dec.handle_reset(now, reset),
            _ => {
                let _ = dec.handle_datagram(now, record.datagram);
            }
        }
        drain(&mut dec, now);
    }
    now = now + std::time::Duration::from_secs(10);
    dec.handle_timeout(now);
    drain(&mut dec, now);
    Ok(*dec.stats())
}

/// A step that waits past the 5 ms reorder timeout (25 ms).
const PAST_REORDER: u8 = 50;
/// A step that waits past the 500 ms reassembly timeout (650 ms).
const PAST_REASSEMBLY: u8 = 255;
/// A step that waits past the 100 ms reset grace (160 ms).
const PAST_GRACE: u8 = 127;

/// Datagram sequences in the session format the `datagram` target splits.
fn sessions(seeds: &mut Seeds) -> Result<()> {
    // Mixed codecs: a backlog makes Auto pick lz4, then zstd; a noise flow goes raw.
    let mut enc = encoder(Compression::Auto, true, 2000)?;
    let mut packets: Vec<_> = (0..8).map(|i| packet(i % 4, 900, Content::Text)).collect();
    packets.insert(3, packet(5, 700, Content::Noise));
    packets.push(packet(5, 300, Content::Noise));
    let datagrams = encode(&mut enc, &packets, 1400)?;
    let codecs: Vec<_> = datagrams.iter().filter_map(|d| data_codec(d)).collect();
    for codec in Codec::ALL {
        ensure!(codecs.contains(&codec), "mixed session lacks {codec:?}");
    }
    let mut s = SessionSeed::new(FLAG_ACK_EACH);
    for d in &datagrams {
        s.push(1, d);
    }
    seeds.write_session("session_mixed_codecs", &s.bytes, |st| {
        st.packets_out == 10 && st.codecs.iter().all(|c| c.blocks > 0)
    })?;

    // A 64 KiB block in fragments, then a small block after it.
    let mut enc = encoder(Compression::Off, false, wire::MAX_AREA_LEN)?;
    let mut datagrams = encode(&mut enc, &[packet(0, MAX_PACKET_LEN, Content::Text)], 1400)?;
    datagrams.extend(encode(&mut enc, &[packet(1, 200, Content::Text)], 1400)?);
    let mut s = SessionSeed::new(0);
    for d in &datagrams {
        s.push(0, d);
    }
    seeds.write_session("session_fragments_64k", &s.bytes, |st| st.packets_out == 2)?;

    // A 64 KiB block that zstd halves, in fragments: reassembly feeds the decompressor.
    let mut s = SessionSeed::new(FLAG_ACK_EACH);
    for f in &big_block(Compression::Zstd, 1400)? {
        s.push(0, f);
    }
    seeds.write_session("session_fragments_64k_zstd", &s.bytes, |st| {
        st.packets_out == 1 && st.codec(Codec::Zstd).blocks == 1
    })?;

    // A 6 KiB block's fragments reordered, one duplicated, then a block that waits past a
    // gap. Fragments of different sizes (the path MTU changed mid-block).
    let mut enc = encoder(Compression::Off, false, wire::MAX_AREA_LEN)?;
    let mut frags = Vec::new();
    enc.handle_packet(Timestamp::ZERO, &packet(2, 6000, Content::Noise))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut buf = vec![0u8; 1500];
    for size in [1400, 600, 1200, 900, 1500, 300, 1400].iter().cycle() {
        let Some(n) = enc.poll_datagram(Timestamp::ZERO, *size, &mut buf) else {
            break;
        };
        frags.push(buf[..n].to_vec());
    }
    ensure!(frags.len() >= 5, "a 6 KiB block in pieces");
    let mut s = SessionSeed::new(FLAG_ACK_EACH);
    for i in [3, 0, 4, 0, 2] {
        s.push(0, &frags[i]);
    }
    for f in &frags[5..] {
        s.push(1, f);
    }
    s.push(0, &frags[1]);
    seeds.write_session("session_fragments_reordered", &s.bytes, |st| {
        st.packets_out == 1 && st.stale == 1
    })?;

    // Eight small blocks: a gap that times out, a late block (stale) and duplicates.
    let mut enc = encoder(Compression::Lz4, true, 300)?;
    let blocks = encode(
        &mut enc,
        &(0..8)
            .map(|i| packet(i, 280, Content::Text))
            .collect::<Vec<_>>(),
        1400,
    )?;
    ensure!(blocks.len() == 8, "{} blocks, want 8", blocks.len());
    let mut s = SessionSeed::new(FLAG_ACK_EACH);
    s.push(0, &blocks[0])
        .push(1, &blocks[2])
        .push(1, &blocks[3])
        .push(PAST_REORDER, &blocks[1])
        .push(0, &blocks[4])
        .push(0, &blocks[4])
        .push(0, &blocks[6])
        .push(0, &blocks[5])
        .push(PAST_REORDER, &blocks[7]);
    seeds.write_session("session_gap_and_late_block", &s.bytes, |st| {
        st.packets_out == 7 && st.gaps == 1 && st.stale == 2
    })?;

    // A block far ahead of the window (more than decoder::WINDOW past the last one
    // delivered) moves it once verified.
    let far = decoder::WINDOW as usize + 6;
    let mut enc = encoder(Compression::Off, true, 200)?;
    let blocks = encode(
        &mut enc,
        &(0..far + 2)
            .map(|i| packet((i % 3) as u16, 150, Content::Text))
            .collect::<Vec<_>>(),
        1400,
    )?;
    ensure!(
        blocks.len() == far + 2,
        "{} blocks, want {}",
        blocks.len(),
        far + 2
    );
    let mut s = SessionSeed::new(0);
    s.push(0, &blocks[0])
        .push(0, &blocks[1])
        .push(1, &blocks[far])
        .push(1, &blocks[far + 1])
        .push(1, &blocks[2]);
    seeds.write_session("session_far_ahead", &s.bytes, |st| {
        st.packets_out == 4 && st.gaps > 0
    })?;

    // The peer's encoder restarts: a new epoch is announced mid-session.
    let mut enc = encoder(Compression::Zstd, true, wire::MAX_AREA_LEN)?;
    let old = encode(&mut enc, &[packet(0, 500, Content::Text)], 1400)?;
    enc.handle_reset(
        Timestamp::ZERO,
        Reset {
            shard: SHARD,
            epoch: EPOCH,
            kind: ResetKind::Request,
        },
    );
    let mut control = [0u8; 64];
    let n = enc.poll_control(&mut control).context("an announcement")?;
    let new = encode(&mut enc, &[packet(1, 500, Content::Text)], 1400)?;
    let mut s = SessionSeed::new(0);
    s.push(0, &old[0])
        .push(1, &control[..n])
        .push(1, &old[0])
        .push(1, &new[0]);
    seeds.write_session("session_new_epoch", &s.bytes, |st| {
        st.packets_out == 2 && st.epochs == 2 && st.wrong_epoch == 1
    })?;

    // No announcement: data is orphaned and the decoder asks for a reset.
    let mut enc = encoder(Compression::Lz4, true, 400)?;
    let blocks = encode(
        &mut enc,
        &(0..3)
            .map(|i| packet(i, 350, Content::Text))
            .collect::<Vec<_>>(),
        1400,
    )?;
    let mut s = SessionSeed::new(FLAG_NO_ANNOUNCE);
    for b in &blocks {
        s.push(PAST_GRACE, b);
    }
    seeds.write_session("session_orphaned", &s.bytes, |st| {
        st.reset_requests > 0 && st.packets_out == 0
    })?;

    // Half a block, then a wait past the reassembly timeout, then the rest.
    let mut enc = encoder(Compression::Off, false, wire::MAX_AREA_LEN)?;
    let frags = encode(&mut enc, &[packet(3, 5000, Content::Noise)], 1400)?;
    let mut s = SessionSeed::new(0);
    s.push(0, &frags[0]).push(0, &frags[1]);
    for f in &frags[2..] {
        s.push(PAST_REASSEMBLY, f);
    }
    seeds.write_session("session_reassembly_timeout", &s.bytes, |st| {
        st.reassembly_timeouts > 0
    })?;

    // Two 64 KiB blocks started at once overflow a small hold budget.
    let mut enc = encoder(Compression::Off, false, wire::MAX_AREA_LEN)?;
    let first = encode(&mut enc, &[packet(0, MAX_PACKET_LEN, Content::Noise)], 1400)?;
    let second = encode(&mut enc, &[packet(1, MAX_PACKET_LEN, Content::Noise)], 1400)?;
    let mut s = SessionSeed::new(FLAG_SMALL_BUDGET);
    s.push(0, &second[0]).push(0, &first[1]).push(0, &second[1]);
    seeds.write_session("session_small_budget", &s.bytes, |st| st.backlog > 0)?;

    // A packet too big for the caller's buffer.
    let mut enc = encoder(Compression::Zstd, true, wire::MAX_AREA_LEN)?;
    let datagrams = encode(
        &mut enc,
        &[
            packet(0, 3000, Content::Text),
            packet(1, 100, Content::Text),
        ],
        1400,
    )?;
    let mut s = SessionSeed::new(FLAG_SHORT_BUFFER);
    for d in &datagrams {
        s.push(0, d);
    }
    seeds.write_session("session_short_buffer", &s.bytes, |st| {
        st.short_buffer == 1 && st.packets_out == 2
    })?;

    Ok(())
}

/// Starting points for the structured `roundtrip` target: deterministic pseudo-random bytes
/// of a few lengths (each decodes to some scenario; longer ones to more packets and hops).
fn roundtrip_inputs(seeds: &mut Seeds) -> Result<()> {
    let mut state = 0x0123_4567_89ab_cdefu64;
    for len in [64, 256, 1024, 4096] {
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 32) as u8
            })
            .collect();
        seeds.write(&format!("random_{len}"), &bytes)?;
    }
    Ok(())
}
