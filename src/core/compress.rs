//! Block codecs: raw, lz4 and zstd behind one interface.
//!
//! The encoder queues IP packets into a packet area (at most ~66 KiB) and compresses the whole
//! area as one block; the decoder restores it from bytes an untrusted peer sent.
//!
//! # Contract
//!
//! - [`Compressor::compress`] writes into the front of a caller-owned `out` and returns
//!   `Some(len)` only when `len < input.len()`. `None` means "send this block raw": the codec
//!   did not shrink it (or it is [`Codec::Raw`]). An `out` at least as long as the input is always
//!   enough.
//! - [`Decompressor::decompress`] is given `out` of exactly the raw length the block header
//!   announced and succeeds only if the payload decodes to exactly that many bytes. It never
//!   writes past `out`, never panics, and returns a small [`DecompressError`] the caller counts.
//! - Both sides keep their contexts and scratch buffers across calls: after warm-up, neither
//!   allocates per block.
//!
//! # Why payloads carry no framing of their own
//!
//! The block header on the wire already carries the codec id and the exact raw length, and the
//! restored batch is covered by an xxh3 checksum. So zstd runs in the magicless frame format
//! (saves the 4-byte magic number) with no content size, no checksum and no dictionary id in
//! the frame header, and lz4 uses the bare block format (no size prefix, no frame).
//!
//! # Decoder memory
//!
//! Decoding never allocates in proportion to anything the peer claims:
//!
//! - lz4 (`safe-decode` + `checked-decode`) decodes into `out` and needs no other memory.
//! - zstd one-shot decoding writes straight into `out` and uses its history from there; it never
//!   allocates a window buffer. Its only memory is the context, created once (`ZSTD_sizeof_DCtx` =
//!   95,976 bytes with zstd 1.5.7; a test checks it does not grow on hostile frames). One-shot
//!   decoding does not enforce zstd's own window limit, so [`Decompressor::decompress`] checks the
//!   frame header itself and rejects frames that declare a window over 2^[`ZSTD_WINDOW_LOG_MAX`]
//!   bytes; the same limit is set as the context's `WindowLogMax`, for the day a streaming decoder
//!   is used.

use std::fmt;

use lz4_flex::block::{CompressTable, compress_into_with_table, get_maximum_output_size};
use zstd::zstd_safe::{CCtx, CParameter, DCtx, DParameter, FrameFormat};

/// A block codec. The discriminants are wire format: they travel in every block header.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Codec {
    /// Uncompressed bytes.
    Raw = 0,
    /// lz4 block format, no size prefix.
    Lz4 = 1,
    /// zstd frame, magicless, without content size, checksum or dictionary id.
    Zstd = 2,
}

impl Codec {
    /// Every codec, in id order.
    pub const ALL: [Codec; 3] = [Codec::Raw, Codec::Lz4, Codec::Zstd];

    /// The wire id of this codec. Stable: changing one is a wire format change.
    pub const fn id(self) -> u8 {
        self as u8
    }

    /// The codec with wire id `id`, or `None` for an unknown id.
    pub const fn from_id(id: u8) -> Option<Codec> {
        match id {
            0 => Some(Codec::Raw),
            1 => Some(Codec::Lz4),
            2 => Some(Codec::Zstd),
            _ => None,
        }
    }

    /// Lower-case name, for configuration and logs.
    pub const fn name(self) -> &'static str {
        match self {
            Codec::Raw => "raw",
            Codec::Lz4 => "lz4",
            Codec::Zstd => "zstd",
        }
    }
}

/// The fastest zstd level accepted.
///
/// Negative levels trade ratio for speed. At -7 zstd already runs at about lz4's speed and
/// compresses worse (64 KiB of text: ratio 0.44 at ~520 MB/s vs lz4's 0.39 at ~430 MB/s,
/// `cargo bench --bench trial -- compress_64k_text`, 2 vCPU x86-64, shared and noisy), so
/// faster levels would only lose to lz4.
pub const MIN_ZSTD_LEVEL: i32 = -7;

/// The strongest zstd level accepted.
///
/// 19 is zstd's strongest regular level. Levels 20..=22 ("ultra") exist to use windows far
/// larger than our blocks, so they buy nothing here and cost much more time per byte.
pub const MAX_ZSTD_LEVEL: i32 = 19;

/// Base-2 log of the largest zstd window we produce or accept.
///
/// Blocks are at most ~66 KiB, so a 128 KiB window always covers a whole block.
pub const ZSTD_WINDOW_LOG_MAX: u32 = 17;

/// Samples shorter than this are too small to judge; see [`Compressor::looks_incompressible`].
pub const TRIAL_SAMPLE_MIN: usize = 64;

/// [`Compressor::looks_incompressible`] looks at no more than this many bytes.
pub const TRIAL_SAMPLE_MAX: usize = 512;

/// A trial sample counts as incompressible when lz4 output is at least
/// `TRIAL_RATIO_PERMILLE / 1000` of the sample size.
///
/// Chosen from a survey of 512-byte samples (`cargo bench --bench trial` prints it before
/// timing): see the table on [`Compressor::looks_incompressible`].
pub const TRIAL_RATIO_PERMILLE: usize = 970;

/// Worst-case lz4 output for a trial sample; the trial compresses into a stack array this big.
const TRIAL_OUT_LEN: usize = get_maximum_output_size(TRIAL_SAMPLE_MAX);

/// lz4_flex's 16-bit-position hash table only works for inputs shorter than this.
const LZ4_SMALL_TABLE_LIMIT: usize = u16::MAX as usize;

/// zstd error code `dstSize_tooSmall` (zstd_errors.h; the values are pinned since zstd 1.3.1).
/// zstd returns errors as the negated code in a `size_t`.
const ZSTD_ERROR_DST_SIZE_TOO_SMALL: usize = 70usize.wrapping_neg();

/// Why a [`Compressor`] could not be created.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CompressError {
    /// The zstd level is outside `MIN_ZSTD_LEVEL..=MAX_ZSTD_LEVEL`.
    LevelOutOfRange,
    /// zstd could not allocate its context or refused a parameter.
    ZstdSetup,
}

impl fmt::Display for CompressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CompressError::LevelOutOfRange => write!(
                f,
                "zstd level out of range {MIN_ZSTD_LEVEL}..={MAX_ZSTD_LEVEL}"
            ),
            CompressError::ZstdSetup => f.write_str("zstd compression context setup failed"),
        }
    }
}

impl std::error::Error for CompressError {}

/// Why a block could not be restored. Cheap to count: see [`DecompressError::index`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DecompressError {
    /// The lz4 payload is malformed (bad literal length, offset before the start, truncated).
    Lz4,
    /// The zstd payload is malformed or truncated.
    Zstd,
    /// The zstd frame declares a window larger than 2^[`ZSTD_WINDOW_LOG_MAX`] bytes; our
    /// encoder never produces one.
    ZstdWindowTooLarge,
    /// The payload decodes to more or fewer bytes than the block header announced (for
    /// [`Codec::Raw`]: the payload length differs from it).
    LengthMismatch,
}

impl DecompressError {
    /// Every variant, in [`index`](Self::index) order.
    pub const ALL: [DecompressError; 4] = [
        DecompressError::Lz4,
        DecompressError::Zstd,
        DecompressError::ZstdWindowTooLarge,
        DecompressError::LengthMismatch,
    ];

    /// Position in [`ALL`](Self::ALL), for an array of counters.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Short snake_case name, for metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            DecompressError::Lz4 => "lz4",
            DecompressError::Zstd => "zstd",
            DecompressError::ZstdWindowTooLarge => "zstd_window_too_large",
            DecompressError::LengthMismatch => "length_mismatch",
        }
    }
}

impl fmt::Display for DecompressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DecompressError::Lz4 => "malformed lz4 block",
            DecompressError::Zstd => "malformed zstd frame",
            DecompressError::ZstdWindowTooLarge => "zstd frame declares a window over 128 KiB",
            DecompressError::LengthMismatch => "block does not restore to the announced length",
        })
    }
}

impl std::error::Error for DecompressError {}

/// Compresses blocks, reusing its contexts and scratch memory across calls.
///
/// One per shard; not shared between threads.
pub struct Compressor {
    /// zstd context, configured once (level, magicless, no extra header fields); its
    /// workspace is reused from block to block.
    zstd: CCtx<'static>,
    /// lz4 hash table with 16-bit positions (8 KiB) for inputs under 64 KiB, and the trial.
    lz4_small: CompressTable,
    /// lz4 hash table with 32-bit positions (16 KiB) for inputs of 64 KiB and more.
    lz4_large: CompressTable,
    /// Output for a codec when `out` is shorter than the codec's worst case (see
    /// [`Compressor::compress`]). Grows to fit the largest block seen, then stays.
    scratch: Vec<u8>,
}

impl Compressor {
    /// Creates a compressor whose zstd codec runs at `zstd_level`.
    ///
    /// # Errors
    ///
    /// [`CompressError::LevelOutOfRange`] if `zstd_level` is outside
    /// `MIN_ZSTD_LEVEL..=MAX_ZSTD_LEVEL`; [`CompressError::ZstdSetup`] if zstd cannot allocate
    /// or configure its context.
    pub fn new(zstd_level: i32) -> Result<Self, CompressError> {
        if !(MIN_ZSTD_LEVEL..=MAX_ZSTD_LEVEL).contains(&zstd_level) {
            return Err(CompressError::LevelOutOfRange);
        }
        let mut zstd = CCtx::try_create().ok_or(CompressError::ZstdSetup)?;
        for parameter in [
            CParameter::CompressionLevel(zstd_level),
            CParameter::Format(FrameFormat::Magicless),
            CParameter::ChecksumFlag(false),
            CParameter::ContentSizeFlag(false),
            CParameter::DictIdFlag(false),
            // zstd only ever shrinks this for small inputs, so every frame we emit passes the
            // decoder's window check.
            CParameter::WindowLog(ZSTD_WINDOW_LOG_MAX),
        ] {
            zstd.set_parameter(parameter)
                .map_err(|_| CompressError::ZstdSetup)?;
        }
        Ok(Compressor {
            zstd,
            lz4_small: CompressTable::small(),
            lz4_large: CompressTable::large(),
            scratch: Vec::new(),
        })
    }

    /// Compresses `input` with `codec` into the front of `out`.
    ///
    /// Returns the compressed length only if it is strictly smaller than `input.len()` and
    /// fits in `out`; otherwise `None`, and the caller sends the block raw. [`Codec::Raw`] and
    /// an empty input always give `None`. `out.len() >= input.len()` is always enough; bytes
    /// of `out` past the returned length (or all of it, on `None`) may have been overwritten.
    ///
    /// Both codecs need room for their worst case to be exact: lz4_flex refuses to start without
    /// it, and zstd, given exactly the room its result needs, fails anyway (a probe over inputs up
    /// to 3000 bytes saw it want up to 8 bytes more than it wrote, so capping it just
    /// below the input length would wrongly refuse blocks that shrink by a few bytes). So when `out` is shorter than
    /// the codec's worst case (about `input.len() * 1.1 + 20` for lz4, `input.len() * 1.004 + 64`
    /// for zstd), the codec writes into internal scratch and the result is copied: a memcpy of at
    /// most the input length, cheap next to compressing it. Pass a larger `out` to skip the copy. A
    /// block that does not shrink costs a full compression either way: with blocks under 128 KiB
    /// neither codec can tell before the end.
    ///
    /// No allocation per call once the scratch has grown to fit the largest block.
    pub fn compress(&mut self, codec: Codec, input: &[u8], out: &mut [u8]) -> Option<usize> {
        // Largest useful result: strictly smaller than the input, and within `out`.
        let limit = out.len().min(input.len().checked_sub(1)?);
        let worst_case = match codec {
            Codec::Raw => return None,
            Codec::Lz4 => get_maximum_output_size(input.len()),
            Codec::Zstd => zstd::zstd_safe::compress_bound(input.len()),
        };
        let direct = out.len() >= worst_case;
        if !direct && self.scratch.len() < worst_case {
            self.scratch.resize(worst_case, 0);
        }
        let dst = if direct {
            &mut *out
        } else {
            &mut self.scratch[..worst_case]
        };
        let written = match codec {
            Codec::Raw => return None,
            Codec::Lz4 => {
                let table = if input.len() < LZ4_SMALL_TABLE_LIMIT {
                    &mut self.lz4_small
                } else {
                    &mut self.lz4_large
                };
                compress_into_with_table(input, dst, table).ok()?
            }
            Codec::Zstd => self.zstd.compress2(dst, input).ok()?,
        };
        if written > limit {
            return None;
        }
        if !direct {
            out[..written].copy_from_slice(&self.scratch[..written]);
        }
        Some(written)
    }

    /// Cheap trial: does `sample` look like already-compressed or encrypted data (TLS, QUIC,
    /// archives, media), so that its flow should bypass compression?
    ///
    /// Compresses at most the first [`TRIAL_SAMPLE_MAX`] bytes with lz4 into a stack buffer
    /// and returns `true` when the result is at least [`TRIAL_RATIO_PERMILLE`]/1000 of the
    /// sample. Samples shorter than [`TRIAL_SAMPLE_MIN`] return `false`: too small to judge.
    /// Does not allocate.
    ///
    /// Cost: about 0.45 µs for a random sample and 1.0 µs for a text sample (512 bytes used
    /// of 1400; lz4 skips ahead faster when it finds no matches), measured with
    /// `cargo bench --bench trial -- trial/` on a 2 vCPU x86-64 Xeon VM shared with other
    /// builds (load average ~2.7), so treat these as upper bounds. It includes
    /// clearing lz4_flex's 8 KiB hash table, which its API does on every call. Meant to run
    /// once per flow, not per packet.
    ///
    /// Threshold evidence, from the survey `cargo bench --bench trial` prints (800 samples per
    /// row: 512-byte prefixes and middles of files; lz4 output/input in permille):
    ///
    /// | data                                | min  | p50  | p99  | max  | flagged at 970 |
    /// |-------------------------------------|------|------|------|------|----------------|
    /// | random bytes                        | 1005 | 1005 | 1005 | 1005 | 100%           |
    /// | text (/usr/share/doc, /usr/include) | 259  | 849  | 951  | 978  | 0.1%           |
    /// | shared libraries (/usr/lib)         | 25   | 472  | 1005 | 1005 | 2.0%           |
    /// | gzip'd docs and man pages           | 988  | 1003 | 1005 | 1005 | 100%           |
    ///
    /// Any cut between 978 and 988 would separate text from gzip; 970 leaves margin below
    /// gzip's 988 (a gzip header is slightly compressible) and only flags samples that lz4
    /// shrinks by under 3%, where compressing the flow is not worth its CPU anyway.
    pub fn looks_incompressible(&mut self, sample: &[u8]) -> bool {
        if sample.len() < TRIAL_SAMPLE_MIN {
            return false;
        }
        let sample = &sample[..sample.len().min(TRIAL_SAMPLE_MAX)];
        let mut out = [0u8; TRIAL_OUT_LEN];
        match compress_into_with_table(sample, &mut out, &mut self.lz4_small) {
            Ok(written) => written * 1000 >= sample.len() * TRIAL_RATIO_PERMILLE,
            // Unreachable: `out` holds lz4's worst case for any sample we pass. If it ever
            // happens, the sample surely did not shrink.
            Err(_) => true,
        }
    }
}

impl fmt::Debug for Compressor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Compressor")
            .field("scratch_len", &self.scratch.len())
            .finish_non_exhaustive()
    }
}

/// Restores blocks from an untrusted peer, reusing its zstd context across calls.
///
/// One per shard; not shared between threads.
pub struct Decompressor {
    /// zstd context, configured once for the magicless format and a bounded window.
    zstd: DCtx<'static>,
}

/// lz4_flex's checked block decoder in a function of its own, as a caller that does nothing
/// else compiles it. Inlined into [`Decompressor::decompress`], beside the raw and zstd arms,
/// the compiler kept the bounds check of each match copy (`slice::index::range`) out of line:
/// perf on `text_1400/decode_ours_lz4` put 4% of the samples there and 7% in glibc's memmove,
/// against none and 3% here, as for the bare codec. `cargo bench --bench codec --
/// text_1400/decode_` (2-vCPU Intel Xeon guest, binaries alternated): lz4 decode paired
/// ours/bare 0.84 and 0.84 inlined, 0.88 and 0.88 with this function.
#[inline(never)]
fn lz4_decompress_into(
    input: &[u8],
    out: &mut [u8],
) -> Result<usize, lz4_flex::block::DecompressError> {
    lz4_flex::block::decompress_into(input, out)
}

impl Decompressor {
    /// Creates a decompressor.
    ///
    /// # Errors
    ///
    /// [`CompressError::ZstdSetup`] if zstd cannot allocate or configure its context.
    pub fn new() -> Result<Self, CompressError> {
        let mut zstd = DCtx::try_create().ok_or(CompressError::ZstdSetup)?;
        for parameter in [
            DParameter::Format(FrameFormat::Magicless),
            DParameter::WindowLogMax(ZSTD_WINDOW_LOG_MAX),
        ] {
            zstd.set_parameter(parameter)
                .map_err(|_| CompressError::ZstdSetup)?;
        }
        Ok(Decompressor { zstd })
    }

    /// Restores a `codec` payload into `out`, whose length is the exact raw length announced
    /// by the block header.
    ///
    /// Succeeds only if the payload restores to exactly `out.len()` bytes. Never writes past
    /// `out`, never panics and never allocates, whatever `input` holds. On error the contents
    /// of `out` are unspecified.
    ///
    /// # Errors
    ///
    /// - [`DecompressError::LengthMismatch`] if the payload restores to more or fewer bytes
    ///   than `out.len()` (for [`Codec::Raw`], if `input.len() != out.len()`).
    /// - [`DecompressError::Lz4`] / [`DecompressError::Zstd`] for a malformed payload.
    /// - [`DecompressError::ZstdWindowTooLarge`] for a zstd frame declaring a window over
    ///   2^[`ZSTD_WINDOW_LOG_MAX`] bytes.
    pub fn decompress(
        &mut self,
        codec: Codec,
        input: &[u8],
        out: &mut [u8],
    ) -> Result<(), DecompressError> {
        let written = match codec {
            Codec::Raw => {
                if input.len() != out.len() {
                    return Err(DecompressError::LengthMismatch);
                }
                out.copy_from_slice(input);
                return Ok(());
            }
            Codec::Lz4 => lz4_decompress_into(input, out).map_err(|e| match e {
                lz4_flex::block::DecompressError::OutputTooSmall { .. } => {
                    DecompressError::LengthMismatch
                }
                _ => DecompressError::Lz4,
            })?,
            Codec::Zstd => {
                if zstd_declared_window(input).is_some_and(|w| w > 1 << ZSTD_WINDOW_LOG_MAX) {
                    return Err(DecompressError::ZstdWindowTooLarge);
                }
                self.zstd.decompress(out, input).map_err(|code| {
                    if code == ZSTD_ERROR_DST_SIZE_TOO_SMALL {
                        DecompressError::LengthMismatch
                    } else {
                        DecompressError::Zstd
                    }
                })?
            }
        };
        if written == out.len() {
            Ok(())
        } else {
            Err(DecompressError::LengthMismatch)
        }
    }
}

impl fmt::Debug for Decompressor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decompressor").finish_non_exhaustive()
    }
}

/// The window size the first frame of a magicless zstd payload declares, or `None` if the
/// header is too short to tell (zstd then reports the truncation itself).
///
/// Frame header (RFC 8878 §3.1.1.1) without the magic: a descriptor byte, then either a
/// window descriptor byte or, for a single-segment frame, no window byte and a window equal to
/// the frame content size that follows the optional dictionary id.
fn zstd_declared_window(frame: &[u8]) -> Option<u64> {
    let descriptor = *frame.first()?;
    let single_segment = descriptor & 0x20 != 0;
    if !single_segment {
        let window = *frame.get(1)?;
        let exponent = u32::from(window >> 3);
        let mantissa = u64::from(window & 7);
        let base = 1u64 << (10 + exponent);
        return Some(base + (base / 8) * mantissa);
    }
    let dict_id_len = [0, 1, 2, 4][usize::from(descriptor & 3)];
    let content_size_len = [1, 2, 4, 8][usize::from(descriptor >> 6)];
    let start = 1 + dict_id_len;
    let field = frame.get(start..start + content_size_len)?;
    let mut le = [0u8; 8];
    le[..content_size_len].copy_from_slice(field);
    let content_size = u64::from_le_bytes(le);
    // The 2-byte form is offset by 256 (RFC 8878 §3.1.1.1.4).
    Some(if content_size_len == 2 {
        content_size + 256
    } else {
        content_size
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::rngs::SmallRng;
    use rand::{Rng, RngCore, SeedableRng};

    const LEVELS: [i32; 4] = [MIN_ZSTD_LEVEL, -1, 1, 3];

    /// Pseudo-text: words from a fixed list, drawn by a seeded RNG, with some punctuation.
    fn text(len: usize, seed: u64) -> Vec<u8> {
        const WORDS: &[&str] = &[
            "the",
            "packet",
            "of",
            "and",
            "to",
            "a",
            "in",
            "is",
            "tunnel",
            "that",
            "for",
            "gateway",
            "compress",
            "with",
            "as",
            "on",
            "block",
            "be",
            "at",
            "by",
            "this",
            "header",
            "from",
            "or",
            "an",
            "stream",
            "which",
            "flow",
            "are",
            "window",
            "it",
            "link",
            "not",
            "data",
            "but",
            "latency",
            "have",
            "buffer",
            "all",
            "route",
            "were",
            "address",
            "when",
            "shard",
            "there",
            "batch",
            "can",
            "peer",
            "been",
            "decoder",
            "has",
            "encoder",
            "more",
            "queue",
            "if",
            "checksum",
            "will",
            "length",
            "would",
            "frame",
            "who",
            "network",
            "so",
            "bandwidth",
            "no",
            "timeout",
        ];
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut out = Vec::with_capacity(len + 16);
        while out.len() < len {
            out.extend_from_slice(WORDS[rng.random_range(0..WORDS.len())].as_bytes());
            out.push(match rng.random_range(0..20) {
                0 => b'\n',
                1 => b',',
                2 => b'.',
                _ => b' ',
            });
        }
        out.truncate(len);
        out
    }

    fn random(len: usize, seed: u64) -> Vec<u8> {
        let mut out = vec![0u8; len];
        SmallRng::seed_from_u64(seed).fill_bytes(&mut out);
        out
    }

    /// Compresses with `codec` into an `out` as long as the input; if it shrank, checks the
    /// round trip and returns the compressed length.
    fn round_trip(
        c: &mut Compressor,
        d: &mut Decompressor,
        codec: Codec,
        input: &[u8],
    ) -> Option<usize> {
        let mut packed = vec![0u8; input.len()];
        let n = c.compress(codec, input, &mut packed)?;
        assert!(n < input.len(), "{codec:?}: {n} >= {}", input.len());
        let mut restored = vec![0u8; input.len()];
        d.decompress(codec, &packed[..n], &mut restored).unwrap();
        assert_eq!(restored, input, "{codec:?}");
        Some(n)
    }

    fn compressed(codec: Codec, level: i32, input: &[u8]) -> Vec<u8> {
        let mut packed = vec![0u8; input.len()];
        let n = Compressor::new(level)
            .unwrap()
            .compress(codec, input, &mut packed)
            .expect("input compresses");
        packed.truncate(n);
        packed
    }

    #[test]
    fn codec_ids_are_pinned() {
        assert_eq!(Codec::ALL.map(Codec::id), [0, 1, 2]);
        assert_eq!(Codec::ALL.map(Codec::name), ["raw", "lz4", "zstd"]);
        for codec in Codec::ALL {
            assert_eq!(Codec::from_id(codec.id()), Some(codec));
        }
        assert!((3..=u8::MAX).all(|id| Codec::from_id(id).is_none()));
    }

    #[test]
    fn error_tables_are_consistent() {
        for (i, e) in DecompressError::ALL.iter().enumerate() {
            assert_eq!(e.index(), i);
            assert!(!e.name().is_empty() && !e.to_string().is_empty());
        }
        let mut names = DecompressError::ALL.map(DecompressError::name);
        names.sort_unstable();
        names.windows(2).for_each(|w| assert_ne!(w[0], w[1]));
    }

    #[test]
    fn level_bounds() {
        assert_eq!(
            Compressor::new(MIN_ZSTD_LEVEL - 1).unwrap_err(),
            CompressError::LevelOutOfRange
        );
        assert_eq!(
            Compressor::new(MAX_ZSTD_LEVEL + 1).unwrap_err(),
            CompressError::LevelOutOfRange
        );
        assert!(Compressor::new(MIN_ZSTD_LEVEL).is_ok());
        assert!(Compressor::new(MAX_ZSTD_LEVEL).is_ok());
    }

    #[test]
    fn round_trips_every_codec_and_level() {
        let mut d = Decompressor::new().unwrap();
        for level in LEVELS {
            let mut c = Compressor::new(level).unwrap();
            for codec in [Codec::Lz4, Codec::Zstd] {
                for len in [0, 1, 2, 3, 16, 63, 64, 100] {
                    // Tiny inputs may or may not shrink; whatever comes back must round-trip.
                    round_trip(&mut c, &mut d, codec, &text(len, 1));
                    round_trip(&mut c, &mut d, codec, &vec![0u8; len]);
                }
                for len in [1400, 64 * 1024, 66 * 1024 + 100] {
                    let n = round_trip(&mut c, &mut d, codec, &text(len, 2));
                    assert!(
                        n.is_some(),
                        "{codec:?} level {level}: text {len} did not shrink"
                    );
                    let input = random(len, 3);
                    assert_eq!(
                        c.compress(codec, &input, &mut vec![0; len]),
                        None,
                        "{codec:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn raw_never_compresses() {
        let mut c = Compressor::new(1).unwrap();
        for len in [0, 1, 1400, 64 * 1024] {
            assert_eq!(
                c.compress(Codec::Raw, &vec![0u8; len], &mut vec![0; len]),
                None
            );
        }
    }

    /// `Some` exactly when the codec's unconstrained output is shorter than the input.
    #[test]
    fn some_exactly_when_smaller() {
        let mut rng = SmallRng::seed_from_u64(4);
        let mut c = Compressor::new(1).unwrap();
        let mut oracle = CCtx::create();
        for p in [
            CParameter::CompressionLevel(1),
            CParameter::Format(FrameFormat::Magicless),
            CParameter::ChecksumFlag(false),
            CParameter::ContentSizeFlag(false),
            CParameter::DictIdFlag(false),
            CParameter::WindowLog(ZSTD_WINDOW_LOG_MAX),
        ] {
            oracle.set_parameter(p).unwrap();
        }
        let (mut lz4_some, mut zstd_some, mut cases) = (0, 0, 0);
        for len in 1..400usize {
            // A compressible head and a random tail, so the outcome flips around these sizes.
            let head = rng.random_range(0..=len);
            let mut input = vec![b'x'; head];
            input.extend(random(len - head, len as u64));
            let mut big = vec![0u8; 2 * len + 64];

            let n = lz4_flex::block::compress_into(&input, &mut big).unwrap();
            let got = c.compress(Codec::Lz4, &input, &mut vec![0; len]);
            assert_eq!(got, (n < len).then_some(n), "lz4 len {len} head {head}");
            lz4_some += usize::from(got.is_some());

            let n = oracle.compress2(&mut big[..], &input).unwrap();
            let got = c.compress(Codec::Zstd, &input, &mut vec![0; len]);
            assert_eq!(got, (n < len).then_some(n), "zstd len {len} head {head}");
            zstd_some += usize::from(got.is_some());
            cases += 1;
        }
        // Both outcomes must have been exercised for the test to mean anything.
        assert!(0 < lz4_some && lz4_some < cases, "{lz4_some}/{cases}");
        assert!(0 < zstd_some && zstd_some < cases, "{zstd_some}/{cases}");
    }

    #[test]
    fn out_shorter_than_input_is_honoured() {
        let input = text(1400, 5);
        let mut c = Compressor::new(1).unwrap();
        for codec in [Codec::Lz4, Codec::Zstd] {
            let n = c
                .compress(codec, &input, &mut vec![0; input.len()])
                .unwrap();
            let mut exact = vec![0u8; n];
            assert_eq!(c.compress(codec, &input, &mut exact), Some(n), "{codec:?}");
            assert_eq!(
                c.compress(codec, &input, &mut vec![0; n - 1]),
                None,
                "{codec:?}"
            );
            assert_eq!(c.compress(codec, &input, &mut []), None, "{codec:?}");
        }
    }

    #[test]
    fn large_out_skips_the_scratch() {
        let input = text(64 * 1024, 6);
        let mut c = Compressor::new(1).unwrap();
        let mut d = Decompressor::new().unwrap();
        for codec in [Codec::Lz4, Codec::Zstd] {
            let mut out = vec![0u8; 2 * input.len()];
            let n = c.compress(codec, &input, &mut out).unwrap();
            assert!(
                c.scratch.is_empty(),
                "{codec:?} used scratch although out was large"
            );
            let mut restored = vec![0u8; input.len()];
            d.decompress(codec, &out[..n], &mut restored).unwrap();
            assert_eq!(restored, input);
        }
    }

    #[test]
    fn raw_decompress_checks_length() {
        let mut d = Decompressor::new().unwrap();
        let mut out = [0u8; 4];
        d.decompress(Codec::Raw, b"abcd", &mut out).unwrap();
        assert_eq!(&out, b"abcd");
        for input in [&b"abc"[..], b"abcde", b""] {
            assert_eq!(
                d.decompress(Codec::Raw, input, &mut out),
                Err(DecompressError::LengthMismatch)
            );
        }
        d.decompress(Codec::Raw, b"", &mut []).unwrap();
    }

    #[test]
    fn valid_stream_into_wrong_length_is_length_mismatch() {
        let input = text(1400, 7);
        let mut d = Decompressor::new().unwrap();
        for codec in [Codec::Lz4, Codec::Zstd] {
            let packed = compressed(codec, 1, &input);
            for len in [0, 1, 1399, 1401, 4096] {
                let mut out = vec![0u8; len];
                assert_eq!(
                    d.decompress(codec, &packed, &mut out),
                    Err(DecompressError::LengthMismatch),
                    "{codec:?} into {len}"
                );
            }
        }
    }

    /// Every outcome is allowed except a panic; a success fills `out` exactly by contract.
    fn poke(d: &mut Decompressor, codec: Codec, input: &[u8], out_lens: &[usize]) -> usize {
        let mut out = vec![0u8; out_lens.iter().copied().max().unwrap_or(0)];
        let mut ok = 0;
        for &len in out_lens {
            ok += usize::from(d.decompress(codec, input, &mut out[..len]).is_ok());
        }
        ok
    }

    #[test]
    fn hostile_payloads_never_panic() {
        let mut d = Decompressor::new().unwrap();
        let mut rng = SmallRng::seed_from_u64(8);
        let lens = [0, 1, 7, 100, 1400, 65_536];
        for codec in Codec::ALL {
            for raw_len in [1400, 64 * 1024] {
                let input = text(raw_len, 9);
                let packed = if codec == Codec::Raw {
                    input.clone()
                } else {
                    compressed(codec, 1, &input)
                };
                let lens_with_exact = [&lens[..], &[raw_len]].concat();
                // Truncations.
                for cut in (0..packed.len()).step_by(packed.len() / 300 + 1) {
                    poke(&mut d, codec, &packed[..cut], &lens_with_exact);
                }
                // Bit flips: every bit of the first 64 bytes, then random positions.
                let mut flipped = packed.clone();
                let positions = (0..64.min(packed.len()) * 8)
                    .chain((0..500).map(|_| rng.random_range(0..packed.len() * 8)));
                for bit in positions {
                    flipped[bit / 8] ^= 1 << (bit % 8);
                    poke(&mut d, codec, &flipped, &lens_with_exact);
                    flipped[bit / 8] ^= 1 << (bit % 8);
                }
            }
            // Pure noise.
            for seed in 0..300 {
                let len = rng.random_range(0..3000);
                poke(&mut d, codec, &random(len, seed), &lens);
            }
        }
    }

    /// A magicless zstd frame: no content size, the given window byte, then one raw block.
    fn frame_with_window(window_descriptor: u8, payload: &[u8]) -> Vec<u8> {
        let block_header = ((payload.len() as u32) << 3) | 1; // last block, type raw
        let mut frame = vec![0x00, window_descriptor];
        frame.extend_from_slice(&block_header.to_le_bytes()[..3]);
        frame.extend_from_slice(payload);
        frame
    }

    #[test]
    fn zstd_big_window_is_rejected_without_allocating() {
        let mut d = Decompressor::new().unwrap();
        let memory_before = d.zstd.sizeof();
        let payload = b"hello, window";
        let mut out = [0u8; 13];

        // The hand-built frame is valid: with a 2^17 window (exponent 7) it decodes.
        d.decompress(Codec::Zstd, &frame_with_window(7 << 3, payload), &mut out)
            .unwrap();
        assert_eq!(&out, payload);
        // One step over the limit (2^17 + 2^14), and the largest window zstd can express.
        for window in [(7 << 3) | 1, 8 << 3, u8::MAX] {
            assert_eq!(
                d.decompress(Codec::Zstd, &frame_with_window(window, payload), &mut out),
                Err(DecompressError::ZstdWindowTooLarge)
            );
        }
        // Single-segment frame whose window is its declared 1 TiB content size.
        let mut single = vec![0xE0];
        single.extend_from_slice(&(1u64 << 40).to_le_bytes());
        single.extend_from_slice(&frame_with_window(0, payload)[2..]);
        assert_eq!(
            d.decompress(Codec::Zstd, &single, &mut out),
            Err(DecompressError::ZstdWindowTooLarge)
        );
        assert_eq!(d.zstd.sizeof(), memory_before, "the context grew");
    }

    #[test]
    fn zstd_frames_we_emit_fit_the_window_limit() {
        for level in [MIN_ZSTD_LEVEL, 1, MAX_ZSTD_LEVEL] {
            for len in [1400, 64 * 1024, 66 * 1024 + 100, 200 * 1024] {
                let packed = compressed(Codec::Zstd, level, &text(len, 10));
                let window = zstd_declared_window(&packed).unwrap();
                assert!(
                    window <= 1 << ZSTD_WINDOW_LOG_MAX,
                    "level {level} len {len}: {window}"
                );
            }
        }
    }

    #[test]
    fn steady_state_does_not_grow_buffers() {
        let mut c = Compressor::new(3).unwrap();
        let mut d = Decompressor::new().unwrap();
        let inputs = [
            text(66 * 1024, 11),
            text(1400, 12),
            random(40_000, 13),
            text(9000, 14),
        ];
        let mut out = vec![0u8; 66 * 1024];
        let mut restored = vec![0u8; 66 * 1024];
        let mut run = |c: &mut Compressor, d: &mut Decompressor| {
            for input in &inputs {
                for codec in Codec::ALL {
                    if let Some(n) = c.compress(codec, input, &mut out) {
                        d.decompress(codec, &out[..n], &mut restored[..input.len()])
                            .unwrap();
                    }
                }
            }
        };
        run(&mut c, &mut d);
        let sizes = (c.zstd.sizeof(), c.scratch.capacity(), d.zstd.sizeof());
        for _ in 0..5 {
            run(&mut c, &mut d);
        }
        assert_eq!(
            (c.zstd.sizeof(), c.scratch.capacity(), d.zstd.sizeof()),
            sizes
        );
    }

    #[test]
    fn trial_separates_random_from_text() {
        let mut c = Compressor::new(1).unwrap();
        for seed in 0..50 {
            assert!(
                c.looks_incompressible(&random(512, seed)),
                "random seed {seed}"
            );
            assert!(
                c.looks_incompressible(&random(1400, seed)),
                "random seed {seed}"
            );
            assert!(
                !c.looks_incompressible(&text(512, seed)),
                "text seed {seed}"
            );
            assert!(
                !c.looks_incompressible(&text(1400, seed)),
                "text seed {seed}"
            );
        }
        // Too short to judge, even when random.
        assert!(!c.looks_incompressible(&random(TRIAL_SAMPLE_MIN - 1, 1)));
        assert!(!c.looks_incompressible(&[]));
        assert!(!c.looks_incompressible(&[0u8; 4096]));
        // Only the first TRIAL_SAMPLE_MAX bytes count.
        let mut mixed = text(TRIAL_SAMPLE_MAX, 3);
        mixed.extend(random(10_000, 3));
        assert!(!c.looks_incompressible(&mixed));
    }

    /// Compressible and incompressible inputs up to just over the largest packet area.
    fn block_input() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..70_000),
            proptest::collection::vec(0u8..4, 0..70_000),
            (0..70_000usize, any::<u64>()).prop_map(|(len, seed)| text(len, seed)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn prop_round_trip(input in block_input(), level in MIN_ZSTD_LEVEL..=3) {
            let mut c = Compressor::new(level).unwrap();
            let mut d = Decompressor::new().unwrap();
            for codec in Codec::ALL {
                let mut out = vec![0u8; input.len()];
                if let Some(n) = c.compress(codec, &input, &mut out) {
                    prop_assert!(n < input.len());
                    let mut restored = vec![0u8; input.len()];
                    prop_assert_eq!(d.decompress(codec, &out[..n], &mut restored), Ok(()));
                    prop_assert_eq!(&restored, &input);
                }
            }
        }
    }

    proptest! {
        #[test]
        fn prop_decompress_never_panics(
            input in proptest::collection::vec(any::<u8>(), 0..4096),
            out_len in 0..70_000usize,
            id in 0u8..3,
        ) {
            let codec = Codec::from_id(id).unwrap();
            let mut out = vec![0u8; out_len];
            let _ = Decompressor::new().unwrap().decompress(codec, &input, &mut out);
        }
    }
}
