//! The peer table: who the gateway talks to, which addresses each may use, and the live link
//! to each.

use std::net::IpAddr;

use tokio::sync::mpsc;

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
