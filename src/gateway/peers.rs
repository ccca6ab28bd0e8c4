//! The peer table: who the gateway talks to, which addresses each may use, and the live link
//! to each.

use std::net::IpAddr;
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::core::dedupe::{DecoderCache, DedupeConfig, EncoderCache};

use crate::config::Cidr;
use crate::identity::Fingerprint;

/// A live connection to a peer, as the shards see it.
#[derive(Clone, Debug)]
pub struct Link {
    /// Increases with every new connection to this peer; stale messages carry an old one.
    pub generation: u64,
    /// The QUIC connection (datagrams are sent on it directly).
    pub conn: quinn::Connection,
    /// Control messages for the peer, written to the control stream by the session task.
    pub control: mpsc::Sender<Vec<u8>>,
    /// How many shards (encoders) the peer runs.
    pub remote_shards: u8,
    /// The peer takes acks as datagrams ([`Capabilities::ACK_DATAGRAMS`]), so ours may ride
    /// beside the data we send it.
    ///
    /// [`Capabilities::ACK_DATAGRAMS`]: crate::core::wire::Capabilities::ACK_DATAGRAMS
    pub ack_datagrams: bool,
    /// The dedupe contexts of this connection, shared by all shards; `None`: dedupe off
    /// (either side configured `dedupe_cache = 0`).
    pub dedupe: Option<Dedupe>,
}

/// Both directions' dedupe contexts of one connection. A new connection starts empty rings
/// on both sides, so the two ends never disagree about what the other holds.
#[derive(Clone)]
pub struct Dedupe {
    /// What we send the peer.
    pub encoder: Arc<EncoderCache>,
    /// What the peer sends us.
    pub decoder: Arc<DecoderCache>,
}

impl Dedupe {
    /// Fresh contexts with a `cache`-byte ring each.
    pub fn new(cache: usize) -> Dedupe {
        let config = DedupeConfig::with_cache(cache);
        Dedupe {
            encoder: Arc::new(EncoderCache::new(config)),
            decoder: Arc::new(DecoderCache::new(config)),
        }
    }
}

impl std::fmt::Debug for Dedupe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dedupe")
            .field("cache", &self.encoder.size())
            .finish_non_exhaustive()
    }
}

/// One configured peer.
#[derive(Clone, Debug)]
pub struct Peer {
    pub name: String,
    pub fingerprint: Fingerprint,
    pub allowed_ips: Vec<Cidr>,
    pub endpoint: Option<std::net::SocketAddr>,
}

/// All peers, with a longest-prefix routing table over their `allowed_ips`.
#[derive(Debug)]
pub struct Peers {
    peers: Vec<Peer>,
    /// (network, peer index), longest prefix first.
    routes: Vec<(Cidr, usize)>,
}

impl Peers {
    /// Builds the table.
    pub fn new(peers: Vec<Peer>) -> Peers {
        let mut routes: Vec<(Cidr, usize)> = peers
            .iter()
            .enumerate()
            .flat_map(|(i, p)| p.allowed_ips.iter().map(move |c| (*c, i)))
            .collect();
        routes.sort_by_key(|(c, _)| std::cmp::Reverse(c.prefix()));
        Peers { peers, routes }
    }

    /// Number of peers.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// True without peers.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// Peer `i`.
    pub fn get(&self, i: usize) -> &Peer {
        &self.peers[i]
    }

    /// All peers.
    pub fn iter(&self) -> impl Iterator<Item = &Peer> {
        self.peers.iter()
    }

    /// The peer whose `allowed_ips` hold `dst` with the longest prefix.
    pub fn route(&self, dst: IpAddr) -> Option<usize> {
        self.routes
            .iter()
            .find(|(c, _)| c.contains(dst))
            .map(|(_, i)| *i)
    }

    /// True if peer `i` may send packets with source `src`: the source routes back to that
    /// very peer (longest prefix), as in WireGuard's cryptokey routing.
    pub fn allows(&self, i: usize, src: IpAddr) -> bool {
        self.route(src) == Some(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(name: &str, digest: u8, nets: &[&str]) -> Peer {
        Peer {
            name: name.into(),
            fingerprint: Fingerprint::from_bytes([digest; 32]),
            allowed_ips: nets.iter().map(|n| n.parse().unwrap()).collect(),
            endpoint: None,
        }
    }

    #[test]
    fn several_peers_route_by_longest_prefix_and_accept_only_their_sources() {
        let peers = Peers::new(vec![
            peer("wide", 1, &["10.0.0.0/8", "fd00::/8"]),
            peer("branch", 2, &["10.20.0.0/16"]),
            peer("host", 3, &["10.20.30.40/32", "fd00:1::/64"]),
        ]);
        let cases: &[(&str, Option<usize>)] = &[
            ("10.1.2.3", Some(0)),
            ("10.20.1.1", Some(1)),
            ("10.20.30.40", Some(2)),
            ("10.20.30.41", Some(1)),
            ("fd00::1", Some(0)),
            ("fd00:1::9", Some(2)),
            ("192.0.2.1", None),
            ("2001:db8::1", None),
        ];
        assert!(!cases.is_empty());
        for (addr, want) in cases {
            let addr: IpAddr = addr.parse().unwrap();
            assert_eq!(peers.route(addr), *want, "route {addr}");
            // A source is accepted from exactly the peer the address routes to.
            for i in 0..peers.len() {
                assert_eq!(
                    peers.allows(i, addr),
                    *want == Some(i),
                    "{addr} from peer {i}"
                );
            }
        }
    }
}
