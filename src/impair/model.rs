//! The impairment model: what a WAN link does to each datagram, decided without IO.
//!
//! [`Impairment::handle_datagram`] takes the arrival time and the datagram's bytes and returns
//! a [`Verdict`]: dropped (and why), or when the datagram, and possibly a duplicate of it,
//! leaves the link. It reads no clock and touches no socket; randomness comes from one
//! [`SmallRng`] per direction seeded from the caller's seed, so the same seed, settings and
//! arrival sequence give the same decisions on the same build target (`SmallRng` is a
//! different generator on 32-bit targets and may change between `rand` releases).
//!
//! Each datagram goes through these stages in order, like Linux netem:
//!
//! 1. **cut**: while the link is cut (by [`Impairment::set_cut`] or the scheduled
//!    [`CutWindow`]) everything is dropped. The cut is checked on arrival: datagrams already
//!    in flight when the cut starts still arrive, as on a link whose far end stays up.
//! 2. **burst loss**: a two-state Gilbert–Elliott chain ([`GilbertElliott`]); the datagram is
//!    lost with the current state's loss probability, then the chain steps once.
//! 3. **random loss**: independent loss with a fixed probability.
//! 4. **corruption**: with a probability, 1..=k distinct random bytes are changed in place
//!    (each XORed with a non-zero value, so a corrupted datagram always differs). A duplicate
//!    carries the same bytes.
//! 5. **duplication**: with a probability, a second copy is sent; it goes through the stages
//!    below on its own, as if it had arrived at the same instant.
//! 6. **rate limit**: a token bucket ([`RateLimit`]) in front of a FIFO of bounded size in
//!    bytes; a copy that would overflow the FIFO is tail-dropped.
//! 7. **delay**: fixed delay plus jitter ([`Jitter`], uniform or normal, the sum clamped at
//!    zero), added after the copy leaves the bucket. Jitter alone can reorder, as in netem.
//! 8. **reordering**: a fraction of copies get an extra delay up to a bound ([`Reorder`]),
//!    so later datagrams overtake them.
//!
//! The two directions are independent links: each has its own settings, generator, chain
//! state, bucket and counters.

use std::fmt;
use std::num::{NonZeroU64, NonZeroUsize};
use std::str::FromStr;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

/// Which way a datagram crosses the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// From the relay's clients towards the upstream address.
    Up,
    /// From the upstream address back to a client.
    Down,
}

/// A probability in `0.0..=1.0`; no other value can be built.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Default)]
pub struct Probability(f64);

impl Probability {
    /// Never.
    pub const NEVER: Self = Self(0.0);

    /// `p` as a probability, or `None` when it is not in `0.0..=1.0` (NaN included).
    pub fn new(p: f64) -> Option<Self> {
        (0.0..=1.0).contains(&p).then_some(Self(p))
    }

    /// The value, in `0.0..=1.0`.
    pub fn value(self) -> f64 {
        self.0
    }

    /// Draws one Bernoulli trial; draws nothing from `rng` when `self` is zero, so a
    /// disabled stage does not shift the decisions of the others.
    fn happens(self, rng: &mut SmallRng) -> bool {
        self.0 > 0.0 && rng.random_bool(self.0)
    }
}

/// Why a [`Probability`] or another setting did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: expected {expected}, got {input:?}")]
pub struct ParseSettingError {
    /// The setting being parsed.
    pub what: &'static str,
    /// The accepted form.
    pub expected: &'static str,
    /// The text that was refused.
    pub input: String,
}

impl ParseSettingError {
    fn new(what: &'static str, expected: &'static str, input: &str) -> Self {
        Self {
            what,
            expected,
            input: input.to_owned(),
        }
    }
}

impl FromStr for Probability {
    type Err = ParseSettingError;

    /// `0.05` (a fraction in `0..=1`) or `5%`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseSettingError::new("probability", "a fraction in 0..=1 or N%", s);
        let t = s.trim();
        let p = match t.strip_suffix('%') {
            Some(percent) => percent.trim().parse::<f64>().map_err(|_| err())? / 100.0,
            None => t.parse::<f64>().map_err(|_| err())?,
        };
        Self::new(p).ok_or_else(err)
    }
}

/// Parses a duration given in milliseconds (fractions allowed), as the CLI writes them.
///
/// # Errors
/// When `s` is not a finite, non-negative number.
pub fn parse_millis(s: &str) -> Result<Duration, ParseSettingError> {
    let ms: f64 = s
        .trim()
        .parse()
        .map_err(|_| ParseSettingError::new("milliseconds", "a number >= 0", s))?;
    Duration::try_from_secs_f64(ms / 1000.0)
        .map_err(|_| ParseSettingError::new("milliseconds", "a number >= 0", s))
}

/// Splits `s` on commas into exactly `N` fields (or `N + 1` when `optional_last`).
fn fields<'a>(
    s: &'a str,
    n: usize,
    optional_last: bool,
    what: &'static str,
    expected: &'static str,
) -> Result<Vec<&'a str>, ParseSettingError> {
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    if parts.len() == n || (optional_last && parts.len() == n + 1) {
        Ok(parts)
    } else {
        Err(ParseSettingError::new(what, expected, s))
    }
}

/// Bursty loss: a Gilbert–Elliott chain that steps once per datagram.
///
/// Its long-run loss rate is `(p_bg * loss_good + p_gb * loss_bad) / (p_gb + p_bg)`; the mean
/// stay in the bad state is `1 / p_bg` datagrams.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GilbertElliott {
    /// Probability of moving from the good to the bad state after a datagram.
    pub good_to_bad: Probability,
    /// Probability of moving from the bad to the good state after a datagram.
    pub bad_to_good: Probability,
    /// Loss probability while in the good state.
    pub loss_good: Probability,
    /// Loss probability while in the bad state.
    pub loss_bad: Probability,
}

impl FromStr for GilbertElliott {
    type Err = ParseSettingError;

    /// `P_GB,P_BG,LOSS_BAD[,LOSS_GOOD]`; `LOSS_GOOD` defaults to 0.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const EXPECTED: &str = "P_GB,P_BG,LOSS_BAD[,LOSS_GOOD], each a probability";
        let err = || ParseSettingError::new("burst loss", EXPECTED, s);
        let f = fields(s, 3, true, "burst loss", EXPECTED)?;
        let p = |i: usize| f[i].parse::<Probability>().map_err(|_| err());
        Ok(Self {
            good_to_bad: p(0)?,
            bad_to_good: p(1)?,
            loss_bad: p(2)?,
            loss_good: if f.len() == 4 {
                p(3)?
            } else {
                Probability::NEVER
            },
        })
    }
}

/// The distribution of the jitter added to the fixed delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum JitterShape {
    /// Uniform in `-spread..=spread`.
    #[default]
    Uniform,
    /// Normal with mean 0 and standard deviation `spread` (unbounded; the total delay is
    /// clamped at zero).
    Normal,
}

/// Random variation of the delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Jitter {
    /// Half-width (uniform) or standard deviation (normal); zero disables jitter.
    pub spread: Duration,
    /// The distribution.
    pub shape: JitterShape,
}

impl FromStr for Jitter {
    type Err = ParseSettingError;

    /// `MS` or `MS,uniform` or `MS,normal`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const EXPECTED: &str = "MS[,uniform|normal]";
        let f = fields(s, 1, true, "jitter", EXPECTED)?;
        let shape = match f.get(1).copied() {
            None | Some("uniform") => JitterShape::Uniform,
            Some("normal") => JitterShape::Normal,
            Some(_) => return Err(ParseSettingError::new("jitter", EXPECTED, s)),
        };
        let spread =
            parse_millis(f[0]).map_err(|_| ParseSettingError::new("jitter", EXPECTED, s))?;
        Ok(Self { spread, shape })
    }
}

/// Reordering: some datagrams are held back so that later ones overtake them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reorder {
    /// Fraction of copies held back.
    pub probability: Probability,
    /// The extra delay is uniform in `0..=max_extra`.
    pub max_extra: Duration,
}

impl FromStr for Reorder {
    type Err = ParseSettingError;

    /// `P,MS`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const EXPECTED: &str = "P,MS (a probability and the largest extra delay in ms)";
        let err = || ParseSettingError::new("reorder", EXPECTED, s);
        let f = fields(s, 2, false, "reorder", EXPECTED)?;
        Ok(Self {
            probability: f[0].parse().map_err(|_| err())?,
            max_extra: parse_millis(f[1]).map_err(|_| err())?,
        })
    }
}

/// Corruption: some datagrams get a few bytes changed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Corrupt {
    /// Fraction of datagrams corrupted.
    pub probability: Probability,
    /// A corrupted datagram gets between 1 and this many distinct bytes changed (fewer when
    /// it is shorter).
    pub max_bytes: NonZeroUsize,
}

impl FromStr for Corrupt {
    type Err = ParseSettingError;

    /// `P,BYTES`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const EXPECTED: &str = "P,BYTES (a probability and the most bytes changed, >= 1)";
        let err = || ParseSettingError::new("corrupt", EXPECTED, s);
        let f = fields(s, 2, false, "corrupt", EXPECTED)?;
        Ok(Self {
            probability: f[0].parse().map_err(|_| err())?,
            max_bytes: f[1].parse().map_err(|_| err())?,
        })
    }
}

/// A token-bucket rate limit with a bounded FIFO in front of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// The link rate.
    pub bits_per_second: NonZeroU64,
    /// The most bytes that may wait for tokens; a copy that would exceed it is tail-dropped.
    /// Zero means nothing waits: a copy passes only when the bucket holds its size.
    pub queue_bytes: u64,
}

/// How many bytes the bucket holds when full: the burst the link passes at once after being
/// idle. One Ethernet-sized frame, so an idle link sends one datagram without waiting and then
/// paces at the rate, as a serialising link would.
pub const BUCKET_DEPTH_BYTES: u64 = 1514;

/// A scheduled link cut, relative to the start of the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CutWindow {
    /// When the cut starts, after the model's start.
    pub after: Duration,
    /// How long it lasts.
    pub length: Duration,
}

/// What one direction of the link does to datagrams. The default is a perfect link.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LaneSettings {
    /// Independent random loss.
    pub loss: Probability,
    /// Bursty loss, applied before `loss`.
    pub burst: Option<GilbertElliott>,
    /// Fixed one-way delay.
    pub delay: Duration,
    /// Variation of the delay.
    pub jitter: Jitter,
    /// Extra delay for a fraction of copies.
    pub reorder: Option<Reorder>,
    /// Probability of sending a second copy.
    pub duplicate: Probability,
    /// Corruption of a fraction of datagrams.
    pub corrupt: Option<Corrupt>,
    /// Link rate and queue; `None` is an infinitely fast link.
    pub rate: Option<RateLimit>,
}

/// The whole link: both directions and the scheduled cut.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Settings {
    /// Client → upstream.
    pub up: LaneSettings,
    /// Upstream → client.
    pub down: LaneSettings,
    /// A cut of both directions at a fixed time after the start, if any.
    pub cut: Option<CutWindow>,
}

/// Why a datagram (or its duplicate) was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// The link was cut.
    Cut,
    /// The Gilbert–Elliott chain lost it.
    Burst,
    /// Independent random loss.
    Loss,
    /// The rate limiter's queue was full.
    Queue,
}

/// When the copies of a forwarded datagram leave the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Departures {
    /// When the datagram leaves.
    pub at: Instant,
    /// When its duplicate leaves, if one was made and not tail-dropped.
    pub duplicate_at: Option<Instant>,
}

/// The model's decision for one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing leaves.
    Drop(DropReason),
    /// The datagram (its bytes possibly corrupted in place) leaves at these times.
    Send(Departures),
}

/// What one direction of the model has decided so far. Drops count copies; a datagram
/// counts in `received` once however many copies it makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct LaneStats {
    /// Datagrams handed to the model.
    pub received: u64,
    /// Dropped while the link was cut.
    pub dropped_cut: u64,
    /// Dropped by the Gilbert–Elliott chain.
    pub dropped_burst: u64,
    /// Dropped by independent random loss.
    pub dropped_loss: u64,
    /// Copies tail-dropped by the rate limiter's queue.
    pub dropped_queue: u64,
    /// Duplicates made (including any later tail-dropped).
    pub duplicated: u64,
    /// Datagrams whose bytes were changed.
    pub corrupted: u64,
    /// Copies given the extra reordering delay.
    pub reordered: u64,
}

/// The token bucket's state. Tokens are bytes and go negative while copies wait: `-tokens`
/// is the number of bytes queued behind the bucket.
#[derive(Debug, Clone)]
struct TokenBucket {
    /// Refill rate.
    bytes_per_second: f64,
    /// FIFO bound, in bytes.
    queue_bytes: f64,
    /// Bytes available (negative: owed by queued copies).
    tokens: f64,
    /// When `tokens` was last brought up to date.
    updated: Instant,
}

impl TokenBucket {
    fn new(limit: RateLimit, start: Instant) -> Self {
        Self {
            bytes_per_second: limit.bits_per_second.get() as f64 / 8.0,
            queue_bytes: limit.queue_bytes as f64,
            tokens: BUCKET_DEPTH_BYTES as f64,
            updated: start,
        }
    }

    /// When a copy of `len` bytes arriving at `now` leaves the bucket, or `None` when the
    /// queue cannot take it.
    fn admit(&mut self, now: Instant, len: usize) -> Option<Instant> {
        // An arrival earlier than the last one (a caller's clock going back) refills nothing.
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.updated = self.updated.max(now);
        self.tokens =
            (self.tokens + elapsed * self.bytes_per_second).min(BUCKET_DEPTH_BYTES as f64);
        let owed = len as f64 - self.tokens;
        if owed > 0.0 && owed > self.queue_bytes {
            return None;
        }
        self.tokens -= len as f64;
        let wait = if owed > 0.0 {
            Duration::from_secs_f64(owed / self.bytes_per_second)
        } else {
            Duration::ZERO
        };
        Some(self.updated + wait)
    }
}

/// One direction of the link.
#[derive(Debug, Clone)]
struct Lane {
    /// What this direction does.
    settings: LaneSettings,
    /// Every random decision of this direction, in arrival order.
    rng: SmallRng,
    /// The Gilbert–Elliott chain's state: `true` in the bad state.
    bad: bool,
    /// Present when `settings.rate` is.
    bucket: Option<TokenBucket>,
    /// Decisions so far.
    stats: LaneStats,
}

impl Lane {
    fn new(settings: LaneSettings, seed: u64, start: Instant) -> Self {
        Self {
            settings,
            rng: SmallRng::seed_from_u64(seed),
            bad: false,
            bucket: settings.rate.map(|r| TokenBucket::new(r, start)),
            stats: LaneStats::default(),
        }
    }

    fn handle(&mut self, now: Instant, cut: bool, payload: &mut [u8]) -> Verdict {
        self.stats.received += 1;
        if cut {
            self.stats.dropped_cut += 1;
            return Verdict::Drop(DropReason::Cut);
        }
        if let Some(ge) = self.settings.burst {
            let loss = if self.bad { ge.loss_bad } else { ge.loss_good };
            let lost = loss.happens(&mut self.rng);
            let step = if self.bad {
                ge.bad_to_good
            } else {
                ge.good_to_bad
            };
            if step.happens(&mut self.rng) {
                self.bad = !self.bad;
            }
            if lost {
                self.stats.dropped_burst += 1;
                return Verdict::Drop(DropReason::Burst);
            }
        }
        if self.settings.loss.happens(&mut self.rng) {
            self.stats.dropped_loss += 1;
            return Verdict::Drop(DropReason::Loss);
        }
        // (No let-chains: the crate's rust-version is 1.85.)
        if let Some(corrupt) = self.settings.corrupt {
            if !payload.is_empty() && corrupt.probability.happens(&mut self.rng) {
                self.corrupt(payload, corrupt.max_bytes);
                self.stats.corrupted += 1;
            }
        }
        let duplicate = self.settings.duplicate.happens(&mut self.rng);
        let Some(at) = self.depart(now, payload.len()) else {
            return Verdict::Drop(DropReason::Queue);
        };
        let duplicate_at = if duplicate {
            self.stats.duplicated += 1;
            self.depart(now, payload.len())
        } else {
            None
        };
        Verdict::Send(Departures { at, duplicate_at })
    }

    /// Changes 1..=max distinct bytes of a non-empty `payload`.
    fn corrupt(&mut self, payload: &mut [u8], max: NonZeroUsize) {
        let count = self.rng.random_range(1..=max.get().min(payload.len()));
        // Few bytes out of many: drawing again on a repeat is cheaper than a shuffle, and
        // `count <= payload.len()` guarantees it terminates. (One small allocation, only for
        // corrupted datagrams.)
        let mut chosen: Vec<usize> = Vec::with_capacity(count);
        while chosen.len() < count {
            let i = self.rng.random_range(0..payload.len());
            if !chosen.contains(&i) {
                chosen.push(i);
                payload[i] ^= self.rng.random_range(1..=u8::MAX);
            }
        }
    }

    /// When one copy of `len` bytes arriving at `now` leaves the link, or `None` (counted)
    /// when the rate limiter tail-drops it.
    fn depart(&mut self, now: Instant, len: usize) -> Option<Instant> {
        let mut at = match &mut self.bucket {
            Some(bucket) => match bucket.admit(now, len) {
                Some(at) => at,
                None => {
                    self.stats.dropped_queue += 1;
                    return None;
                }
            },
            None => now,
        };
        at += self.delay();
        if let Some(reorder) = self.settings.reorder {
            if reorder.probability.happens(&mut self.rng) {
                self.stats.reordered += 1;
                let max = reorder.max_extra.as_secs_f64();
                if max > 0.0 {
                    at += Duration::from_secs_f64(self.rng.random_range(0.0..=max));
                }
            }
        }
        Some(at)
    }

    /// The fixed delay plus one jitter draw, never negative.
    fn delay(&mut self) -> Duration {
        let base = self.settings.delay.as_secs_f64();
        let spread = self.settings.jitter.spread.as_secs_f64();
        if spread == 0.0 {
            return self.settings.delay;
        }
        let offset = match self.settings.jitter.shape {
            JitterShape::Uniform => self.rng.random_range(-spread..=spread),
            JitterShape::Normal => spread * standard_normal(&mut self.rng),
        };
        Duration::from_secs_f64((base + offset).max(0.0))
    }
}

/// One draw from N(0, 1) by the Box–Muller transform (two uniforms, one normal; the second
/// normal is thrown away to keep the generator's use per datagram simple).
fn standard_normal(rng: &mut SmallRng) -> f64 {
    // `1 - u` is in (0, 1], so the logarithm is finite.
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// The link in both directions: settings, generators, state and counters.
#[derive(Debug, Clone)]
pub struct Impairment {
    /// Client → upstream.
    up: Lane,
    /// Upstream → client.
    down: Lane,
    /// The manual cut ([`Impairment::set_cut`]).
    cut: bool,
    /// The scheduled cut, as absolute times: `start..end`.
    cut_window: Option<(Instant, Instant)>,
}

/// Mixed into the seed of the down direction so the two directions draw different sequences.
const DOWN_SEED_MIX: u64 = 0x9E37_79B9_7F4A_7C15;

impl Impairment {
    /// A model of the link in `settings`, its randomness from `seed`, started at `start` (the
    /// origin of [`Settings::cut`] and the rate limiter's clock).
    pub fn new(settings: &Settings, seed: u64, start: Instant) -> Self {
        Self {
            up: Lane::new(settings.up, seed, start),
            down: Lane::new(settings.down, seed ^ DOWN_SEED_MIX, start),
            cut: false,
            cut_window: settings
                .cut
                .map(|w| (start + w.after, start + w.after + w.length)),
        }
    }

    /// Decides what happens to one datagram arriving at `now` in `direction`. Corruption
    /// changes `payload` in place; a duplicate carries the same bytes.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        direction: Direction,
        payload: &mut [u8],
    ) -> Verdict {
        let cut = self.is_cut(now);
        self.lane_mut(direction).handle(now, cut, payload)
    }

    /// Cuts (`true`) or restores (`false`) the link by hand. A scheduled cut applies on top.
    pub fn set_cut(&mut self, cut: bool) {
        self.cut = cut;
    }

    /// Whether a datagram arriving at `now` is dropped as cut.
    pub fn is_cut(&self, now: Instant) -> bool {
        self.cut
            || self
                .cut_window
                .is_some_and(|(start, end)| start <= now && now < end)
    }

    /// The decisions so far in `direction`.
    pub fn stats(&self, direction: Direction) -> LaneStats {
        match direction {
            Direction::Up => self.up.stats,
            Direction::Down => self.down.stats,
        }
    }

    fn lane_mut(&mut self, direction: Direction) -> &mut Lane {
        match direction {
            Direction::Up => &mut self.up,
            Direction::Down => &mut self.down,
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Up => "up",
            Direction::Down => "down",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const N: usize = 100_000;

    fn p(x: f64) -> Probability {
        Probability::new(x).unwrap()
    }

    fn model(up: LaneSettings, seed: u64) -> (Impairment, Instant) {
        let start = Instant::now();
        let settings = Settings {
            up,
            ..Settings::default()
        };
        (Impairment::new(&settings, seed, start), start)
    }

    /// Sends `n` datagrams of `len` bytes up, `gap` apart, and returns the verdicts.
    fn run(
        m: &mut Impairment,
        start: Instant,
        n: usize,
        len: usize,
        gap: Duration,
    ) -> Vec<Verdict> {
        let mut buf = vec![0u8; len];
        (0..n)
            .map(|i| m.handle_datagram(start + gap * i as u32, Direction::Up, &mut buf))
            .collect()
    }

    fn lost(v: &Verdict) -> bool {
        matches!(v, Verdict::Drop(_))
    }

    #[test]
    fn a_default_link_is_perfect() {
        let (mut m, t0) = model(LaneSettings::default(), 1);
        let mut buf = [7u8; 100];
        let v = m.handle_datagram(t0, Direction::Up, &mut buf);
        assert_eq!(
            v,
            Verdict::Send(Departures {
                at: t0,
                duplicate_at: None
            })
        );
        assert_eq!(buf, [7u8; 100]);
        assert_eq!(m.stats(Direction::Up).received, 1);
    }

    #[test]
    fn random_loss_matches_its_probability() {
        let (mut m, t0) = model(
            LaneSettings {
                loss: p(0.1),
                ..Default::default()
            },
            7,
        );
        let verdicts = run(&mut m, t0, N, 100, Duration::from_micros(10));
        let lost = verdicts.iter().filter(|v| lost(v)).count();
        // Binomial(100k, 0.1): sd ~95; 5 sd is 0.0048.
        let rate = lost as f64 / N as f64;
        assert!((rate - 0.1).abs() < 0.005, "loss rate {rate}");
        let s = m.stats(Direction::Up);
        assert_eq!(s.dropped_loss, lost as u64);
        assert_eq!(s.received, N as u64);
        assert!(verdicts.contains(&Verdict::Drop(DropReason::Loss)));
    }

    /// Lengths of the runs of consecutive drops.
    fn loss_runs(verdicts: &[Verdict]) -> Vec<usize> {
        let mut runs = Vec::new();
        let mut current = 0;
        for v in verdicts {
            if lost(v) {
                current += 1;
            } else if current > 0 {
                runs.push(current);
                current = 0;
            }
        }
        runs
    }

    #[test]
    fn burst_loss_comes_in_runs_at_its_long_run_rate() {
        let ge = GilbertElliott {
            good_to_bad: p(0.01),
            bad_to_good: p(0.25),
            loss_good: Probability::NEVER,
            loss_bad: p(1.0),
        };
        let (mut m, t0) = model(
            LaneSettings {
                burst: Some(ge),
                ..Default::default()
            },
            3,
        );
        let verdicts = run(&mut m, t0, N, 100, Duration::from_micros(10));
        let lost_count = verdicts.iter().filter(|v| lost(v)).count();
        // Stationary bad share 0.01 / 0.26 = 3.85%; runs are correlated, so a loose bound.
        let rate = lost_count as f64 / N as f64;
        assert!((rate - 0.0385).abs() < 0.01, "burst loss rate {rate}");
        // Mean bad stay is 1 / 0.25 = 4 datagrams; independent loss at 3.85% would give 1.04.
        let runs = loss_runs(&verdicts);
        let mean = runs.iter().sum::<usize>() as f64 / runs.len() as f64;
        assert!((3.0..5.0).contains(&mean), "mean run {mean}");
        assert_eq!(m.stats(Direction::Up).dropped_burst, lost_count as u64);

        // Same rate, independent: runs of about one.
        let (mut m, t0) = model(
            LaneSettings {
                loss: p(rate),
                ..Default::default()
            },
            3,
        );
        let runs = loss_runs(&run(&mut m, t0, N, 100, Duration::from_micros(10)));
        let mean = runs.iter().sum::<usize>() as f64 / runs.len() as f64;
        assert!(mean < 1.2, "independent mean run {mean}");
    }

    fn departure(v: &Verdict) -> Instant {
        match v {
            Verdict::Send(d) => d.at,
            Verdict::Drop(r) => panic!("dropped: {r:?}"),
        }
    }

    #[test]
    fn uniform_jitter_stays_within_its_bounds() {
        let (mut m, t0) = model(
            LaneSettings {
                delay: Duration::from_millis(50),
                jitter: Jitter {
                    spread: Duration::from_millis(10),
                    shape: JitterShape::Uniform,
                },
                ..Default::default()
            },
            11,
        );
        let gap = Duration::from_micros(100);
        let delays: Vec<Duration> = run(&mut m, t0, N, 100, gap)
            .iter()
            .enumerate()
            .map(|(i, v)| departure(v) - (t0 + gap * i as u32))
            .collect();
        let (min, max) = (delays.iter().min().unwrap(), delays.iter().max().unwrap());
        assert!(*min >= Duration::from_millis(40), "{min:?}");
        assert!(*max <= Duration::from_millis(60), "{max:?}");
        // And it uses the whole range.
        assert!(*min < Duration::from_millis(41) && *max > Duration::from_millis(59));
    }

    #[test]
    fn normal_jitter_has_its_mean_and_spread_and_never_goes_negative() {
        let (mut m, t0) = model(
            LaneSettings {
                delay: Duration::from_millis(20),
                jitter: Jitter {
                    spread: Duration::from_millis(5),
                    shape: JitterShape::Normal,
                },
                ..Default::default()
            },
            5,
        );
        let ms: Vec<f64> = run(&mut m, t0, N, 100, Duration::ZERO)
            .iter()
            .map(|v| (departure(v) - t0).as_secs_f64() * 1000.0)
            .collect();
        let mean = ms.iter().sum::<f64>() / N as f64;
        let sd = (ms.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / N as f64).sqrt();
        assert!((mean - 20.0).abs() < 0.1, "mean {mean}");
        assert!((sd - 5.0).abs() < 0.1, "sd {sd}");

        // A spread larger than the delay is clamped at zero, never below.
        let (mut m, t0) = model(
            LaneSettings {
                delay: Duration::from_millis(1),
                jitter: Jitter {
                    spread: Duration::from_millis(10),
                    shape: JitterShape::Normal,
                },
                ..Default::default()
            },
            5,
        );
        let at_zero = run(&mut m, t0, 1000, 100, Duration::ZERO)
            .iter()
            .filter(|v| departure(v) == t0)
            .count();
        assert!(at_zero > 300, "{at_zero}");
    }

    #[test]
    fn reordering_holds_some_datagrams_back_so_later_ones_overtake() {
        let (mut m, t0) = model(
            LaneSettings {
                delay: Duration::from_millis(10),
                reorder: Some(Reorder {
                    probability: p(0.05),
                    max_extra: Duration::from_millis(20),
                }),
                ..Default::default()
            },
            13,
        );
        let gap = Duration::from_millis(1);
        let departures: Vec<Instant> = run(&mut m, t0, 10_000, 100, gap)
            .iter()
            .map(departure)
            .collect();
        let overtaken = departures.windows(2).filter(|w| w[1] < w[0]).count();
        let reordered = m.stats(Direction::Up).reordered;
        assert!((400..600).contains(&reordered), "{reordered}");
        // A hold-back of more than 1 ms (most of them) is overtaken by the next datagram.
        assert!(
            overtaken as u64 > reordered * 8 / 10,
            "{overtaken} of {reordered}"
        );
        for (i, at) in departures.iter().enumerate() {
            let d = *at - (t0 + gap * i as u32);
            assert!(d >= Duration::from_millis(10) && d <= Duration::from_millis(30));
        }
    }

    #[test]
    fn duplicates_are_made_and_counted() {
        let (mut m, t0) = model(
            LaneSettings {
                duplicate: p(0.2),
                ..Default::default()
            },
            17,
        );
        let verdicts = run(&mut m, t0, N, 100, Duration::ZERO);
        let twice = verdicts
            .iter()
            .filter(|v| matches!(v, Verdict::Send(d) if d.duplicate_at.is_some()))
            .count();
        let rate = twice as f64 / N as f64;
        assert!((rate - 0.2).abs() < 0.007, "{rate}");
        assert_eq!(m.stats(Direction::Up).duplicated, twice as u64);
    }

    #[test]
    fn corruption_changes_between_one_and_k_bytes() {
        let (mut m, t0) = model(
            LaneSettings {
                corrupt: Some(Corrupt {
                    probability: p(0.1),
                    max_bytes: NonZeroUsize::new(3).unwrap(),
                }),
                ..Default::default()
            },
            19,
        );
        let original: Vec<u8> = (0..200u32).map(|i| i as u8).collect();
        let mut changed_counts = [0usize; 4];
        for _ in 0..N {
            let mut buf = original.clone();
            m.handle_datagram(t0, Direction::Up, &mut buf);
            let changed = buf.iter().zip(&original).filter(|(a, b)| a != b).count();
            assert!(changed <= 3, "{changed}");
            changed_counts[changed] += 1;
        }
        let corrupted = N - changed_counts[0];
        let rate = corrupted as f64 / N as f64;
        assert!((rate - 0.1).abs() < 0.005, "{rate}");
        assert_eq!(m.stats(Direction::Up).corrupted, corrupted as u64);
        assert!(
            changed_counts[1..].iter().all(|&c| c > 2000),
            "{changed_counts:?}"
        );

        // A one-byte datagram gets that byte changed; an empty one is left alone.
        let (mut m, t0) = model(
            LaneSettings {
                corrupt: Some(Corrupt {
                    probability: p(1.0),
                    max_bytes: NonZeroUsize::new(8).unwrap(),
                }),
                ..Default::default()
            },
            19,
        );
        let mut one = [0u8];
        m.handle_datagram(t0, Direction::Up, &mut one);
        assert_ne!(one, [0u8]);
        m.handle_datagram(t0, Direction::Up, &mut []);
        assert_eq!(m.stats(Direction::Up).corrupted, 1);
    }

    #[test]
    fn the_rate_limiter_paces_and_tail_drops() {
        // 8 Mbit/s = 1 byte per microsecond; 1000-byte datagrams take 1 ms each.
        let limit = RateLimit {
            bits_per_second: NonZeroU64::new(8_000_000).unwrap(),
            queue_bytes: 10_000,
        };
        let (mut m, t0) = model(
            LaneSettings {
                rate: Some(limit),
                ..Default::default()
            },
            23,
        );
        // A burst of 30 at once: the first uses the full bucket (1514 bytes, leaving 514),
        // the next ones wait 0.486 ms, 1.486 ms, ... until 10 000 bytes wait.
        let verdicts = run(&mut m, t0, 30, 1000, Duration::ZERO);
        let sent: Vec<Instant> = verdicts
            .iter()
            .filter_map(|v| match v {
                Verdict::Send(d) => Some(d.at),
                Verdict::Drop(_) => None,
            })
            .collect();
        assert_eq!(sent[0], t0);
        for w in sent[1..].windows(2) {
            let gap = (w[1] - w[0]).as_secs_f64();
            assert!((gap - 0.001).abs() < 1e-6, "{gap}");
        }
        // 1 at once + 10 waiting (the 11th would owe 10 486 bytes).
        assert_eq!(sent.len(), 11);
        assert!(
            verdicts[11..]
                .iter()
                .all(|v| *v == Verdict::Drop(DropReason::Queue))
        );
        assert_eq!(m.stats(Direction::Up).dropped_queue, 19);

        // Once the queue drains, the link takes traffic again at its rate.
        let later = t0 + Duration::from_millis(20);
        let mut buf = [0u8; 1000];
        assert!(matches!(
            m.handle_datagram(later, Direction::Up, &mut buf),
            Verdict::Send(d) if d.at == later
        ));

        // A steady 16 Mbit/s offered to an 8 Mbit/s link: about half gets through.
        let (mut m, t0) = model(
            LaneSettings {
                rate: Some(limit),
                ..Default::default()
            },
            23,
        );
        let verdicts = run(&mut m, t0, 10_000, 1000, Duration::from_micros(500));
        let passed = verdicts.iter().filter(|v| !lost(v)).count();
        assert!((4990..5030).contains(&passed), "{passed}");
    }

    #[test]
    fn a_cut_drops_everything_both_ways_until_restored() {
        let settings = Settings {
            up: LaneSettings::default(),
            down: LaneSettings::default(),
            cut: Some(CutWindow {
                after: Duration::from_secs(10),
                length: Duration::from_secs(5),
            }),
        };
        let t0 = Instant::now();
        let mut m = Impairment::new(&settings, 29, t0);
        let mut buf = [0u8; 10];
        let mut at = |m: &mut Impairment, secs: f64, dir| {
            m.handle_datagram(t0 + Duration::from_secs_f64(secs), dir, &mut buf)
        };
        assert!(!lost(&at(&mut m, 9.9, Direction::Up)));
        assert_eq!(
            at(&mut m, 10.0, Direction::Up),
            Verdict::Drop(DropReason::Cut)
        );
        assert_eq!(
            at(&mut m, 14.9, Direction::Down),
            Verdict::Drop(DropReason::Cut)
        );
        assert!(!lost(&at(&mut m, 15.0, Direction::Down)));

        m.set_cut(true);
        for i in 0..1000 {
            assert_eq!(
                at(&mut m, 20.0 + i as f64, Direction::Up),
                Verdict::Drop(DropReason::Cut)
            );
        }
        m.set_cut(false);
        assert!(!lost(&at(&mut m, 2000.0, Direction::Up)));
        assert_eq!(m.stats(Direction::Up).dropped_cut, 1001);
        assert_eq!(m.stats(Direction::Down).dropped_cut, 1);
    }

    fn everything() -> LaneSettings {
        LaneSettings {
            loss: p(0.05),
            burst: Some(GilbertElliott {
                good_to_bad: p(0.01),
                bad_to_good: p(0.3),
                loss_good: p(0.001),
                loss_bad: p(0.7),
            }),
            delay: Duration::from_millis(30),
            jitter: Jitter {
                spread: Duration::from_millis(5),
                shape: JitterShape::Normal,
            },
            reorder: Some(Reorder {
                probability: p(0.02),
                max_extra: Duration::from_millis(10),
            }),
            duplicate: p(0.01),
            corrupt: Some(Corrupt {
                probability: p(0.01),
                max_bytes: NonZeroUsize::new(4).unwrap(),
            }),
            rate: Some(RateLimit {
                bits_per_second: NonZeroU64::new(50_000_000).unwrap(),
                queue_bytes: 30_000,
            }),
        }
    }

    /// Verdicts and final bytes of 10k datagrams, alternating directions.
    fn trace(seed: u64, with_up_traffic: bool) -> Vec<(Verdict, Vec<u8>)> {
        let settings = Settings {
            up: everything(),
            down: everything(),
            cut: None,
        };
        let t0 = Instant::now();
        let mut m = Impairment::new(&settings, seed, t0);
        let mut out = Vec::new();
        for i in 0..10_000u32 {
            let now = t0 + Duration::from_micros(100) * i;
            if with_up_traffic {
                let mut buf = vec![i as u8; 1200];
                m.handle_datagram(now, Direction::Up, &mut buf);
            }
            let mut buf = vec![i as u8; 1200];
            let v = m.handle_datagram(now, Direction::Down, &mut buf);
            // Times relative to t0, so two runs compare.
            out.push((v, buf));
        }
        out
    }

    fn relative(trace: &[(Verdict, Vec<u8>)], t0: Instant) -> Vec<(Option<Duration>, &[u8])> {
        trace
            .iter()
            .map(|(v, b)| match v {
                Verdict::Send(d) => (Some(d.at - t0), b.as_slice()),
                Verdict::Drop(_) => (None, b.as_slice()),
            })
            .collect()
    }

    #[test]
    fn the_same_seed_gives_the_same_decisions() {
        let a = trace(42, true);
        let b = trace(42, true);
        let c = trace(43, true);
        // Each trace has its own t0; compare drops and bytes exactly, delays relative to the
        // first departure of each.
        let first = |t: &[(Verdict, Vec<u8>)]| {
            t.iter()
                .find_map(|(v, _)| match v {
                    Verdict::Send(d) => Some(d.at),
                    Verdict::Drop(_) => None,
                })
                .unwrap()
        };
        let (ra, rb, rc) = (
            relative(&a, first(&a)),
            relative(&b, first(&b)),
            relative(&c, first(&c)),
        );
        assert_eq!(ra, rb);
        assert_ne!(ra, rc);
        // The directions draw from their own generators: traffic up does not change what
        // happens down.
        let d = trace(42, false);
        assert_eq!(ra, relative(&d, first(&d)));
    }

    #[test]
    fn settings_parse_from_their_command_line_forms() {
        assert_eq!("0.25".parse(), Ok(p(0.25)));
        assert_eq!("5%".parse(), Ok(p(0.05)));
        for bad in ["1.5", "-0.1", "NaN", "x", "150%"] {
            assert!(bad.parse::<Probability>().is_err(), "{bad}");
        }
        assert_eq!(
            "0.01,0.3,0.8".parse(),
            Ok(GilbertElliott {
                good_to_bad: p(0.01),
                bad_to_good: p(0.3),
                loss_bad: p(0.8),
                loss_good: Probability::NEVER,
            })
        );
        assert_eq!(
            "0.01,0.3,0.8,0.001"
                .parse::<GilbertElliott>()
                .unwrap()
                .loss_good,
            p(0.001)
        );
        assert!("0.01,0.3".parse::<GilbertElliott>().is_err());
        assert_eq!(
            "2.5,normal".parse(),
            Ok(Jitter {
                spread: Duration::from_micros(2500),
                shape: JitterShape::Normal
            })
        );
        assert_eq!("3".parse::<Jitter>().unwrap().shape, JitterShape::Uniform);
        assert!("3,pareto".parse::<Jitter>().is_err());
        assert_eq!(
            "0.1,25".parse(),
            Ok(Reorder {
                probability: p(0.1),
                max_extra: Duration::from_millis(25)
            })
        );
        assert_eq!("0.1,2".parse::<Corrupt>().unwrap().max_bytes.get(), 2);
        assert!("0.1,0".parse::<Corrupt>().is_err());
        assert!(parse_millis("-1").is_err());
        assert_eq!(parse_millis("0.5"), Ok(Duration::from_micros(500)));
    }
}
