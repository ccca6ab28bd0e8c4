//! Datagram throughput between two sluice transport endpoints on 127.0.0.1.
//!
//! A measurement, not a test: run it in release and read the numbers.
//!
//! ```text
//! cargo run --release --example datagram_throughput -- [seconds] [wait|drop] [cubic|newreno|bbr]
//! ```
//!
//! `wait` sends with `send_datagram_wait` (the sender waits for the congestion window: what the
//! link can carry); `drop` sends with `send_datagram` as fast as it can, and quinn drops the
//! oldest queued datagrams (what a shard that outruns the link would see).
//!
//! Measured on a 2-vCPU Intel Xeon VM (kernel 6.18), 5 s runs, default [`Tuning`], both
//! endpoints in this one process: `wait` 1.2–2.1 Gbit/s (Cubic, 4 runs), 1.6–2.0 Gbit/s (BBR),
//! 1.5 Gbit/s (NewReno), 0–4 % of datagrams lost, almost all dropped by the receive buffer
//! because the reader task fell behind; `drop` 0.34–0.43 Gbit/s with 98 % dropped in the
//! sender's buffer: a sender that never waits spends the CPU the connection needs to transmit.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sluice::transport::{self, Congestion, Identity, Tuning, cert_digest};

/// A self-signed Ed25519 identity and its pin.
fn identity() -> (Identity, [u8; 32]) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("ring makes Ed25519 keys");
    let params = rcgen::CertificateParams::new(vec!["sluice".to_owned()]).expect("valid name");
    let certificate: CertificateDer<'static> =
        params.self_signed(&key).expect("self-signed").der().clone();
    let digest = cert_digest(&certificate);
    let private_key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    (
        Identity {
            certificate,
            private_key,
        },
        digest,
    )
}

fn main() {
    let mut args = std::env::args().skip(1);
    let seconds: u64 = args
        .next()
        .map_or(5, |s| s.parse().expect("seconds is a number"));
    let wait = match args.next().as_deref() {
        None | Some("wait") => true,
        Some("drop") => false,
        Some(other) => panic!("mode is wait or drop, not {other}"),
    };
    let congestion = match args.next().as_deref() {
        None | Some("cubic") => Congestion::Cubic,
        Some("newreno") => Congestion::NewReno,
        Some("bbr") => Congestion::Bbr,
        Some(other) => panic!("congestion is cubic, newreno or bbr, not {other}"),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(
        Duration::from_secs(seconds.clamp(1, 60)),
        wait,
        congestion,
    ));
}

async fn run(duration: Duration, wait: bool, congestion: Congestion) {
    let tuning = Tuning {
        congestion,
        ..Tuning::default()
    };
    let loopback: SocketAddr = "127.0.0.1:0".parse().expect("literal");
    let ((server_id, server_pin), (client_id, client_pin)) = (identity(), identity());
    let server =
        transport::endpoint(loopback, server_id, vec![client_pin], &tuning).expect("server");
    let client = transport::endpoint(loopback, client_id, vec![], &tuning).expect("client");
    let addr = server.local_addr().expect("bound");
    let (accepted, dialled) = tokio::join!(
        transport::accept(&server),
        transport::connect(&client, addr, server_pin)
    );
    let (receiver, _) = accepted.expect("server open").expect("handshake");
    let sender = dialled.expect("handshake");

    let counting = tokio::spawn(async move {
        let (mut datagrams, mut bytes) = (0u64, 0u64);
        while let Ok(datagram) = receiver.read_datagram().await {
            datagrams += 1;
            bytes += datagram.len() as u64;
        }
        // DATAGRAM frames quinn received, read or not: the difference to `datagrams` is what
        // its receive buffer dropped because this reader fell behind.
        (datagrams, bytes, receiver.stats().frame_rx.datagram)
    });

    let started = Instant::now();
    let mut sent = 0u64;
    let mut payload = Bytes::new();
    let mut sizes = (usize::MAX, 0usize);
    while started.elapsed() < duration {
        // Read before every send: path MTU discovery grows it during the run.
        let size = sender.max_datagram_size().expect("datagrams negotiated");
        sizes = (sizes.0.min(size), sizes.1.max(size));
        if payload.len() != size {
            payload = Bytes::from(vec![0x5a; size]);
        }
        let datagram = payload.clone();
        if wait {
            sender
                .send_datagram_wait(datagram)
                .await
                .expect("connection open");
        } else {
            sender.send_datagram(datagram).expect("connection open");
            // Yield now and then so the connection task gets to transmit.
            if sent % 64 == 0 {
                tokio::task::yield_now().await;
            }
        }
        sent += 1;
    }
    // Let the tail drain, then close so the counter ends.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stats = sender.stats();
    sender.close(0u32.into(), b"done");
    let (received, received_bytes, arrived) = counting.await.expect("counter");
    let elapsed = started.elapsed().as_secs_f64() - 0.2;
    println!(
        "{congestion:?} {}: {sent} datagrams sent, {received} received ({:.2}% lost), \
         {:.0} Mbit/s received; {arrived} arrived at quinn (the rest dropped by the sender's \
         buffer or UDP), {} QUIC packets lost; datagram size {}..{} bytes, cwnd {} bytes, rtt {:?}",
        if wait { "wait" } else { "drop" },
        100.0 * (sent - received) as f64 / sent as f64,
        received_bytes as f64 * 8.0 / elapsed / 1e6,
        stats.path.lost_packets,
        sizes.0,
        sizes.1,
        stats.path.cwnd,
        stats.path.rtt,
    );
    client.quic().wait_idle().await;
}
