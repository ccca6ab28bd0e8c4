//! `peers.toml`: loading, validation and the peer routing rule.
//!
//! [`Settings::load`] layers three sources with figment: built-in defaults, then the file
//! (which must exist), then `SLUICE_*` environment overrides, where `__` separates the levels
//! (`SLUICE_OPTIMIZE__COMPRESSION=lz4` sets `optimize.compression`). Only variables whose first
//! level names an overridable section (`interface`, `optimize`) and that have a second level
//! are taken, so unrelated variables such as `SLUICE_LOG` never reach the schema.
//!
//! The file is deserialized into raw structs with `deny_unknown_fields`, then converted into
//! [`Settings`], which is made of types that can only hold valid values ([`Cidr`],
//! [`InterfaceAddress`], [`Fingerprint`], [`Mtu`], [`PerCore`] ([`Shards`], [`Threads`]), [`ZstdLevel`], [`ByteSize`],
//! [`InterfaceName`], [`PeerName`]). Anything wrong becomes a [`ConfigError`] that names the
//! config file, the key (`peer[1].allowed_ips[0]`), where the value came from when that was
//! not the file, and what is wrong.
//!
//! [`route`] and [`Peer::allows_source`] are the pure routing rules: which peer a destination
//! goes to, and whether a peer may send from a source address.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU8;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use figment::providers::Format;
use figment::value::{Dict, Map, Num, Value};
use figment::{Figment, Metadata, Profile, Provider};
use rustls_pki_types::CertificateDer;
use serde::Deserialize;

use crate::core::encoder::Compression;
pub use crate::identity::Fingerprint;
use crate::identity::{self, FingerprintError, IdentityError, PrivateKey};

/// Prefix of environment variables that override config keys.
pub const ENV_PREFIX: &str = "SLUICE_";
/// Separator between key levels in environment variable names.
pub const ENV_SEPARATOR: &str = "__";
/// Sections that environment variables may override. `peer` is an array of tables, which a
/// flat variable name cannot address.
const ENV_SECTIONS: [&str; 2] = ["interface", "optimize"];

/// Longest `max_delay` accepted. Batching delay adds latency to every packet of an idle link;
/// beyond this it stalls interactive traffic and TCP's RTT estimate for no gain.
pub const MAX_DELAY_LIMIT: Duration = Duration::from_secs(1);

/// Values of keys the file may omit. TOML so it reads like the file it sits under.
const DEFAULTS: &str = r#"
[interface]
name = "sluice0"
mtu = "auto"
wan_mtu = 1500
shards = "auto"
threads = "auto"
routes = true

[optimize]
compression = "auto"
zstd_level = 1
max_delay = "0ms"
dedupe_cache = "64MiB"
"#;

/// Provider name of [`DEFAULTS`], used to tell where a value came from.
const DEFAULTS_NAME: &str = "built-in defaults";
/// Provider name of the environment overrides.
const ENV_NAME: &str = "environment";

// ---------------------------------------------------------------------------------------------
// Errors

/// Where a configured value came from, when that was not the config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The config file (the error already names it).
    File,
    /// The built-in default for a key the file omits.
    Default,
    /// An environment variable; holds its name.
    Env(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File => Ok(()),
            Origin::Default => f.write_str(" (built-in default)"),
            Origin::Env(var) => write!(f, " (from environment variable {var})"),
        }
    }
}

/// Why a configured value is not acceptable on its own.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// Not `address/prefix`.
    #[error("{text:?} is not an address with a prefix length, like 10.20.0.0/16 or fd20::/48")]
    NotCidr {
        /// The offending text.
        text: String,
    },
    /// The prefix length is longer than the address.
    #[error("prefix length {prefix} is longer than {max} bits")]
    PrefixLength {
        /// The prefix length given.
        prefix: u8,
        /// The address width.
        max: u8,
    },
    /// `allowed_ips` entries must be networks, not hosts inside one.
    #[error("host bits are set; write the network as {network}")]
    HostBits {
        /// The network the text was probably meant to be.
        network: Cidr,
    },
    /// Not a fingerprint.
    #[error("not a certificate fingerprint: {reason}")]
    Fingerprint {
        /// What is wrong with it.
        reason: FingerprintError,
    },
    /// Not `address:port`.
    #[error("{text:?} is not an IP address and port, like 0.0.0.0:7443 or [::]:7443")]
    SocketAddr {
        /// The offending text.
        text: String,
    },
    /// An "auto or a number" key holds something else.
    #[error("expected \"auto\" or a number, found {found}")]
    AutoOrNumber {
        /// What was found, described.
        found: String,
    },
    /// A number outside its range.
    #[error("{value} is out of range; allowed: {min} to {max}{why}")]
    Range {
        /// The value given, saturated to the `i64` range (TOML's integer range).
        value: i64,
        /// Smallest allowed.
        min: i64,
        /// Largest allowed.
        max: i64,
        /// Why the bounds are what they are, if not obvious (starts with "; ").
        why: &'static str,
    },
    /// Not a duration.
    #[error("{text:?} is not a duration like \"0ms\", \"20ms\" or \"5s\" ({reason})")]
    Duration {
        /// The offending text.
        text: String,
        /// What the parser said.
        reason: String,
    },
    /// A duration above its limit.
    #[error("{given:?} is longer than the limit of {limit:?}")]
    DurationTooLong {
        /// The duration given.
        given: Duration,
        /// The limit.
        limit: Duration,
    },
    /// Not a byte size.
    #[error(
        "{text:?} is not a size like \"0\", \"512KiB\" or \"64MiB\" \
         (units: B, KiB, MiB, GiB, TiB, kB, MB, GB, TB)"
    )]
    ByteSize {
        /// The offending text.
        text: String,
    },
    /// A dedupe cache size out of range.
    #[error("{given} is not a dedupe cache size: use 0 (off) or 1MiB to 4GiB")]
    DedupeCache {
        /// The size given.
        given: ByteSize,
    },
    /// Not a compression mode.
    #[error("{text:?} is not a compression mode; allowed: auto, lz4, zstd, off")]
    Compression {
        /// The offending text.
        text: String,
    },
    /// Not a Linux interface name.
    #[error(
        "{text:?} is not a valid interface name: 1 to 15 bytes, not \".\" or \"..\", \
         without '/', ':' or whitespace"
    )]
    InterfaceName {
        /// The offending text.
        text: String,
    },
    /// Not a peer name.
    #[error(
        "{text:?} is not a valid peer name: 1 to 64 characters from a-z, A-Z, 0-9, '.', '_', '-'"
    )]
    PeerName {
        /// The offending text.
        text: String,
    },
    /// A list that must hold at least one entry is empty.
    #[error("must not be empty{why}")]
    Empty {
        /// Why (starts with ": ").
        why: &'static str,
    },
}

/// Why a config file was refused. Every case names the file; all but [`ConfigError::Read`]
/// and [`ConfigError::Syntax`] name the key too (see [`ConfigError::key`]). Where an
/// underlying error exists it is the [`source`](std::error::Error::source), so print the
/// whole chain (`{:#}` with anyhow).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("{file}: cannot read the config file")]
    Read {
        /// The config file.
        file: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// The file is not valid TOML.
    #[error("{file}: not valid TOML: {problem}")]
    Syntax {
        /// The config file.
        file: PathBuf,
        /// What the TOML parser said, with line and column.
        problem: String,
    },
    /// A key is unknown, missing, or has the wrong type.
    #[error("{file}: {key}{origin}: {problem}")]
    Schema {
        /// The config file.
        file: PathBuf,
        /// The key, as `section.key` or `peer[i].key`.
        key: String,
        /// Where the value came from.
        origin: Origin,
        /// What is wrong.
        problem: String,
    },
    /// A value has the right type but is not acceptable.
    #[error("{file}: {key}{origin}: {problem}")]
    Value {
        /// The config file.
        file: PathBuf,
        /// The key.
        key: String,
        /// Where the value came from.
        origin: Origin,
        /// What is wrong.
        problem: ValueError,
    },
    /// The key or certificate file a key names is unusable; the
    /// [`source`](std::error::Error::source) says why.
    #[error("{file}: {key}")]
    Identity {
        /// The config file.
        file: PathBuf,
        /// The key (`interface.key` or `interface.certificate`).
        key: String,
        /// What is wrong with the file it names.
        #[source]
        problem: IdentityError,
    },
    /// Two peers have the same name.
    #[error("{file}: {key}: peer name {name:?} is already used by {first}")]
    DuplicatePeerName {
        /// The config file.
        file: PathBuf,
        /// The later peer's `name` key.
        key: String,
        /// The name.
        name: String,
        /// The earlier peer's `name` key.
        first: String,
    },
    /// Two peers pin the same certificate.
    #[error(
        "{file}: {key}: the same fingerprint is already pinned by {first}; \
         each peer gateway needs its own key (run `sluice keygen` on it)"
    )]
    DuplicateFingerprint {
        /// The config file.
        file: PathBuf,
        /// The later peer's `fingerprint` key.
        key: String,
        /// The earlier peer's `fingerprint` key.
        first: String,
    },
    /// A peer pins our own certificate.
    #[error(
        "{file}: {key}: this is the fingerprint of our own certificate {certificate}; \
         pin the peer's certificate (`sluice fingerprint cert.pem` on the peer prints it)"
    )]
    OwnFingerprint {
        /// The config file.
        file: PathBuf,
        /// The peer's `fingerprint` key.
        key: String,
        /// Our certificate file.
        certificate: PathBuf,
    },
    /// Two peers claim overlapping address ranges.
    #[error(
        "{file}: {key}: {cidr} overlaps {other} at {other_key}; \
         each destination address must belong to exactly one peer"
    )]
    OverlappingAllowedIps {
        /// The config file.
        file: PathBuf,
        /// The later entry's key.
        key: String,
        /// The later entry.
        cidr: Cidr,
        /// The earlier entry's key.
        other_key: String,
        /// The earlier entry.
        other: Cidr,
    },
    /// No `[[peer]]` section.
    #[error("{file}: {key}: no [[peer]] section; a gateway needs at least one peer")]
    NoPeers {
        /// The config file.
        file: PathBuf,
        /// Always `peer`.
        key: String,
    },
    /// A peer without `endpoint` while we do not `listen`: no side could start the connection.
    #[error(
        "{file}: {key}: missing, and interface.listen is not set either, so neither side can \
         start the connection; set one of them"
    )]
    NobodyDials {
        /// The config file.
        file: PathBuf,
        /// The peer's `endpoint` key.
        key: String,
    },
}

impl ConfigError {
    /// The config file the error is about.
    pub fn file(&self) -> &Path {
        match self {
            ConfigError::Read { file, .. }
            | ConfigError::Syntax { file, .. }
            | ConfigError::Schema { file, .. }
            | ConfigError::Value { file, .. }
            | ConfigError::Identity { file, .. }
            | ConfigError::DuplicatePeerName { file, .. }
            | ConfigError::DuplicateFingerprint { file, .. }
            | ConfigError::OwnFingerprint { file, .. }
            | ConfigError::OverlappingAllowedIps { file, .. }
            | ConfigError::NoPeers { file, .. }
            | ConfigError::NobodyDials { file, .. } => file,
        }
    }

    /// The key the error is about, if it is about one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Read { .. } | ConfigError::Syntax { .. } => None,
            ConfigError::Schema { key, .. }
            | ConfigError::Value { key, .. }
            | ConfigError::Identity { key, .. }
            | ConfigError::DuplicatePeerName { key, .. }
            | ConfigError::DuplicateFingerprint { key, .. }
            | ConfigError::OwnFingerprint { key, .. }
            | ConfigError::OverlappingAllowedIps { key, .. }
            | ConfigError::NoPeers { key, .. }
            | ConfigError::NobodyDials { key, .. } => Some(key),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Value types

/// An IPv4 or IPv6 network in canonical form: no bits set past the prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

/// Address width in bits.
const fn width(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// `addr` with every bit past `prefix` cleared. `prefix` must be at most the address width.
fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let kept = bits.checked_shr(32 - u32::from(prefix)).unwrap_or(0);
            let masked = kept.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(masked))
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let kept = bits.checked_shr(128 - u32::from(prefix)).unwrap_or(0);
            let masked = kept.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(masked))
        }
    }
}

/// Splits `addr/prefix` and checks the prefix fits the address.
fn parse_prefixed(text: &str) -> Result<(IpAddr, u8), ValueError> {
    let not_cidr = || ValueError::NotCidr {
        text: text.to_owned(),
    };
    let (addr, prefix) = text.split_once('/').ok_or_else(not_cidr)?;
    let addr: IpAddr = addr.parse().map_err(|_| not_cidr())?;
    if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
        return Err(not_cidr());
    }
    let prefix: u8 = prefix.parse().map_err(|_| ValueError::PrefixLength {
        prefix: u8::MAX,
        max: width(addr),
    })?;
    if prefix > width(addr) {
        return Err(ValueError::PrefixLength {
            prefix,
            max: width(addr),
        });
    }
    Ok((addr, prefix))
}

impl Cidr {
    /// The network of `addr` with `prefix` bits, host bits cleared.
    ///
    /// # Errors
    /// [`ValueError::PrefixLength`] if `prefix` is longer than the address.
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Cidr, ValueError> {
        if prefix > width(addr) {
            return Err(ValueError::PrefixLength {
                prefix,
                max: width(addr),
            });
        }
        Ok(Cidr {
            network: mask(addr, prefix),
            prefix,
        })
    }

    /// The network address.
    pub const fn network(&self) -> IpAddr {
        self.network
    }

    /// The prefix length in bits.
    pub const fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `addr` is inside this network (never across address families).
    pub fn contains(&self, addr: IpAddr) -> bool {
        addr.is_ipv4() == self.network.is_ipv4() && mask(addr, self.prefix) == self.network
    }

    /// Whether the two networks share any address.
    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.contains(other.network) || other.contains(self.network)
    }
}

impl FromStr for Cidr {
    type Err = ValueError;

    /// Parses `network/prefix`; refuses host bits past the prefix, naming the network that
    /// was probably meant.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = parse_prefixed(text)?;
        let cidr = Cidr::new(addr, prefix)?;
        if cidr.network != addr {
            return Err(ValueError::HostBits { network: cidr });
        }
        Ok(cidr)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// An address of the TUN interface with the prefix length of its subnet (`10.99.0.1/24`):
/// host bits are the point here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct InterfaceAddress {
    addr: IpAddr,
    prefix: u8,
}

impl InterfaceAddress {
    /// The address.
    pub const fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The subnet's prefix length.
    pub const fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The subnet the address is in.
    pub fn subnet(&self) -> Cidr {
        Cidr {
            network: mask(self.addr, self.prefix),
            prefix: self.prefix,
        }
    }
}

impl FromStr for InterfaceAddress {
    type Err = ValueError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = parse_prefixed(text)?;
        Ok(InterfaceAddress { addr, prefix })
    }
}

impl fmt::Display for InterfaceAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// `value` clamped into `i64`, for error messages.
fn saturate(value: i128) -> i64 {
    i64::try_from(value).unwrap_or(if value < 0 { i64::MIN } else { i64::MAX })
}

/// Smallest MTU of a link carrying IPv4 (RFC 791 datagrams every host must accept).
pub const MIN_MTU_IPV4: u16 = 576;
/// Smallest MTU of a link carrying IPv6 (RFC 8200).
pub const MIN_MTU_IPV6: u16 = 1280;

/// MTU of the TUN device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mtu {
    /// Derived from `wan_mtu` and the tunnel overhead when the device is created.
    Auto,
    /// Exactly this many bytes; at least [`MIN_MTU_IPV4`], or [`MIN_MTU_IPV6`] when the
    /// tunnel carries IPv6.
    Fixed(u16),
}

impl Mtu {
    /// A fixed MTU, checked against the minimum for the address families carried.
    ///
    /// # Errors
    /// [`ValueError::Range`] below the minimum or above 65535.
    pub fn fixed(value: i128, carries_ipv6: bool) -> Result<Mtu, ValueError> {
        let (min, why) = if carries_ipv6 {
            (
                MIN_MTU_IPV6,
                "; the tunnel carries IPv6 (an IPv6 interface.address or allowed_ips), which \
                 needs at least 1280",
            )
        } else {
            (MIN_MTU_IPV4, "")
        };
        match u16::try_from(value) {
            Ok(mtu) if mtu >= min => Ok(Mtu::Fixed(mtu)),
            _ => Err(ValueError::Range {
                value: saturate(value),
                min: min.into(),
                max: u16::MAX.into(),
                why,
            }),
        }
    }
}

impl fmt::Display for Mtu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mtu::Auto => f.write_str("auto"),
            Mtu::Fixed(mtu) => write!(f, "{mtu}"),
        }
    }
}

/// A count that is either "one per available core" or fixed: how many shards (worker tasks)
/// forward packets ([`Shards`]), how many threads run them ([`Threads`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PerCore {
    /// One per available core (at most 16).
    Auto,
    /// Exactly this many (1 to 255).
    Fixed(NonZeroU8),
}

/// How many shards (worker tasks) forward packets.
pub type Shards = PerCore;

/// How many threads the async runtime runs the shards, QUIC and everything else on.
pub type Threads = PerCore;

impl PerCore {
    /// The count on this machine: `available` cores for `Auto` (at most 16).
    pub fn resolve(self, available: usize) -> usize {
        match self {
            PerCore::Auto => available.clamp(1, 16),
            PerCore::Fixed(n) => usize::from(n.get()),
        }
    }

    /// The count on this machine, from [`std::thread::available_parallelism`].
    pub fn here(self) -> usize {
        self.resolve(std::thread::available_parallelism().map_or(1, |n| n.get()))
    }
}

impl fmt::Display for PerCore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PerCore::Auto => f.write_str("auto"),
            PerCore::Fixed(n) => write!(f, "{n}"),
        }
    }
}

/// A zstd compression level in the range sluice supports: -7 (fastest) to 19.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ZstdLevel(i8);

impl ZstdLevel {
    /// Smallest accepted level.
    pub const MIN: i8 = -7;
    /// Largest accepted level. Higher levels cost far more CPU than a link can repay.
    pub const MAX: i8 = 19;

    /// The level, checked.
    ///
    /// # Errors
    /// [`ValueError::Range`] outside [`ZstdLevel::MIN`]..=[`ZstdLevel::MAX`].
    pub fn new(level: i128) -> Result<ZstdLevel, ValueError> {
        match i8::try_from(level) {
            Ok(l) if (Self::MIN..=Self::MAX).contains(&l) => Ok(ZstdLevel(l)),
            _ => Err(ValueError::Range {
                value: saturate(level),
                min: Self::MIN.into(),
                max: Self::MAX.into(),
                why: "",
            }),
        }
    }

    /// The level as zstd takes it.
    pub const fn get(self) -> i32 {
        self.0 as i32
    }
}

/// A number of bytes, written in config files as `"64MiB"`, `"512KiB"`, `"0"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(u64);

impl ByteSize {
    /// This many bytes.
    pub const fn new(bytes: u64) -> ByteSize {
        ByteSize(bytes)
    }

    /// The number of bytes.
    pub const fn bytes(self) -> u64 {
        self.0
    }
}

/// Unit suffixes [`ByteSize`] accepts, with their multipliers.
const BYTE_UNITS: [(&str, u64); 10] = [
    ("B", 1),
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
    ("TiB", 1 << 40),
    ("kB", 1000),
    ("KB", 1000),
    ("MB", 1000 * 1000),
    ("GB", 1000 * 1000 * 1000),
    ("TB", 1000 * 1000 * 1000 * 1000),
];

impl FromStr for ByteSize {
    type Err = ValueError;

    /// Parses a whole number with an optional unit (`B`, `KiB`…`TiB`, `kB`…`TB`), optionally
    /// separated by one space.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || ValueError::ByteSize {
            text: text.to_owned(),
        };
        let digits_end = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (digits, unit) = text.split_at(digits_end);
        let unit = match unit.strip_prefix(' ') {
            Some("") => return Err(bad()),
            Some(unit) => unit,
            None => unit,
        };
        if digits.is_empty() {
            return Err(bad());
        }
        let number: u64 = digits.parse().map_err(|_| bad())?;
        let multiplier = if unit.is_empty() {
            1
        } else {
            BYTE_UNITS
                .iter()
                .find(|(name, _)| *name == unit)
                .map(|(_, m)| *m)
                .ok_or_else(bad)?
        };
        number.checked_mul(multiplier).map(ByteSize).ok_or_else(bad)
    }
}

impl fmt::Display for ByteSize {
    /// The largest binary unit that divides the size exactly.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let binary = &BYTE_UNITS[..5];
        let (name, m) = binary
            .iter()
            .rev()
            .find(|(_, m)| self.0 != 0 && self.0 % m == 0)
            .copied()
            .unwrap_or(("B", 1));
        write!(f, "{}{name}", self.0 / m)
    }
}

/// Parses a duration such as `"0ms"`, `"20ms"`, `"1s 500ms"` (humantime syntax).
///
/// # Errors
/// [`ValueError::Duration`] if the text is not a duration.
pub fn parse_duration(text: &str) -> Result<Duration, ValueError> {
    humantime::parse_duration(text).map_err(|err| ValueError::Duration {
        text: text.to_owned(),
        reason: err.to_string(),
    })
}

/// Parses a compression mode: `auto`, `lz4`, `zstd` or `off`.
///
/// # Errors
/// [`ValueError::Compression`] for anything else.
pub fn parse_compression(text: &str) -> Result<Compression, ValueError> {
    match text {
        "auto" => Ok(Compression::Auto),
        "lz4" => Ok(Compression::Lz4),
        "zstd" => Ok(Compression::Zstd),
        "off" => Ok(Compression::Off),
        _ => Err(ValueError::Compression {
            text: text.to_owned(),
        }),
    }
}

/// A Linux network interface name (at most 15 bytes: `IFNAMSIZ` less the NUL).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct InterfaceName(String);

impl InterfaceName {
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for InterfaceName {
    type Err = ValueError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let valid = (1..=15).contains(&text.len())
            && text != "."
            && text != ".."
            && !text
                .chars()
                .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control());
        if valid {
            Ok(InterfaceName(text.to_owned()))
        } else {
            Err(ValueError::InterfaceName {
                text: text.to_owned(),
            })
        }
    }
}

impl fmt::Display for InterfaceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A peer's name: what logs, `sluice status` and metrics call it. Restricted to characters
/// that need no quoting in any of those.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PeerName(String);

impl PeerName {
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for PeerName {
    type Err = ValueError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let valid = (1..=64).contains(&text.len())
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
        if valid {
            Ok(PeerName(text.to_owned()))
        } else {
            Err(ValueError::PeerName {
                text: text.to_owned(),
            })
        }
    }
}

impl fmt::Display for PeerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

// ---------------------------------------------------------------------------------------------
// Settings

/// A validated configuration. Only [`Settings::load`] and [`Settings::load_with_env`] make one,
/// so holding one means every check in this module passed.
#[derive(Clone, Debug)]
pub struct Settings {
    file: PathBuf,
    interface: Interface,
    optimize: Optimize,
    peers: Vec<Peer>,
}

/// The `[interface]` section: this gateway.
#[derive(Clone, Debug)]
pub struct Interface {
    /// TUN device name.
    pub name: InterfaceName,
    /// Addresses of the TUN device (at least one).
    pub addresses: Vec<InterfaceAddress>,
    /// UDP address to accept peers on; `None` on a gateway that only dials.
    pub listen: Option<SocketAddr>,
    /// Private key file, resolved against the config file's folder.
    pub key_path: PathBuf,
    /// Certificate file, resolved against the config file's folder.
    pub certificate_path: PathBuf,
    /// The private key (mode checked, proven to match the certificate).
    pub key: PrivateKey,
    /// Our certificate, DER.
    pub certificate: CertificateDer<'static>,
    /// Our certificate's fingerprint: what peers pin.
    pub fingerprint: Fingerprint,
    /// TUN MTU.
    pub mtu: Mtu,
    /// MTU of the WAN path, from which `Mtu::Auto` is derived.
    pub wan_mtu: u16,
    /// Number of shards.
    pub shards: Shards,
    /// Threads of the async runtime.
    pub threads: Threads,
    /// Install a route into the TUN device for each peer's `allowed_ips`.
    pub routes: bool,
    /// Where `sluice status` reaches the running daemon; default
    /// `/run/sluice/<interface name>.sock`.
    pub control_socket: PathBuf,
}

/// The `[optimize]` section: how traffic is shrunk.
#[derive(Clone, Debug, PartialEq)]
pub struct Optimize {
    /// Codec choice.
    pub compression: Compression,
    /// zstd level for `zstd` and `auto`.
    pub zstd_level: ZstdLevel,
    /// Longest a partial batch waits for more packets; zero = never wait.
    pub max_delay: Duration,
    /// Dedupe ring per peer and direction; zero = dedupe off. Both gateways use the smaller
    /// of their two values.
    pub dedupe_cache: ByteSize,
}

/// Smallest non-zero `dedupe_cache`: one ring segment.
pub const MIN_DEDUPE_CACHE: u64 = 1 << 20;
/// Largest `dedupe_cache`: ring offsets are 32-bit.
pub const MAX_DEDUPE_CACHE: u64 = crate::core::dedupe::MAX_CACHE as u64;

/// One `[[peer]]`: a gateway we tunnel to.
#[derive(Clone, Debug, PartialEq)]
pub struct Peer {
    /// Unique name.
    pub name: PeerName,
    /// Where to dial it; `None` to wait for it to dial us.
    pub endpoint: Option<SocketAddr>,
    /// Its certificate's fingerprint (unique, not ours).
    pub fingerprint: Fingerprint,
    /// Networks behind it: destinations routed to it, and the only sources it may send from.
    /// Never overlapping another peer's.
    pub allowed_ips: Vec<Cidr>,
}

impl Peer {
    /// Whether a packet from this peer may carry source address `src`: it must lie inside
    /// one of the peer's `allowed_ips` (as in WireGuard), or the packet is dropped.
    pub fn allows_source(&self, src: IpAddr) -> bool {
        self.allowed_ips.iter().any(|cidr| cidr.contains(src))
    }
}

/// The index in `peers` of the peer to send a packet for `dst` to: the one with the longest
/// `allowed_ips` prefix containing `dst`; on a tie, the first such peer. `None` if no peer
/// holds `dst`.
pub fn route(peers: &[Peer], dst: IpAddr) -> Option<usize> {
    let mut best: Option<(usize, u8)> = None;
    for (index, peer) in peers.iter().enumerate() {
        for cidr in &peer.allowed_ips {
            if cidr.contains(dst) && best.is_none_or(|(_, prefix)| cidr.prefix() > prefix) {
                best = Some((index, cidr.prefix()));
            }
        }
    }
    best.map(|(index, _)| index)
}

impl Settings {
    /// Loads and validates the config file at `file`, with `SLUICE_*` overrides from the
    /// process environment.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the file, the key and the problem.
    pub fn load(file: &Path) -> Result<Settings, ConfigError> {
        let env = std::env::vars_os().filter_map(|(key, value)| {
            let key = key.into_string().ok()?;
            Some((key, value.to_string_lossy().into_owned()))
        });
        Settings::load_with_env(file, env)
    }

    /// Like [`Settings::load`], with the environment given as `(name, value)` pairs instead
    /// of read from the process, so tests need not change the process environment.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the file, the key and the problem.
    pub fn load_with_env(
        file: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        let contents = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
            file: file.to_owned(),
            source,
        })?;
        let figment = Figment::new()
            .merge(Named {
                name: DEFAULTS_NAME,
                source: None,
                inner: figment::providers::Toml::string(DEFAULTS),
            })
            .merge(Named {
                name: "config file",
                source: Some(file.to_owned()),
                inner: figment::providers::Toml::string(&contents),
            })
            .merge(EnvOverrides::new(env));
        let loader = Loader {
            file,
            dir: match file.parent() {
                Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
                _ => PathBuf::from("."),
            },
            figment: &figment,
        };
        let raw: RawConfig = figment
            .extract()
            .map_err(|err| loader.figment_error(err, ""))?;
        loader.settings(raw)
    }

    /// The config file these settings came from.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// The `[interface]` section.
    pub fn interface(&self) -> &Interface {
        &self.interface
    }

    /// The `[optimize]` section.
    pub fn optimize(&self) -> &Optimize {
        &self.optimize
    }

    /// The peers, in file order (at least one).
    pub fn peers(&self) -> &[Peer] {
        &self.peers
    }
}

// ---------------------------------------------------------------------------------------------
// figment plumbing

/// A provider under a name of our choosing, so an error can tell defaults from the file.
struct Named<P> {
    name: &'static str,
    source: Option<PathBuf>,
    inner: P,
}

impl<P: Provider> Provider for Named<P> {
    fn metadata(&self) -> Metadata {
        let metadata = Metadata::named(self.name);
        match &self.source {
            Some(path) => metadata.source(path.as_path()),
            None => metadata,
        }
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        self.inner.data()
    }
}

/// `SLUICE_SECTION__KEY=value` variables for the sections in [`ENV_SECTIONS`]. figment's
/// own `Env` reads the process environment directly; this one takes its variables as an
/// argument, so tests stay free of global state.
struct EnvOverrides {
    /// `(key path, value)`, e.g. `(["optimize", "zstd_level"], "3")`.
    vars: Vec<(Vec<String>, String)>,
}

impl EnvOverrides {
    fn new(env: impl IntoIterator<Item = (String, String)>) -> EnvOverrides {
        let vars = env
            .into_iter()
            .filter_map(|(name, value)| {
                let rest = name.strip_prefix(ENV_PREFIX)?;
                let path: Vec<String> = rest
                    .split(ENV_SEPARATOR)
                    .map(str::to_ascii_lowercase)
                    .collect();
                let known = path.len() >= 2
                    && ENV_SECTIONS.contains(&path[0].as_str())
                    && path.iter().all(|level| !level.is_empty());
                known.then_some((path, value))
            })
            .collect();
        EnvOverrides { vars }
    }
}

/// The environment variable that sets the key at `path`.
fn env_var_name(path: &[&str]) -> String {
    format!(
        "{ENV_PREFIX}{}",
        path.join(ENV_SEPARATOR).to_ascii_uppercase()
    )
}

impl Provider for EnvOverrides {
    fn metadata(&self) -> Metadata {
        Metadata::named(ENV_NAME).interpolater(|_profile, path| env_var_name(path))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut root = Dict::new();
        for (path, text) in &self.vars {
            // Same typing as figment's Env: "3" is a number, "true" a bool, "[a, b]" an array.
            let value: Value = text
                .parse()
                .unwrap_or_else(|_| Value::from(text.to_owned()));
            insert_nested(&mut root, path, value);
        }
        Ok(Profile::Default.collect(root))
    }
}

/// Puts `value` at `path` inside `dict`, making tables on the way (replacing non-tables).
fn insert_nested(dict: &mut Dict, path: &[String], value: Value) {
    match path {
        [] => {}
        [last] => {
            dict.insert(last.clone(), value);
        }
        [first, rest @ ..] => {
            let entry = dict
                .entry(first.clone())
                .or_insert_with(|| Value::from(Dict::new()));
            if !matches!(entry, Value::Dict(..)) {
                *entry = Value::from(Dict::new());
            }
            if let Value::Dict(_, inner) = entry {
                insert_nested(inner, rest, value);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Raw schema

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    interface: RawInterface,
    optimize: RawOptimize,
    /// Kept as raw values and deserialized one by one, so errors can say `peer[1]`.
    #[serde(default)]
    peer: Vec<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInterface {
    name: String,
    address: Vec<String>,
    listen: Option<String>,
    key: PathBuf,
    certificate: PathBuf,
    /// `"auto"` or a number; checked by hand for a clearer message than serde's untagged enum.
    mtu: Value,
    wan_mtu: i64,
    shards: Value,
    threads: Value,
    routes: bool,
    control_socket: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOptimize {
    compression: String,
    zstd_level: i64,
    max_delay: String,
    /// A size string (`"64MiB"`) or a number of bytes (`0`).
    dedupe_cache: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    name: String,
    endpoint: Option<String>,
    fingerprint: String,
    allowed_ips: Vec<String>,
}

/// "auto" or a number, as read from the file.
enum AutoOr {
    Auto,
    Number(i128),
}

/// Reads an "auto or a number" value.
fn auto_or_number(value: &Value) -> Result<AutoOr, ValueError> {
    match value {
        Value::String(_, text) if text == "auto" => Ok(AutoOr::Auto),
        Value::Num(_, num) => match integer(*num) {
            Some(n) => Ok(AutoOr::Number(n)),
            None => Err(ValueError::AutoOrNumber {
                found: format!("the fraction {}", num.to_f64().unwrap_or(f64::NAN)),
            }),
        },
        Value::String(_, text) => Err(ValueError::AutoOrNumber {
            found: format!("{text:?}"),
        }),
        other => Err(ValueError::AutoOrNumber {
            found: describe(other).to_owned(),
        }),
    }
}

/// Reads a [`PerCore`] count: "auto" or 1 to 255.
fn per_core(value: &Value) -> Result<PerCore, ValueError> {
    match auto_or_number(value)? {
        AutoOr::Auto => Ok(PerCore::Auto),
        AutoOr::Number(n) => u8::try_from(n)
            .ok()
            .and_then(NonZeroU8::new)
            .map(PerCore::Fixed)
            .ok_or(ValueError::Range {
                value: saturate(n),
                min: 1,
                max: 255,
                why: "",
            }),
    }
}

/// Reads a size: a string such as `"64MiB"` or a whole number of bytes.
fn byte_size(value: &Value) -> Result<ByteSize, ValueError> {
    match value {
        Value::String(_, text) => text.parse(),
        Value::Num(_, num) => integer(*num)
            .and_then(|n| u64::try_from(n).ok())
            .map(ByteSize::new)
            .ok_or_else(|| ValueError::ByteSize {
                text: num.to_f64().map_or_else(String::new, |f| f.to_string()),
            }),
        other => Err(ValueError::ByteSize {
            text: describe(other).to_owned(),
        }),
    }
}

/// The value of an integer `num`, signed or not; `None` for fractions and for unsigned values
/// past `i128::MAX`, which no key accepts anyway.
fn integer(num: Num) -> Option<i128> {
    num.to_i128()
        .or_else(|| num.to_u128().and_then(|n| i128::try_from(n).ok()))
}

fn describe(value: &Value) -> &'static str {
    match value {
        Value::String(..) => "a string",
        Value::Char(..) => "a character",
        Value::Bool(..) => "a boolean",
        Value::Num(..) => "a number",
        Value::Empty(..) => "nothing",
        Value::Dict(..) => "a table",
        Value::Array(..) => "an array",
    }
}

/// Converts raw values into [`Settings`], making errors that name the file and key.
struct Loader<'a> {
    file: &'a Path,
    /// Folder relative paths resolve against.
    dir: PathBuf,
    figment: &'a Figment,
}

impl Loader<'_> {
    /// Where the value at dotted `key` came from.
    fn origin(&self, key: &str) -> Origin {
        match self.figment.find_metadata(key) {
            Some(metadata) => self.origin_of(metadata, key.split('.').collect::<Vec<_>>()),
            None => Origin::File,
        }
    }

    fn origin_of(&self, metadata: &Metadata, path: Vec<&str>) -> Origin {
        match metadata.name.as_ref() {
            DEFAULTS_NAME => Origin::Default,
            ENV_NAME => Origin::Env(metadata.interpolate(&Profile::Default, &path)),
            _ => Origin::File,
        }
    }

    /// A value error at dotted `key` (used to look up its origin), reported as `shown_key`.
    fn value_error(
        &self,
        key: &str,
        shown_key: impl Into<String>,
        problem: ValueError,
    ) -> ConfigError {
        ConfigError::Value {
            file: self.file.to_owned(),
            key: shown_key.into(),
            origin: self.origin(key),
            problem,
        }
    }

    /// A figment error, for a value whose key starts with `prefix` (like `peer[1]`).
    fn figment_error(&self, err: figment::Error, prefix: &str) -> ConfigError {
        use figment::error::Kind;

        // figment usually ends the path with the unknown or missing field already; make sure.
        let mut path = err.path.clone();
        let field = match &err.kind {
            Kind::UnknownField(field, _) => Some(field.as_str()),
            Kind::MissingField(field) => Some(field.as_ref()),
            _ => None,
        };
        if let Some(field) = field {
            if path.last().map(String::as_str) != Some(field) {
                path.push(field.to_owned());
            }
        }
        if path.is_empty() && prefix.is_empty() {
            if let Kind::Message(message) = &err.kind {
                return ConfigError::Syntax {
                    file: self.file.to_owned(),
                    problem: message.clone(),
                };
            }
        }
        let origin = match (&err.metadata, &err.kind) {
            // The metadata is the enclosing table's, which says nothing about the absent key.
            (_, Kind::MissingField(_)) | (None, _) => Origin::File,
            (Some(metadata), _) => {
                self.origin_of(metadata, path.iter().map(String::as_str).collect())
            }
        };
        let mut key = prefix.to_owned();
        for part in &path {
            if !key.is_empty() {
                key.push('.');
            }
            key.push_str(part);
        }
        let problem = match &err.kind {
            Kind::UnknownField(field, expected) => {
                format!(
                    "unknown key {field:?}; known keys here: {}",
                    expected.join(", ")
                )
            }
            Kind::MissingField(_) => "required key is missing".to_owned(),
            // Name the expected shape, not our private raw struct.
            Kind::InvalidType(actual, expected) if expected.starts_with("struct ") => {
                format!("invalid type: found {actual}, expected a table")
            }
            kind => kind.to_string(),
        };
        ConfigError::Schema {
            file: self.file.to_owned(),
            key: if key.is_empty() {
                "(top level)".to_owned()
            } else {
                key
            },
            origin,
            problem,
        }
    }

    fn identity_error(&self, key: &str, problem: IdentityError) -> ConfigError {
        ConfigError::Identity {
            file: self.file.to_owned(),
            key: key.to_owned(),
            problem,
        }
    }

    fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_owned()
        } else {
            self.dir.join(path)
        }
    }

    fn settings(&self, raw: RawConfig) -> Result<Settings, ConfigError> {
        let optimize = self.optimize(raw.optimize)?;
        let mut peers = Vec::with_capacity(raw.peer.len());
        for (index, value) in raw.peer.iter().enumerate() {
            let prefix = format!("peer[{index}]");
            let raw_peer: RawPeer = value
                .deserialize()
                .map_err(|err| self.figment_error(err, &prefix))?;
            peers.push(self.peer(&prefix, raw_peer)?);
        }
        let interface = self.interface(raw.interface, &peers)?;
        self.check_peers(&interface, &peers)?;
        Ok(Settings {
            file: self.file.to_owned(),
            interface,
            optimize,
            peers,
        })
    }

    fn optimize(&self, raw: RawOptimize) -> Result<Optimize, ConfigError> {
        let compression = parse_compression(&raw.compression)
            .map_err(|e| self.value_error("optimize.compression", "optimize.compression", e))?;
        let zstd_level = ZstdLevel::new(raw.zstd_level.into())
            .map_err(|e| self.value_error("optimize.zstd_level", "optimize.zstd_level", e))?;
        let max_delay = parse_duration(&raw.max_delay)
            .and_then(|delay| {
                if delay > MAX_DELAY_LIMIT {
                    Err(ValueError::DurationTooLong {
                        given: delay,
                        limit: MAX_DELAY_LIMIT,
                    })
                } else {
                    Ok(delay)
                }
            })
            .map_err(|e| self.value_error("optimize.max_delay", "optimize.max_delay", e))?;
        let dedupe_cache = byte_size(&raw.dedupe_cache)
            .and_then(|size| {
                let bytes = size.bytes();
                if bytes == 0 || (MIN_DEDUPE_CACHE..=MAX_DEDUPE_CACHE).contains(&bytes) {
                    Ok(size)
                } else {
                    Err(ValueError::DedupeCache { given: size })
                }
            })
            .map_err(|e| self.value_error("optimize.dedupe_cache", "optimize.dedupe_cache", e))?;
        Ok(Optimize {
            compression,
            zstd_level,
            max_delay,
            dedupe_cache,
        })
    }

    fn peer(&self, prefix: &str, raw: RawPeer) -> Result<Peer, ConfigError> {
        // Peers come only from the file: their origin lookup key is a path figment cannot
        // resolve, which reports Origin::File.
        let err =
            |field: &str, problem| self.value_error("peer", format!("{prefix}.{field}"), problem);
        let name = raw.name.parse().map_err(|e| err("name", e))?;
        let endpoint = raw
            .endpoint
            .map(|text| parse_socket_addr(&text))
            .transpose()
            .map_err(|e| err("endpoint", e))?;
        let fingerprint = raw
            .fingerprint
            .parse()
            .map_err(|reason| err("fingerprint", ValueError::Fingerprint { reason }))?;
        if raw.allowed_ips.is_empty() {
            return Err(err(
                "allowed_ips",
                ValueError::Empty {
                    why: ": list the networks behind this peer, like [\"10.20.0.0/16\"]",
                },
            ));
        }
        let mut allowed_ips = Vec::with_capacity(raw.allowed_ips.len());
        for (i, text) in raw.allowed_ips.iter().enumerate() {
            let cidr = text
                .parse()
                .map_err(|e| err(&format!("allowed_ips[{i}]"), e))?;
            allowed_ips.push(cidr);
        }
        Ok(Peer {
            name,
            endpoint,
            fingerprint,
            allowed_ips,
        })
    }

    fn interface(&self, raw: RawInterface, peers: &[Peer]) -> Result<Interface, ConfigError> {
        let name = raw
            .name
            .parse()
            .map_err(|e| self.value_error("interface.name", "interface.name", e))?;
        if raw.address.is_empty() {
            return Err(self.value_error(
                "interface.address",
                "interface.address",
                ValueError::Empty {
                    why: ": give the tunnel device an address, like [\"10.99.0.1/24\"]",
                },
            ));
        }
        let mut addresses = Vec::with_capacity(raw.address.len());
        for (i, text) in raw.address.iter().enumerate() {
            let address = text.parse().map_err(|e| {
                self.value_error("interface.address", format!("interface.address[{i}]"), e)
            })?;
            addresses.push(address);
        }
        let listen = raw
            .listen
            .map(|text| parse_socket_addr(&text))
            .transpose()
            .map_err(|e| self.value_error("interface.listen", "interface.listen", e))?;

        let carries_ipv6 = addresses
            .iter()
            .any(|a: &InterfaceAddress| a.addr().is_ipv6())
            || peers
                .iter()
                .flat_map(|p| &p.allowed_ips)
                .any(|c| c.network().is_ipv6());
        let mtu = match auto_or_number(&raw.mtu) {
            Ok(AutoOr::Auto) => Ok(Mtu::Auto),
            Ok(AutoOr::Number(n)) => Mtu::fixed(n, carries_ipv6),
            Err(e) => Err(e),
        }
        .map_err(|e| self.value_error("interface.mtu", "interface.mtu", e))?;
        let wan_mtu = match u16::try_from(raw.wan_mtu) {
            Ok(m) if m >= MIN_MTU_IPV4 => m,
            _ => {
                return Err(self.value_error(
                    "interface.wan_mtu",
                    "interface.wan_mtu",
                    ValueError::Range {
                        value: raw.wan_mtu,
                        min: MIN_MTU_IPV4.into(),
                        max: u16::MAX.into(),
                        why: "",
                    },
                ));
            }
        };
        let shards = per_core(&raw.shards)
            .map_err(|e| self.value_error("interface.shards", "interface.shards", e))?;
        let threads = per_core(&raw.threads)
            .map_err(|e| self.value_error("interface.threads", "interface.threads", e))?;

        let key_path = self.resolve(&raw.key);
        let certificate_path = self.resolve(&raw.certificate);
        identity::check_key_permissions(&key_path)
            .map_err(|e| self.identity_error("interface.key", e))?;
        let key = identity::load_private_key(&key_path)
            .map_err(|e| self.identity_error("interface.key", e))?;
        let certificate = identity::load_certificate(&certificate_path)
            .map_err(|e| self.identity_error("interface.certificate", e))?;
        identity::check_key_matches(&certificate, &certificate_path, &key, &key_path)
            .map_err(|e| self.identity_error("interface.key", e))?;
        let fingerprint = identity::fingerprint(&certificate);

        let control_socket = match &raw.control_socket {
            Some(path) => self.resolve(path),
            None => PathBuf::from(format!("/run/sluice/{name}.sock")),
        };
        Ok(Interface {
            name,
            addresses,
            listen,
            key_path,
            certificate_path,
            key,
            certificate,
            fingerprint,
            mtu,
            wan_mtu,
            shards,
            threads,
            routes: raw.routes,
            control_socket,
        })
    }

    /// Checks across peers: at least one, unique names and fingerprints, none pinning us,
    /// no overlapping `allowed_ips`, and someone able to dial.
    fn check_peers(&self, interface: &Interface, peers: &[Peer]) -> Result<(), ConfigError> {
        let file = || self.file.to_owned();
        if peers.is_empty() {
            return Err(ConfigError::NoPeers {
                file: file(),
                key: "peer".to_owned(),
            });
        }
        let mut names: HashMap<&PeerName, usize> = HashMap::new();
        let mut fingerprints: HashMap<Fingerprint, usize> = HashMap::new();
        for (index, peer) in peers.iter().enumerate() {
            if let Some(first) = names.insert(&peer.name, index) {
                return Err(ConfigError::DuplicatePeerName {
                    file: file(),
                    key: format!("peer[{index}].name"),
                    name: peer.name.to_string(),
                    first: format!("peer[{first}].name"),
                });
            }
            if peer.fingerprint == interface.fingerprint {
                return Err(ConfigError::OwnFingerprint {
                    file: file(),
                    key: format!("peer[{index}].fingerprint"),
                    certificate: interface.certificate_path.clone(),
                });
            }
            if let Some(first) = fingerprints.insert(peer.fingerprint, index) {
                return Err(ConfigError::DuplicateFingerprint {
                    file: file(),
                    key: format!("peer[{index}].fingerprint"),
                    first: format!("peer[{first}].fingerprint"),
                });
            }
            if peer.endpoint.is_none() && interface.listen.is_none() {
                return Err(ConfigError::NobodyDials {
                    file: file(),
                    key: format!("peer[{index}].endpoint"),
                });
            }
            for (i, cidr) in peer.allowed_ips.iter().enumerate() {
                for (other_index, other_peer) in peers[..index].iter().enumerate() {
                    if let Some((j, other)) = other_peer
                        .allowed_ips
                        .iter()
                        .enumerate()
                        .find(|(_, other)| cidr.overlaps(other))
                    {
                        return Err(ConfigError::OverlappingAllowedIps {
                            file: file(),
                            key: format!("peer[{index}].allowed_ips[{i}]"),
                            cidr: *cidr,
                            other_key: format!("peer[{other_index}].allowed_ips[{j}]"),
                            other: *other,
                        });
                    }
                }
            }
        }
        Ok(())
    }
}

/// Parses `address:port` (IPv6 in brackets).
fn parse_socket_addr(text: &str) -> Result<SocketAddr, ValueError> {
    text.parse().map_err(|_| ValueError::SocketAddr {
        text: text.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(text: &str) -> Cidr {
        text.parse().unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn cidr_parses_networks_and_refuses_the_rest() {
        let good = [
            ("10.20.0.0/16", "10.20.0.0/16"),
            ("0.0.0.0/0", "0.0.0.0/0"),
            ("192.0.2.7/32", "192.0.2.7/32"),
            ("fd20::/48", "fd20::/48"),
            ("::/0", "::/0"),
            ("fd20:0::1/128", "fd20::1/128"),
        ];
        for (text, shown) in good {
            assert_eq!(cidr(text).to_string(), shown, "{text}");
        }
        let bad = [
            "10.20.0.0",
            "10.20.0.0/",
            "10.20.0.0/+8",
            "10.20.0.0/ 8",
            "10.20.0/16",
            "host/16",
            "10.20.0.0/33",
            "10.20.0.0/999",
            "fd20::/129",
            "10.20.0.1/16",
            "fd20::1/48",
        ];
        for text in bad {
            assert!(text.parse::<Cidr>().is_err(), "{text}");
        }
        assert_eq!(
            "10.20.3.4/16".parse::<Cidr>(),
            Err(ValueError::HostBits {
                network: cidr("10.20.0.0/16")
            })
        );
    }

    #[test]
    fn cidr_containment_and_overlap() {
        let cases = [
            ("10.20.0.0/16", "10.20.255.255", true),
            ("10.20.0.0/16", "10.21.0.0", false),
            ("0.0.0.0/0", "203.0.113.9", true),
            ("0.0.0.0/0", "::1", false),
            ("::/0", "10.0.0.1", false),
            ("fd20::/48", "fd20:0:0:ffff::1", true),
            ("fd20::/48", "fd20:0:1::1", false),
            ("192.0.2.7/32", "192.0.2.7", true),
            ("192.0.2.7/32", "192.0.2.8", false),
        ];
        for (net, addr, inside) in cases {
            assert_eq!(cidr(net).contains(ip(addr)), inside, "{net} {addr}");
        }
        let overlaps = [
            ("10.0.0.0/8", "10.20.0.0/16", true),
            ("10.20.0.0/16", "10.0.0.0/8", true),
            ("10.20.0.0/16", "10.21.0.0/16", false),
            ("10.20.0.0/16", "10.20.0.0/16", true),
            ("0.0.0.0/0", "::/0", false),
            ("fd20::/48", "fd20::/64", true),
        ];
        for (a, b, want) in overlaps {
            assert_eq!(cidr(a).overlaps(&cidr(b)), want, "{a} {b}");
        }
    }

    #[test]
    fn interface_addresses_keep_host_bits() {
        let address: InterfaceAddress = "10.99.0.1/24".parse().unwrap();
        assert_eq!(address.addr(), ip("10.99.0.1"));
        assert_eq!(address.prefix(), 24);
        assert_eq!(address.subnet(), cidr("10.99.0.0/24"));
        assert_eq!(address.to_string(), "10.99.0.1/24");
        assert!("10.99.0.1".parse::<InterfaceAddress>().is_err());
        assert!("fd99::1/129".parse::<InterfaceAddress>().is_err());
    }

    #[test]
    fn byte_sizes() {
        let good = [
            ("0", 0),
            ("1", 1),
            ("512B", 512),
            ("64MiB", 64 << 20),
            ("64 MiB", 64 << 20),
            ("1GiB", 1 << 30),
            ("2KiB", 2048),
            ("3kB", 3000),
            ("3KB", 3000),
            ("5MB", 5_000_000),
        ];
        for (text, bytes) in good {
            assert_eq!(text.parse::<ByteSize>(), Ok(ByteSize::new(bytes)), "{text}");
        }
        for text in [
            "",
            "MiB",
            "64mib",
            "64 ",
            "-1",
            "1.5MiB",
            "64MiBs",
            "99999999TiB",
        ] {
            assert!(text.parse::<ByteSize>().is_err(), "{text}");
        }
        assert_eq!(ByteSize::new(64 << 20).to_string(), "64MiB");
        assert_eq!(ByteSize::new(1000).to_string(), "1000B");
        assert_eq!(ByteSize::new(0).to_string(), "0B");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("0ms"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1s 500ms"), Ok(Duration::from_millis(1500)));
        for text in ["", "soon", "5", "-1ms", "5 parsecs"] {
            assert!(parse_duration(text).is_err(), "{text}");
        }
    }

    #[test]
    fn bounded_numbers() {
        assert_eq!(ZstdLevel::new(-7).map(ZstdLevel::get), Ok(-7));
        assert_eq!(ZstdLevel::new(19).map(ZstdLevel::get), Ok(19));
        for level in [-8, 20, 1000, i128::MIN] {
            assert!(ZstdLevel::new(level).is_err(), "{level}");
        }
        assert_eq!(Mtu::fixed(576, false), Ok(Mtu::Fixed(576)));
        assert!(Mtu::fixed(575, false).is_err());
        assert!(Mtu::fixed(1279, true).is_err());
        assert_eq!(Mtu::fixed(1280, true), Ok(Mtu::Fixed(1280)));
        assert_eq!(Mtu::fixed(65535, true), Ok(Mtu::Fixed(65535)));
        assert!(Mtu::fixed(65536, false).is_err());
        assert!(Mtu::fixed(-1, false).is_err());
    }

    #[test]
    fn names() {
        for good in ["sluice0", "wan-opt.1", "a", "x_y"] {
            assert!(good.parse::<InterfaceName>().is_ok(), "{good}");
        }
        for bad in ["", ".", "..", "a/b", "a b", "eth0:1", "sixteen-bytes-xx"] {
            assert!(bad.parse::<InterfaceName>().is_err(), "{bad}");
        }
        for good in ["site-b", "DC_1.main"] {
            assert!(good.parse::<PeerName>().is_ok(), "{good}");
        }
        for bad in ["", "site b", "site/b", "é", &"x".repeat(65)] {
            assert!(bad.parse::<PeerName>().is_err(), "{bad}");
        }
    }

    #[test]
    fn compression_modes() {
        assert_eq!(parse_compression("auto"), Ok(Compression::Auto));
        assert_eq!(parse_compression("lz4"), Ok(Compression::Lz4));
        assert_eq!(parse_compression("zstd"), Ok(Compression::Zstd));
        assert_eq!(parse_compression("off"), Ok(Compression::Off));
        assert!(parse_compression("LZ4").is_err());
        assert!(parse_compression("none").is_err());
    }

    fn peer(name: &str, byte: u8, allowed: &[&str]) -> Peer {
        Peer {
            name: name.parse().unwrap(),
            endpoint: None,
            fingerprint: Fingerprint::from_bytes([byte; 32]),
            allowed_ips: allowed.iter().map(|c| cidr(c)).collect(),
        }
    }

    #[test]
    fn route_picks_the_longest_prefix() {
        // Overlaps are refused in config files, but the rule is defined for them too.
        let peers = [
            peer("default", 1, &["0.0.0.0/0"]),
            peer("corp", 2, &["10.0.0.0/8", "fd00::/8"]),
            peer("lab", 3, &["10.20.0.0/16", "10.20.30.40/32"]),
            peer("lab-twin", 4, &["10.20.0.0/16", "fd00:20::/32"]),
        ];
        let cases: &[(&str, Option<usize>)] = &[
            ("203.0.113.1", Some(0)),
            ("10.1.2.3", Some(1)),
            ("10.20.1.1", Some(2)),
            ("10.20.30.40", Some(2)),
            ("10.20.30.41", Some(2)),
            ("fd00::1", Some(1)),
            ("fd00:20::1", Some(3)),
            ("2001:db8::1", None),
        ];
        assert!(!cases.is_empty());
        for (dst, want) in cases {
            assert_eq!(route(&peers, ip(dst)), *want, "{dst}");
        }
        assert_eq!(route(&[], ip("10.0.0.1")), None);
    }

    #[test]
    fn sources_must_be_inside_allowed_ips() {
        let lab = peer("lab", 3, &["10.20.0.0/16", "fd20::/48"]);
        let cases = [
            ("10.20.0.1", true),
            ("10.20.255.254", true),
            ("10.21.0.1", false),
            ("fd20::9", true),
            ("fd21::9", false),
            ("0.0.0.0", false),
            ("::ffff:10.20.0.1", false),
        ];
        for (src, allowed) in cases {
            assert_eq!(lab.allows_source(ip(src)), allowed, "{src}");
        }
    }

    #[test]
    fn env_overrides_take_only_known_sections() {
        let vars = [
            ("SLUICE_OPTIMIZE__COMPRESSION", "lz4"),
            ("SLUICE_INTERFACE__MTU", "1400"),
            ("SLUICE_LOG", "debug"),
            ("SLUICE_FOO__BAR", "1"),
            ("SLUICE_PEER__NAME", "x"),
            ("SLUICE_OPTIMIZE", "x"),
            ("SLUICE_OPTIMIZE__", "x"),
            ("SLUICE___X", "x"),
            ("PATH", "/bin"),
        ];
        let env = EnvOverrides::new(vars.map(|(k, v)| (k.to_owned(), v.to_owned())));
        let paths: Vec<String> = env.vars.iter().map(|(path, _)| path.join(".")).collect();
        assert_eq!(paths, ["optimize.compression", "interface.mtu"]);
        let data = env.data().unwrap();
        let dict = &data[&Profile::Default];
        let optimize = dict["optimize"].as_dict().unwrap();
        assert_eq!(optimize["compression"].as_str(), Some("lz4"));
        let interface = dict["interface"].as_dict().unwrap();
        assert_eq!(interface["mtu"].to_u128(), Some(1400));
        assert_eq!(
            env_var_name(&["optimize", "zstd_level"]),
            "SLUICE_OPTIMIZE__ZSTD_LEVEL"
        );
    }
}
