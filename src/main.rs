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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Keygen { out } => keygen(&out),
        Command::Fingerprint { certificate } => fingerprint(&certificate),
        Command::Check { config } => check(&config),
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
        "interface {}: {}; listen {}; mtu {}; shards {}; routes {}",
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
