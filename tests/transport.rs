//! Two QUIC endpoints on 127.0.0.1 in one process: datagrams, control frames, pinning in both
//! directions and the keep-alive / idle-timeout settings.

use std::net::SocketAddr;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sluice::transport::{
    self, Endpoint, Identity, MAX_CONTROL_FRAME, TransportError, Tuning, cert_digest, digest_hex,
};

/// Bound on every wait in these tests, so a regression fails instead of hanging.
const PATIENCE: Duration = Duration::from_secs(5);

/// A self-signed Ed25519 certificate and its key, as `sluice keygen` will make them.
struct Keys {
    certificate: CertificateDer<'static>,
    pkcs8: Vec<u8>,
}

impl Keys {
    fn generate() -> Self {
        let key =
            rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("ring makes Ed25519 keys");
        let params = rcgen::CertificateParams::new(vec!["sluice".to_owned()]).expect("valid name");
        let certificate = params.self_signed(&key).expect("self-signing succeeds");
        Self {
            certificate: certificate.der().clone(),
            pkcs8: key.serialize_der(),
        }
    }

    fn digest(&self) -> [u8; 32] {
        cert_digest(&self.certificate)
    }

    fn identity(&self) -> Identity {
        Identity {
            certificate: self.certificate.clone(),
            private_key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.pkcs8.clone())),
        }
    }
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().expect("literal address")
}

fn open(keys: &Keys, allowed: Vec<[u8; 32]>, tuning: &Tuning) -> Endpoint {
    transport::endpoint(loopback(), keys.identity(), allowed, tuning).expect("endpoint on loopback")
}

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, future)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// A connected pair: (server endpoint, client endpoint, server side, client side).
async fn pair(
    tuning_server: &Tuning,
    tuning_client: &Tuning,
) -> (
    Endpoint,
    Endpoint,
    transport::Connection,
    transport::Connection,
) {
    let (a, b) = (Keys::generate(), Keys::generate());
    let server = open(&a, vec![b.digest()], tuning_server);
    let client = open(&b, vec![a.digest()], tuning_client);
    let addr = server.local_addr().expect("bound");
    let (accepted, dialled) = within("handshake", async {
        tokio::join!(
            transport::accept(&server),
            transport::connect(&client, addr, a.digest())
        )
    })
    .await;
    let (server_side, presented) = accepted.expect("endpoint open").expect("client accepted");
    assert_eq!(presented, b.digest());
    let client_side = dialled.expect("server accepted");
    (server, client, server_side, client_side)
}

#[tokio::test]
async fn datagrams_flow_both_ways() {
    let (_server, _client, server_side, client_side) =
        pair(&Tuning::default(), &Tuning::default()).await;

    for side in [&server_side, &client_side] {
        let size = side.max_datagram_size().expect("datagrams negotiated");
        assert!(
            size >= 1100,
            "max_datagram_size {size} right after the handshake"
        );
    }

    let size = client_side
        .max_datagram_size()
        .expect("datagrams negotiated");
    let up = vec![0xa5; size];
    client_side.send_datagram(up.clone().into()).expect("fits");
    assert_eq!(
        within("datagram up", server_side.read_datagram())
            .await
            .expect("received"),
        up
    );

    server_side
        .send_datagram(b"down".to_vec().into())
        .expect("fits");
    assert_eq!(
        &within("datagram down", client_side.read_datagram())
            .await
            .expect("received")[..],
        b"down"
    );
}

#[tokio::test]
async fn peer_digests_name_the_other_side() {
    let (a, b) = (Keys::generate(), Keys::generate());
    let server = open(&a, vec![b.digest()], &Tuning::default());
    let client = open(&b, vec![], &Tuning::default());
    let addr = server.local_addr().expect("bound");
    let (accepted, dialled) = within("handshake", async {
        tokio::join!(
            transport::accept(&server),
            transport::connect(&client, addr, a.digest())
        )
    })
    .await;
    let (server_side, _) = accepted.expect("endpoint open").expect("client accepted");
    let client_side = dialled.expect("server accepted");
    assert_eq!(transport::peer_digest(&server_side), Some(b.digest()));
    assert_eq!(transport::peer_digest(&client_side), Some(a.digest()));
}

#[tokio::test]
async fn control_frames_round_trip() {
    let (_server, _client, server_side, client_side) =
        pair(&Tuning::default(), &Tuning::default()).await;
    let (mut send, mut client_recv) = client_side.open_bi().await.expect("stream allowed");
    let largest = vec![7u8; MAX_CONTROL_FRAME];
    let frames: [&[u8]; 4] = [b"hello", b"", &[0, 1, 2, 255], &largest];
    for frame in frames {
        transport::write_frame(&mut send, frame)
            .await
            .expect("written");
    }
    send.finish().expect("stream open");

    let (mut reply, mut recv) = within("accept_bi", server_side.accept_bi())
        .await
        .expect("stream");
    let mut buf = Vec::new();
    for frame in frames {
        let len = within("frame", transport::read_frame(&mut recv, &mut buf))
            .await
            .expect("frame");
        assert_eq!(len, Some(frame.len()));
        assert_eq!(&buf[..], frame);
    }
    assert_eq!(
        within("end", transport::read_frame(&mut recv, &mut buf))
            .await
            .expect("clean end"),
        None
    );

    transport::write_frame(&mut reply, b"ack")
        .await
        .expect("written");
    let len = within("reply", transport::read_frame(&mut client_recv, &mut buf))
        .await
        .expect("frame");
    assert_eq!((len, &buf[..]), (Some(3), &b"ack"[..]));
}

#[tokio::test]
async fn oversize_frames_are_errors() {
    let (_server, _client, server_side, client_side) =
        pair(&Tuning::default(), &Tuning::default()).await;

    let (mut send, _recv) = client_side.open_bi().await.expect("stream allowed");
    let too_big = vec![0u8; MAX_CONTROL_FRAME + 1];
    assert!(matches!(
        transport::write_frame(&mut send, &too_big).await,
        Err(TransportError::FrameTooLarge { len, max: MAX_CONTROL_FRAME }) if len == MAX_CONTROL_FRAME + 1
    ));
    // A peer that announces 65,535 bytes is refused before anything is allocated.
    send.write_all(&[0xff, 0xff]).await.expect("written");
    let (_reply, mut recv) = within("accept_bi", server_side.accept_bi())
        .await
        .expect("stream");
    let mut buf = Vec::new();
    assert!(matches!(
        within("oversize", transport::read_frame(&mut recv, &mut buf)).await,
        Err(TransportError::FrameTooLarge {
            len: 0xffff,
            max: MAX_CONTROL_FRAME
        })
    ));
    assert!(buf.capacity() <= MAX_CONTROL_FRAME);
}

#[tokio::test]
async fn truncated_frame_body_is_an_error() {
    let (_server, _client, server_side, client_side) =
        pair(&Tuning::default(), &Tuning::default()).await;
    let (mut send, _recv) = client_side.open_bi().await.expect("stream allowed");
    // The stream ends three bytes into a ten-byte frame.
    send.write_all(&[0, 10, 1, 2, 3]).await.expect("written");
    send.finish().expect("stream open");
    let (_reply, mut recv) = within("accept_bi", server_side.accept_bi())
        .await
        .expect("stream");
    let mut buf = Vec::new();
    assert!(matches!(
        within("truncated body", transport::read_frame(&mut recv, &mut buf)).await,
        Err(TransportError::FrameTruncated {
            expected: 10,
            received: 3
        })
    ));
}

#[tokio::test]
async fn truncated_length_prefix_is_an_error() {
    let (_server, _client, server_side, client_side) =
        pair(&Tuning::default(), &Tuning::default()).await;
    let (mut send, _recv) = client_side.open_bi().await.expect("stream allowed");
    send.write_all(&[0]).await.expect("written");
    send.finish().expect("stream open");
    let (_reply, mut recv) = within("accept_bi", server_side.accept_bi())
        .await
        .expect("stream");
    let mut buf = Vec::new();
    assert!(matches!(
        within(
            "truncated prefix",
            transport::read_frame(&mut recv, &mut buf)
        )
        .await,
        Err(TransportError::FrameTruncated {
            expected: 2,
            received: 1
        })
    ));
}

#[tokio::test]
async fn client_with_unknown_certificate_is_refused() {
    let (a, b, stranger) = (Keys::generate(), Keys::generate(), Keys::generate());
    let server = open(&a, vec![b.digest()], &Tuning::default());
    let client = open(&stranger, vec![a.digest()], &Tuning::default());
    let addr = server.local_addr().expect("bound");

    let (accepted, dialled) = within("handshake", async {
        tokio::join!(
            transport::accept(&server),
            transport::connect(&client, addr, a.digest())
        )
    })
    .await;
    match accepted.expect("endpoint open") {
        Err(TransportError::PeerRejected { presented, .. }) => {
            assert_eq!(presented, digest_hex(&stranger.digest()))
        }
        other => panic!("expected PeerRejected, got {other:?}"),
    }

    // The dialler finishes its half of the handshake before the server judges its certificate,
    // so it may hold a connection for a moment: whatever it sends must never be accepted.
    if let Ok(connection) = dialled {
        let _ = connection.send_datagram(b"let me in".to_vec().into());
        let reason = within("close after rejection", connection.closed()).await;
        // The alert's reason names the certificate the server saw, for the stranger's operator.
        assert!(
            reason.to_string().contains(&digest_hex(&stranger.digest())),
            "{reason}"
        );
        assert!(
            matches!(reason, quinn::ConnectionError::ConnectionClosed(_)),
            "{reason:?}"
        );
    }
    let next = tokio::time::timeout(Duration::from_millis(500), transport::accept(&server)).await;
    assert!(
        next.is_err(),
        "no connection from the stranger may be accepted: {next:?}"
    );
}

#[tokio::test]
async fn server_with_wrong_certificate_is_refused() {
    let (a, b, expected) = (Keys::generate(), Keys::generate(), Keys::generate());
    let server = open(&a, vec![b.digest()], &Tuning::default());
    let client = open(&b, vec![], &Tuning::default());
    let addr = server.local_addr().expect("bound");

    let (accepted, dialled) = within("handshake", async {
        tokio::join!(
            transport::accept(&server),
            transport::connect(&client, addr, expected.digest())
        )
    })
    .await;
    match dialled {
        Err(TransportError::PeerRejected {
            presented,
            addr: peer,
        }) => {
            assert_eq!(presented, digest_hex(&a.digest()));
            assert_eq!(peer, addr);
        }
        other => panic!("expected PeerRejected, got {other:?}"),
    }
    assert!(
        matches!(accepted, Some(Err(TransportError::Handshake { .. }))),
        "the server sees the client's alert: {accepted:?}"
    );
}

#[tokio::test]
async fn keep_alive_holds_a_connection_past_the_idle_timeout() {
    let short = Tuning {
        keep_alive: Some(Duration::from_millis(100)),
        idle_timeout: Duration::from_millis(400),
        ..Tuning::default()
    };
    let (_server, _client, server_side, client_side) = pair(&short, &short).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(client_side.close_reason().is_none());
    assert!(server_side.close_reason().is_none());
    client_side
        .send_datagram(b"still here".to_vec().into())
        .expect("open");
    assert_eq!(
        &within("datagram", server_side.read_datagram())
            .await
            .expect("open")[..],
        b"still here"
    );
}

#[tokio::test]
async fn without_keep_alive_an_idle_connection_times_out() {
    let short = Tuning {
        keep_alive: None,
        idle_timeout: Duration::from_millis(400),
        ..Tuning::default()
    };
    let (_server, _client, _server_side, client_side) = pair(&short, &short).await;
    let started = tokio::time::Instant::now();
    let reason = within("idle timeout", client_side.closed()).await;
    assert!(
        matches!(reason, quinn::ConnectionError::TimedOut),
        "{reason:?}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "closed after {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn tiny_wan_mtu_is_refused() {
    let keys = Keys::generate();
    let tuning = Tuning {
        wan_mtu: 1000,
        ..Tuning::default()
    };
    let result = transport::endpoint(loopback(), keys.identity(), vec![], &tuning);
    assert!(matches!(
        result,
        Err(TransportError::WanMtuTooSmall {
            wan_mtu: 1000,
            minimum: 1228
        })
    ));
}
