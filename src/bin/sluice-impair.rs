//! `sluice-impair`: a seeded UDP relay that impairs traffic like a WAN link (see
//! `sluice::impair`). This file only parses arguments, wires signals and prints the counters.

use std::net::SocketAddr;
use std::num::NonZeroU64;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use ipnet::IpNet;
use sluice::impair::model::{
    Corrupt, CutWindow, GilbertElliott, Jitter, LaneSettings, Probability, RateLimit, Reorder,
    Settings, parse_millis,
};
use sluice::impair::tun_relay::{TunRelay, TunRelayConfig};
use sluice::impair::{CutSwitch, Relay, RelayConfig};
use tokio_util::sync::CancellationToken;

/// Queue bound when `--rate` is given without `--queue`: 100 full-size datagrams, about 60 ms
/// at 20 Mbit/s, a moderately buffered access link.
const DEFAULT_QUEUE_BYTES: u64 = 150_000;

const AFTER_HELP: &str = "\
DIRECTIONS
  Up is client -> upstream, down is upstream -> client (TUN mode: up is towards an --up-to
  network, down is everything else). Every impairment option applies to both directions;
  prefix its value with `up:` or `down:` to set one direction only. Options may repeat and
  apply in order, so `--loss 0.01 --loss down:0.05` loses 1% up and 5% down.

SIGNALS AND OUTPUT
  Once listening, one line `sluice-impair: listening on ADDR` goes to stderr (TUN mode:
  `sluice-impair: impairing packets routed into NAME`, once the device exists).
  SIGUSR1 toggles a cut of both directions (everything dropped while cut).
  SIGTERM or SIGINT: prints the counters as one line of JSON on stdout and exits 0:
  {\"up\":{\"received\":..,\"dropped_cut\":..,\"dropped_burst\":..,\"dropped_loss\":..,
  \"dropped_queue\":..,\"duplicated\":..,\"corrupted\":..,\"reordered\":..,\"forwarded\":..,
  \"send_errors\":..,\"receive_errors\":..,\"dropped_overflow\":..,\"unsent_at_shutdown\":..},
  \"down\":{..},\"clients\":..,\"refused_clients\":..,\"not_ip\":..}

  Same seed, same options, same arrival sequence: same decisions.";

/// Relays UDP from --listen to --upstream and back, impairing it like a WAN link: loss
/// (random and bursty), delay and jitter, reordering, duplication, corruption, a rate limit
/// and link cuts, all decided by a seeded generator. One upstream socket per client address.
///
/// With --tun instead: creates a TUN device, impairs every IP packet routed into it and
/// writes it back into the device (packets to --up-to networks go up, others down), so a
/// routed path without a tunnel can cross the same impairment; see `sluice::impair::tun_relay`
/// for the routes that place it.
#[derive(Parser, Debug)]
#[command(version, after_help = AFTER_HELP)]
struct Cli {
    /// Address clients send to.
    #[arg(
        long,
        value_name = "ADDR",
        required_unless_present = "tun",
        conflicts_with = "tun"
    )]
    listen: Option<SocketAddr>,
    /// Address datagrams from clients are forwarded to.
    #[arg(
        long,
        value_name = "ADDR",
        required_unless_present = "tun",
        conflicts_with = "tun"
    )]
    upstream: Option<SocketAddr>,
    /// TUN mode: the device to create (needs CAP_NET_ADMIN; bring it up and route into it).
    #[arg(long, value_name = "NAME", requires = "up_to")]
    tun: Option<String>,
    /// TUN mode: packets to this network go up, all others down (repeatable).
    #[arg(long, value_name = "CIDR")]
    up_to: Vec<IpNet>,
    /// TUN mode: the device's MTU.
    #[arg(long, value_name = "BYTES", default_value_t = 1500, requires = "tun")]
    mtu: u16,
    /// Seed of every random decision.
    #[arg(long, value_name = "N")]
    seed: u64,
    /// Independent loss probability (0.01 or 1%).
    #[arg(long, value_name = "[DIR:]P")]
    loss: Vec<Scoped<Probability>>,
    /// Gilbert–Elliott bursty loss: P(good→bad), P(bad→good) per datagram, loss probability
    /// in the bad state (and in the good state, default 0).
    #[arg(long, value_name = "[DIR:]P_GB,P_BG,LOSS_BAD[,LOSS_GOOD]")]
    burst_loss: Vec<Scoped<GilbertElliott>>,
    /// Fixed one-way delay in milliseconds.
    #[arg(long, value_name = "[DIR:]MS")]
    delay: Vec<Scoped<Millis>>,
    /// Jitter in milliseconds: half-width of a uniform spread (default) or the standard
    /// deviation of a normal one; the total delay never goes below zero.
    #[arg(long, value_name = "[DIR:]MS[,uniform|normal]")]
    jitter: Vec<Scoped<Jitter>>,
    /// Hold back a fraction P of datagrams by an extra delay uniform in 0..=MS, so later
    /// ones overtake them.
    #[arg(long, value_name = "[DIR:]P,MS")]
    reorder: Vec<Scoped<Reorder>>,
    /// Probability of sending a datagram twice.
    #[arg(long, value_name = "[DIR:]P")]
    duplicate: Vec<Scoped<Probability>>,
    /// Corrupt a fraction P of datagrams by changing 1..=BYTES random bytes.
    #[arg(long, value_name = "[DIR:]P,BYTES")]
    corrupt: Vec<Scoped<Corrupt>>,
    /// Link rate in Mbit/s (token bucket; fractions allowed).
    #[arg(long, value_name = "[DIR:]MBIT")]
    rate: Vec<Scoped<Mbit>>,
    /// Bytes that may wait behind the rate limit before tail drop [default: 150000].
    #[arg(long, value_name = "[DIR:]BYTES")]
    queue: Vec<Scoped<u64>>,
    /// Cut both directions this many seconds after start (with --cut-for).
    #[arg(long, value_name = "SECS", requires = "cut_for")]
    cut_after: Option<Seconds>,
    /// Length of the scheduled cut in seconds (with --cut-after).
    #[arg(long, value_name = "SECS", requires = "cut_after")]
    cut_for: Option<Seconds>,
}

/// Which directions an option's value applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    Both,
    Up,
    Down,
}

/// An option value with an optional `up:` / `down:` prefix.
#[derive(Debug, Clone)]
struct Scoped<T> {
    scope: Scope,
    value: T,
}

impl<T: FromStr> FromStr for Scoped<T>
where
    T::Err: std::fmt::Display,
{
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (scope, rest) = if let Some(rest) = s.strip_prefix("up:") {
            (Scope::Up, rest)
        } else if let Some(rest) = s.strip_prefix("down:") {
            (Scope::Down, rest)
        } else {
            (Scope::Both, s)
        };
        let value = rest.parse().map_err(|e: T::Err| e.to_string())?;
        Ok(Self { scope, value })
    }
}

/// Milliseconds, as a duration.
#[derive(Debug, Clone, Copy)]
struct Millis(Duration);

impl FromStr for Millis {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_millis(s).map(Millis).map_err(|e| e.to_string())
    }
}

/// Seconds (fractions allowed), as a duration.
#[derive(Debug, Clone, Copy)]
struct Seconds(Duration);

impl FromStr for Seconds {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.trim()
            .parse::<f64>()
            .ok()
            .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
            .map(Seconds)
            .ok_or_else(|| format!("expected seconds >= 0, got {s:?}"))
    }
}

/// A link rate given in Mbit/s, as bits per second.
#[derive(Debug, Clone, Copy)]
struct Mbit(NonZeroU64);

impl FromStr for Mbit {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.trim()
            .parse::<f64>()
            .ok()
            .filter(|m| m.is_finite() && *m > 0.0)
            .and_then(|m| NonZeroU64::new((m * 1e6).round() as u64))
            .map(Mbit)
            .ok_or_else(|| format!("expected a rate in Mbit/s > 0, got {s:?}"))
    }
}

/// Applies each `values` entry whose scope covers `lane`, in order.
fn apply<T: Copy>(
    values: &[Scoped<T>],
    lane: Scope,
    settings: &mut LaneSettings,
    set: impl Fn(&mut LaneSettings, T),
) {
    for v in values {
        if v.scope == Scope::Both || v.scope == lane {
            set(settings, v.value);
        }
    }
}

/// What to run: a UDP relay or a TUN-mode relay.
enum Mode {
    Udp(RelayConfig),
    Tun(TunRelayConfig),
}

impl Cli {
    /// The relay's configuration, or why the options do not make one.
    fn mode(&self) -> anyhow::Result<Mode> {
        let impairment = self.settings()?;
        if let Some(device) = &self.tun {
            return Ok(Mode::Tun(TunRelayConfig {
                device: device.clone(),
                mtu: self.mtu,
                up_to: self.up_to.clone(),
                seed: self.seed,
                impairment,
            }));
        }
        if !self.up_to.is_empty() {
            bail!("--up-to only applies with --tun");
        }
        let (Some(listen), Some(upstream)) = (self.listen, self.upstream) else {
            bail!("give --listen and --upstream (UDP relay), or --tun and --up-to (TUN mode)");
        };
        Ok(Mode::Udp(RelayConfig {
            listen,
            upstream,
            seed: self.seed,
            impairment,
        }))
    }

    /// The impairment both modes apply.
    fn settings(&self) -> anyhow::Result<Settings> {
        let mut lanes = [LaneSettings::default(), LaneSettings::default()];
        for (settings, scope) in lanes.iter_mut().zip([Scope::Up, Scope::Down]) {
            apply(&self.loss, scope, settings, |s, v| s.loss = v);
            apply(&self.burst_loss, scope, settings, |s, v| s.burst = Some(v));
            apply(&self.delay, scope, settings, |s, v| s.delay = v.0);
            apply(&self.jitter, scope, settings, |s, v| s.jitter = v);
            apply(&self.reorder, scope, settings, |s, v| s.reorder = Some(v));
            apply(&self.duplicate, scope, settings, |s, v| s.duplicate = v);
            apply(&self.corrupt, scope, settings, |s, v| s.corrupt = Some(v));
            apply(&self.rate, scope, settings, |s, v| {
                s.rate = Some(RateLimit {
                    bits_per_second: v.0,
                    queue_bytes: DEFAULT_QUEUE_BYTES,
                });
            });
            let mut queue = None;
            for v in &self.queue {
                if v.scope == Scope::Both || v.scope == scope {
                    queue = Some(v.value);
                }
            }
            if let Some(queue_bytes) = queue {
                let name = if scope == Scope::Up { "up" } else { "down" };
                let Some(rate) = &mut settings.rate else {
                    bail!("--queue is set for the {name} direction, which has no --rate");
                };
                rate.queue_bytes = queue_bytes;
            }
        }
        let [up, down] = lanes;
        let cut = match (self.cut_after, self.cut_for) {
            (Some(after), Some(length)) => Some(CutWindow {
                after: after.0,
                length: length.0,
            }),
            _ => None,
        };
        Ok(Settings { up, down, cut })
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice-impair: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The signals the binary answers, installed before the relay says it is ready, so a test
/// that signals right after reading that line never meets the default action (which would
/// kill us without the counters).
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    usr1: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate()).context("installing SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing SIGINT handler")?,
            usr1: signal(SignalKind::user_defined1()).context("installing SIGUSR1 handler")?,
        })
    }

    /// Spawns the task that toggles `cut` on SIGUSR1 and cancels the returned token on
    /// SIGTERM or SIGINT.
    fn watch(mut self, cut: CutSwitch) -> CancellationToken {
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = self.term.recv() => break,
                    _ = self.int.recv() => break,
                    _ = self.usr1.recv() => {
                        let now_cut = cut.toggle();
                        tracing::info!(cut = now_cut, "SIGUSR1: link {}", if now_cut { "cut" } else { "restored" });
                    }
                }
            }
            stop.cancel();
        });
        shutdown
    }
}

/// Runs the relay until SIGTERM or SIGINT, then prints its counters.
fn run(cli: &Cli) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let mode = cli.mode()?;
    // One thread: the relay is one loop; its upstream readers are light.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let stats = runtime.block_on(async {
        let signals = Signals::install()?;
        anyhow::Ok(match mode {
            Mode::Udp(config) => {
                let relay = Relay::bind(config).await?;
                let shutdown = signals.watch(relay.cut_switch());
                eprintln!("sluice-impair: listening on {}", relay.local_addr());
                relay.run(shutdown).await?
            }
            Mode::Tun(config) => {
                let relay = TunRelay::open(config)?;
                let shutdown = signals.watch(relay.cut_switch());
                eprintln!(
                    "sluice-impair: impairing packets routed into {}",
                    relay.name()
                );
                relay.run(shutdown).await
            }
        })
    })?;
    println!(
        "{}",
        serde_json::to_string(&stats).context("encoding the counters")?
    );
    Ok(())
}
