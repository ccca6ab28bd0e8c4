//! sluice: a WAN optimizer for site-to-site links.
//!
//! The crate has two layers (see `DESIGN.md` in the project's shared notes):
//!
//! - [`core`] is sans-IO: packet views and flow keys ([`core::packet`]), the wire format
//!   ([`core::wire`]), block compression ([`core::compress`]) and the per-shard
//!   [`core::Encoder`] / [`core::Decoder`] pair that turns IP packets into WAN datagrams and back.
//!   It takes time as a parameter and never touches sockets, files, the environment or a clock.
//! - Everything else is the IO layer (configuration, TUN device, transports, runtime), which
//!   drives the core:
//!   - [`tun`]: the TUN device, one queue per shard, with virtio-net offload so GSO
//!     super-packets cross the tunnel whole ([`tun::GsoMeta`] carries their metadata);
//!   - [`netlink`]: link up, MTU, addresses and routes through the device, and their removal.
//!   - [`identity`]: key and certificate generation and loading, certificate fingerprints.
//!   - [`config`]: `peers.toml` loaded into validated [`config::Settings`], and the routing
//!     rule that maps a destination address to a peer.
//!   - [`transport`]: the QUIC link between two gateways: mutual TLS 1.3 pinned to
//!     certificate digests, datagrams for packet batches, one control stream.
//!   - [`gateway`]: the runtime: shards (one task per TUN queue, each with its encoders and
//!     decoders), one session task per peer, the accept loop, the supervisor.
//!   - [`control`]: the local control socket behind `sluice status`.
//!   - [`notify`]: systemd readiness.
//!   - [`demo`]: `sluice demo`, two sites in network namespaces.
//! - [`impair`] is a test tool beside the product: `sluice-impair`, a seeded UDP relay that
//!   impairs traffic like a WAN link (its [`impair::model`] is sans-IO like the core).
//!
//! The IO layer and the binaries are the default feature `io`; without it
//! (`default-features = false`) the crate is the core alone, which is how the fuzz targets
//! build it.

#[cfg(feature = "io")]
pub mod config;
#[cfg(feature = "io")]
pub mod control;
pub mod core;
#[cfg(feature = "io")]
pub mod demo;
#[cfg(feature = "io")]
pub mod gateway;
#[cfg(feature = "io")]
pub mod identity;
#[cfg(feature = "io")]
pub mod impair;
#[cfg(feature = "io")]
pub mod netlink;
#[cfg(feature = "io")]
pub mod notify;
#[cfg(feature = "io")]
pub mod transport;
#[cfg(feature = "io")]
pub mod tun;
