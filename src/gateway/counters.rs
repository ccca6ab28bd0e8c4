//! Live counters of the gateway, written by shards and read by `sluice status`.
//!
//! Each shard owns one [`ShardCounters`] per peer, so no cache line is shared between cores
//! on the hot path; status sums them.

use std::sync::atomic::{AtomicU64, Ordering};

/// What one shard did for one peer. All counters only grow.
#[derive(Debug, Default)]
pub struct ShardCounters {
    /// Packets read from the TUN device and queued for the peer.
    pub lan_in_packets: AtomicU64,
    /// Bytes of those packets.
    pub lan_in_bytes: AtomicU64,
    /// Packets restored from the peer and written to the TUN device.
    pub lan_out_packets: AtomicU64,
    /// Bytes of those packets.
    pub lan_out_bytes: AtomicU64,
    /// Datagrams sent to the peer.
    pub wan_out_datagrams: AtomicU64,
    /// Bytes of those datagrams (sluice framing included, QUIC/UDP/IP not).
    pub wan_out_bytes: AtomicU64,
    /// Datagrams received from the peer.
    pub wan_in_datagrams: AtomicU64,
    /// Bytes of those datagrams.
    pub wan_in_bytes: AtomicU64,
    /// Restored packets dropped because their source is outside the peer's `allowed_ips`.
    pub source_not_allowed: AtomicU64,
    /// Datagrams or blocks from the peer that failed validation.
    pub malformed: AtomicU64,
    /// Packets for the peer dropped while it was not connected.
    pub no_link: AtomicU64,
    /// Packets that went out raw because their flow looks incompressible.
    pub bypassed_packets: AtomicU64,
    /// Packets refused by the encoder (malformed IP, queue full).
    pub refused: AtomicU64,
    /// Datagrams quinn would not send (too large after a path MTU drop, connection lost).
    pub send_errors: AtomicU64,
    /// Acks for the peer's data sent as datagrams beside our own data...
    pub acks_with_data: AtomicU64,
    /// ...and on the control stream, when nothing else was going the peer's way in time.
    pub acks_on_control: AtomicU64,
    /// Bytes given to the block codecs (packet areas, or dedupe streams)...
    pub codec_in_bytes: AtomicU64,
    /// ...and the bodies they made: the difference is what compression saved.
    pub codec_out_bytes: AtomicU64,
}

/// Adds `n` to a counter (relaxed: counters are statistics, not synchronisation).
#[inline]
pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// A plain copy of the counters, summed over shards.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub lan_in_packets: u64,
    pub lan_in_bytes: u64,
    pub lan_out_packets: u64,
    pub lan_out_bytes: u64,
    pub wan_out_datagrams: u64,
    pub wan_out_bytes: u64,
    pub wan_in_datagrams: u64,
    pub wan_in_bytes: u64,
    pub source_not_allowed: u64,
    pub malformed: u64,
    pub no_link: u64,
    pub bypassed_packets: u64,
    pub refused: u64,
    pub send_errors: u64,
    pub acks_with_data: u64,
    pub acks_on_control: u64,
    pub codec_in_bytes: u64,
    pub codec_out_bytes: u64,
}

impl Totals {
    /// Adds one shard's counters.
    pub fn add(&mut self, c: &ShardCounters) {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        self.lan_in_packets += r(&c.lan_in_packets);
        self.lan_in_bytes += r(&c.lan_in_bytes);
        self.lan_out_packets += r(&c.lan_out_packets);
        self.lan_out_bytes += r(&c.lan_out_bytes);
        self.wan_out_datagrams += r(&c.wan_out_datagrams);
        self.wan_out_bytes += r(&c.wan_out_bytes);
        self.wan_in_datagrams += r(&c.wan_in_datagrams);
        self.wan_in_bytes += r(&c.wan_in_bytes);
        self.source_not_allowed += r(&c.source_not_allowed);
        self.malformed += r(&c.malformed);
        self.no_link += r(&c.no_link);
        self.bypassed_packets += r(&c.bypassed_packets);
        self.refused += r(&c.refused);
        self.send_errors += r(&c.send_errors);
        self.acks_with_data += r(&c.acks_with_data);
        self.acks_on_control += r(&c.acks_on_control);
        self.codec_in_bytes += r(&c.codec_in_bytes);
        self.codec_out_bytes += r(&c.codec_out_bytes);
    }

    /// WAN bytes over LAN bytes, both directions together (1.0 = no saving, lower is
    /// better); `None` before any traffic.
    pub fn wan_ratio(&self) -> Option<f64> {
        let lan = self.lan_in_bytes + self.lan_out_bytes;
        let wan = self.wan_out_bytes + self.wan_in_bytes;
        (lan > 0).then(|| wan as f64 / lan as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_sum_shards_and_give_the_ratio() {
        let a = ShardCounters::default();
        let b = ShardCounters::default();
        add(&a.lan_in_bytes, 1000);
        add(&b.lan_out_bytes, 1000);
        add(&a.wan_out_bytes, 300);
        add(&b.wan_in_bytes, 200);
        let mut t = Totals::default();
        assert_eq!(t.wan_ratio(), None);
        t.add(&a);
        t.add(&b);
        assert_eq!(t.lan_in_bytes + t.lan_out_bytes, 2000);
        assert_eq!(t.wan_ratio(), Some(0.25));
    }
}
