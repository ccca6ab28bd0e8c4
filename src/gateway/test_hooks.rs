//! Fault injection for the end-to-end tests; compiled only with the `test-hooks` feature and
//! never part of a release build.
//!
//! A shard that reads a **magic packet** from its TUN queue panics, so the tests can watch the
//! supervisor restart it: an IPv4 UDP packet to port [`MAGIC_PORT`] whose payload starts with
//! [`MAGIC`]. Anyone on the LAN could send one, which is why the hook exists only in test
//! builds.

/// UDP destination port of the magic packet (discard).
pub const MAGIC_PORT: u16 = 9;

/// Payload prefix of the magic packet.
pub const MAGIC: &[u8] = b"sluice-test-hook:panic-shard";

/// Panics if `packet` is the magic packet. Looks at a few fixed header bytes first, so other
/// packets cost two comparisons.
pub fn on_tun_packet(shard: usize, packet: &[u8]) {
    // IPv4, protocol UDP (17).
    if packet.len() < 28 || packet[0] >> 4 != 4 || packet[9] != 17 {
        return;
    }
    let ihl = usize::from(packet[0] & 0x0f) * 4;
    let Some(udp) = packet.get(ihl..) else {
        return;
    };
    if udp.len() < 8 || u16::from_be_bytes([udp[2], udp[3]]) != MAGIC_PORT {
        return;
    }
    if udp[8..].starts_with(MAGIC) {
        panic!("test hook: shard {shard} read the magic packet and panics on purpose");
    }
}
