//! Fuzzes the packet views and `inspect` on arbitrary bytes.
//!
//! Invariants checked beyond "no panic": a successful `inspect` has `payload_offset` inside the
//! packet and inside the declared IP length, its flow hash is deterministic and its shard is in
//! range, and `inspect` agrees with the typed views about whether the IP framing is valid.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::core::packet::{Ipv4Packet, Ipv6Packet, inspect, shard_for};

fuzz_target!(|data: &[u8]| {
    let info = inspect(data);
    if let Ok(info) = info {
        assert!(info.payload_offset <= data.len());
        let hash = info.flow.hash();
        assert_eq!(hash, info.flow.hash());
        assert!(shard_for(hash, 7) < 7);
    }

    match Ipv4Packet::new_checked(data) {
        Ok(ip) => {
            assert_eq!(ip.version(), 4);
            assert!(ip.total_len() <= data.len());
            assert_eq!(ip.header_len() + ip.payload().len(), ip.total_len());
            let _ = (ip.dscp_ecn(), ip.identification(), ip.ttl(), ip.protocol());
            let _ = (
                ip.dont_fragment(),
                ip.more_fragments(),
                ip.fragment_offset(),
            );
            let _ = (ip.is_fragment(), ip.checksum(), ip.verify_checksum());
            let _ = (ip.src_addr(), ip.dst_addr());
            // A valid IPv4 header is always forwardable.
            let info = info.expect("valid IPv4 framing must inspect");
            assert!(info.payload_offset <= ip.total_len());
        }
        Err(e) => {
            if data.first().is_some_and(|b| b >> 4 == 4) {
                assert_eq!(info.map(|_| ()), Err(e));
            }
        }
    }

    if let Ok(ip) = Ipv6Packet::new_checked(data) {
        assert_eq!(ip.version(), 6);
        assert!(ip.total_len() <= data.len());
        assert_eq!(ip.header_len() + ip.payload().len(), ip.total_len());
        let _ = (
            ip.traffic_class(),
            ip.flow_label(),
            ip.next_header(),
            ip.hop_limit(),
        );
        let _ = (ip.src_addr(), ip.dst_addr());
        if let Ok(info) = info {
            assert!(info.payload_offset <= ip.total_len());
        }
    }
});
