//! The `sluice` command line: parses arguments and calls into the library. Errors are
//! printed as one line with their context and turn into a non-zero exit status.

use std::fmt::Write as _;
use std::fs::DirBuilder;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sluice::config::Settings;
use sluice::core::encoder::Compression;
use sluice::identity;

/// sluice: a WAN optimizer that batches, dedupes and compresses IP packets between sites.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a new private key (key.pem, mode 0600) and self-signed certificate (cert.pem)
    /// into a folder, and print the certificate's fingerprint for the peers' configs.
    Keygen {
        /// Folder to write into; created (mode 0700) if missing. Existing files are never
        /// overwritten.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Print the fingerprint of a PEM certificate, as peers pin it.
    Fingerprint {
        /// The certificate file.
        #[arg(value_name = "CERT.pem")]
        certificate: PathBuf,
    },
    /// Validate a config file, including its key and certificate, and summarise it.
    Check {
        /// The config file.
        #[arg(short = 'c', long = "config", value_name = "FILE")]
        config: PathBuf,
    },
    /// Run the gateway in the foreground until SIGINT or SIGTERM (needs CAP_NET_ADMIN).
    Up {
        /// The config file.
        #[arg(short = 'c', long = "config", value_name = "FILE")]
        config: PathBuf,
    },
    /// Show each peer's state, RTT, LAN and WAN bytes and the savings, from the running
    /// gateway (over its control socket).
    Status {
        /// The config file of the running gateway.
        #[arg(short = 'c', long = "config", value_name = "FILE")]
        config: PathBuf,
    },
    /// As root: build two sites in network namespaces, run two gateways between them, send
    /// real files from this machine through the tunnel and show what crossed the WAN.
    Demo,
    /// Internal to `sluice demo`: receive one TCP stream and print its size and SHA-256.
    #[command(hide = true)]
    DemoSink { addr: std::net::SocketAddr },
    /// Internal to `sluice demo`: send the files listed in LIST over one TCP stream.
    #[command(hide = true)]
    DemoSource {
        addr: std::net::SocketAddr,
        list: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Keygen { out } => keygen(&out),
        Command::Fingerprint { certificate } => fingerprint(&certificate),
        Command::Check { config } => check(&config),
        Command::Up { config } => up(&config),
        Command::Status { config } => status(&config),
        Command::Demo => sluice::demo::run(),
        Command::DemoSink { addr } => sluice::demo::sink(addr),
        Command::DemoSource { addr, list } => sluice::demo::source(addr, &list),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("sluice: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// `sluice keygen`: the fingerprint is the only line on stdout, so scripts can capture it.
fn keygen(out: &Path) -> anyhow::Result<()> {
    if !out.exists() {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(out)
            .with_context(|| format!("cannot create {}", out.display()))?;
    }
    let generated = identity::keygen(out).context("keygen failed")?;
    eprintln!(
        "wrote {} and {}",
        generated.key_path.display(),
        generated.cert_path.display()
    );
    println!("{}", generated.fingerprint);
    Ok(())
}

/// `sluice fingerprint`.
fn fingerprint(certificate: &Path) -> anyhow::Result<()> {
    let cert = identity::load_certificate(certificate)?;
    println!("{}", identity::fingerprint(&cert));
    Ok(())
}

/// `sluice check`.
fn check(config: &Path) -> anyhow::Result<()> {
    let settings = Settings::load(config)?;
    print!("{}", summary(&settings));
    Ok(())
}

/// `sluice up`: logs to stderr (RUST_LOG, default info), runs until SIGINT/SIGTERM.
fn up(config: &Path) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let settings = Settings::load(config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(settings.interface().threads.here())
        .enable_all()
        .thread_name("sluice")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let shutdown = tokio_util::sync::CancellationToken::new();
        let signals = shutdown.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                tracing::error!("cannot install signal handlers");
                return;
            };
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM"),
                _ = int.recv() => tracing::info!("SIGINT"),
            }
            signals.cancel();
        });
        sluice::gateway::run(settings, shutdown).await
    })?;
    // Tasks still parked on sockets must not hold the exit past the 2 s promise.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    Ok(())
}

/// `sluice status`: asks the running gateway over its control socket.
fn status(config: &Path) -> anyhow::Result<()> {
    let settings = Settings::load(config)?;
    let path = settings.interface().control_socket.clone();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let reply = runtime.block_on(sluice::control::request_status(&path));
    if let Err(e) = &reply
        && e.kind() == std::io::ErrorKind::PermissionDenied
    {
        anyhow::bail!(
            "permission denied on the control socket {}: only root (the gateway's user) may use it",
            path.display()
        );
    }
    let report = reply.with_context(|| {
        format!(
            "no running gateway answers on {} (is `sluice up -c {}` running?)",
            path.display(),
            config.display()
        )
    })?;
    print!("{report}");
    Ok(())
}

/// A few lines an operator can compare with what they meant to configure.
fn summary(settings: &Settings) -> String {
    let interface = settings.interface();
    let optimize = settings.optimize();
    let mut out = String::new();
    let join = |items: Vec<String>| items.join(", ");
    // Writing to a String cannot fail.
    let _ = writeln!(out, "{}: ok", settings.file().display());
    let _ = writeln!(
        out,
        "interface {}: {}; listen {}; mtu {}; shards {}; threads {}; routes {}",
        interface.name,
        join(
            interface
                .addresses
                .iter()
                .map(ToString::to_string)
                .collect()
        ),
        interface
            .listen
            .map_or_else(|| "off (dial only)".to_owned(), |a| a.to_string()),
        interface.mtu,
        interface.shards,
        interface.threads,
        if interface.routes { "on" } else { "off" },
    );
    let _ = writeln!(out, "fingerprint {}", interface.fingerprint);
    let _ = writeln!(
        out,
        "optimize: compression {}, zstd level {}, max delay {}",
        match optimize.compression {
            Compression::Auto => "auto",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
            Compression::Off => "off",
        },
        optimize.zstd_level.get(),
        humantime::format_duration(optimize.max_delay),
    );
    for peer in settings.peers() {
        let endpoint = peer
            .endpoint
            .map_or_else(|| "waits to be dialed".to_owned(), |a| format!("dials {a}"));
        let _ = writeln!(
            out,
            "peer {}: {endpoint}; allowed_ips {}",
            peer.name,
            join(peer.allowed_ips.iter().map(ToString::to_string).collect()),
        );
    }
    out
}
