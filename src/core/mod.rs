//! The sans-IO core: everything that turns IP packets into WAN datagrams and back.
//!
//! Nothing in this module tree performs IO or reads a clock. Time arrives as a [`Timestamp`]
//! argument, buffers come from the caller, and the same inputs always give the same outputs,
//! so the core is unit-tested, simulated and fuzzed deterministically. A test
//! (`tests/core_is_sans_io.rs`) fails if a file here names tokio, `std::net`, `std::fs`,
//! `std::env`, `std::thread`, `Instant::now` or `SystemTime::now`.
//!
//! - [`packet`]: zero-copy IPv4/IPv6 views, flow keys and the shard-picking flow hash.
//! - [`varint`]: QUIC-style variable-length integers used by the wire format.
//! - [`wire`]: wire format v1, every message documented field by field.
//! - [`compress`]: lz4 / zstd / raw block codecs behind one interface.
//! - [`encoder`] / [`decoder`]: the per-peer, per-shard state machines.
//! - [`dedupe`]: the per-peer byte cache that replaces repeated ranges with references.
//! - [`stats`]: the counters they keep.

pub mod compress;
pub mod decoder;
pub mod dedupe;
pub mod encoder;
pub mod packet;
pub mod stats;
pub mod varint;
pub mod wire;

#[cfg(test)]
mod sim;
mod time;

pub use decoder::{Decoder, DecoderConfig};
pub use encoder::{Encoder, EncoderConfig};
pub use time::Timestamp;
