//! The QUIC transport: one quinn endpoint per gateway, mutual TLS 1.3 pinned to SHA-256
//! certificate digests, packet batches in DATAGRAM frames and control messages on one
//! bidirectional stream.
//!
//! # Trust
//! There is no CA. Each side proves possession of the key in its certificate (rustls checks the
//! handshake signature with the provider's algorithms) and the certificate itself is trusted iff
//! the SHA-256 digest of its DER bytes is pinned: the dialler pins exactly the peer it dials
//! ([`connect`]), the acceptor allows every configured peer ([`endpoint`]'s `allowed`).
//! Certificate names, validity dates and intermediates are ignored: the pin is the identity, as
//! a WireGuard public key is. Session resumption and 0-RTT are off, so every connection runs the
//! pin check against the pins in force when it is made.
//!
//! A rejected certificate surfaces as [`TransportError::PeerRejected`] with the hex digest the
//! peer presented, which the operator can compare with the `sha256:` fingerprint in the config.
//!
//! # Datagrams
//! Use [`Connection::send_datagram`] / [`Connection::read_datagram`]. Read
//! [`Connection::max_datagram_size`] before every send: it starts near 1160 bytes, grows as
//! path MTU discovery runs (bounded by [`Tuning::wan_mtu`]) and can shrink again. quinn drops
//! the oldest queued datagram when the send buffer ([`Tuning::datagram_send_buffer`]) is full.

use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use quinn::crypto::rustls::{NoInitialCipherSuite, QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{CipherSuite, DigitallySignedStruct, DistinguishedName, SignatureScheme};

pub use quinn::{Connection, RecvStream, SendStream};

/// ALPN protocol id; a peer that does not speak it fails the handshake.
pub const ALPN: &[u8] = b"sluice/1";

/// Largest control frame [`write_frame`] sends and [`read_frame`] accepts, in bytes.
///
/// Control messages (hello, acks, resets, stats) are tens to hundreds of bytes; the bound leaves
/// room for growth while keeping the per-stream buffer small. It is below the 65,535 that the
/// 2-byte length prefix could express so that an oversize length is detectable at all.
pub const MAX_CONTROL_FRAME: usize = 16 * 1024;

/// Name sent in the TLS SNI. Pinning ignores names, so every peer gets the same one.
const SERVER_NAME: &str = "sluice";

/// QUIC requires every path to carry 1200-byte UDP payloads.
const QUIC_MIN_UDP_PAYLOAD: u16 = 1200;

/// IPv4 header (no options) plus UDP header.
const IPV4_UDP_OVERHEAD: u16 = 20 + 8;

/// IPv6 header (no extension headers) plus UDP header.
const IPV6_UDP_OVERHEAD: u16 = 40 + 8;

/// Everything that can go wrong in the transport.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The UDP socket could not be created or bound, or quinn could not take it over.
    #[error("cannot bind the QUIC endpoint to {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// A socket option (buffer size) could not be set or read back.
    #[error("cannot set {option} on the UDP socket bound to {addr}")]
    SocketOption {
        addr: SocketAddr,
        option: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The WAN MTU cannot carry QUIC's minimum UDP payload.
    #[error("WAN MTU {wan_mtu} is below the {minimum} bytes QUIC needs on this address family")]
    WanMtuTooSmall { wan_mtu: u16, minimum: u16 },
    /// The idle timeout does not fit QUIC's transport parameter.
    #[error("idle timeout {value:?} is out of range")]
    IdleTimeout { value: Duration },
    /// rustls refused our own identity or protocol settings.
    #[error("invalid TLS configuration")]
    Tls {
        #[source]
        source: rustls::Error,
    },
    /// The crypto provider lacks the cipher suite QUIC needs for Initial packets.
    #[error("the TLS provider cannot protect QUIC Initial packets")]
    QuicTls {
        #[source]
        source: NoInitialCipherSuite,
    },
    /// quinn refused to start dialling (bad address, endpoint stopping, ...).
    #[error("cannot start a connection to {addr}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: quinn::ConnectError,
    },
    /// The handshake with `addr` failed for a reason other than our pin check.
    #[error("QUIC handshake with {addr} failed")]
    Handshake {
        addr: SocketAddr,
        #[source]
        source: quinn::ConnectionError,
    },
    /// The peer at `addr` presented a certificate whose digest is not pinned.
    #[error("peer {addr} presented certificate sha256:{presented}, which is not pinned")]
    PeerRejected {
        addr: SocketAddr,
        /// Lowercase hex SHA-256 of the DER certificate the peer presented.
        presented: String,
    },
    /// The handshake succeeded but no peer certificate is available (should not happen: client
    /// authentication is mandatory).
    #[error("peer {addr} completed the handshake without a certificate")]
    NoPeerCertificate { addr: SocketAddr },
    /// A control frame is longer than [`MAX_CONTROL_FRAME`] (sent or received).
    #[error("control frame of {len} bytes exceeds the {max}-byte limit")]
    FrameTooLarge { len: usize, max: usize },
    /// The control stream ended inside a frame (in its length prefix or its body).
    #[error("control stream ended {received} bytes into a {expected}-byte frame part")]
    FrameTruncated { expected: usize, received: usize },
    /// Reading the control stream failed.
    #[error("cannot read the control stream")]
    ControlRead {
        #[source]
        source: quinn::ReadError,
    },
    /// Writing the control stream failed.
    #[error("cannot write the control stream")]
    ControlWrite {
        #[source]
        source: quinn::WriteError,
    },
}

/// Congestion controller for the connection (it governs DATAGRAM frames too).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Congestion {
    /// CUBIC, the default of Linux TCP.
    #[default]
    Cubic,
    /// NewReno.
    NewReno,
    /// BBR (marked experimental in quinn).
    Bbr,
}

/// Transport knobs. [`Tuning::default`] suits a WAN of a few to a few hundred Mbit/s.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tuning {
    /// Interval of keep-alive pings; `None` sends none. Must be below the idle timeout to keep
    /// an idle link (and its NAT mappings) up.
    pub keep_alive: Option<Duration>,
    /// A connection with no traffic for this long is closed. The smaller of the two peers'
    /// values applies.
    pub idle_timeout: Duration,
    /// Bytes of outgoing datagrams quinn queues while the congestion window is full; beyond it
    /// the oldest are dropped. Keep it near the bandwidth-delay product: the default 256 KiB is
    /// 0.1 s at 20 Mbit/s (quinn's own 1 MiB default is ~0.8 s at 10 Mbit/s).
    pub datagram_send_buffer: usize,
    /// Bytes of received datagrams quinn holds until the application reads them; beyond it the
    /// oldest are dropped. The default 4 MiB is at least what the UDP socket holds (2 MiB of
    /// `SO_RCVBUF`, which Linux doubles and charges per buffer, not per payload byte, so it
    /// holds less than 4 MiB of datagrams), so a gateway that stalls (a preempted vCPU, a busy
    /// Raspberry Pi) catches up without losing what the kernel already accepted. At 1 MiB, 8 s iperf3 runs in the
    /// bench topology under CPU steal lost up to 709 datagrams (each a whole block) in this
    /// buffer; at 2 and 4 MiB none, with throughput and ping times unchanged within noise.
    pub datagram_receive_buffer: usize,
    /// `SO_SNDBUF` to request for the UDP socket; `None` keeps the kernel's default.
    pub socket_send_buffer: Option<usize>,
    /// `SO_RCVBUF` to request for the UDP socket; `None` keeps the kernel's default.
    pub socket_receive_buffer: Option<usize>,
    /// MTU of the WAN interface; path MTU discovery probes up to the UDP payload it allows.
    pub wan_mtu: u16,
    /// Congestion controller. The default is BBR: it governs the tunnel's datagrams, which
    /// carry inner TCP flows with their own congestion control, and a loss-driven controller
    /// (CUBIC) cut its window on every random loss of the WAN, capping the tunnel at the
    /// Mathis rate of the outer path (about 3 Mbit/s at 1% loss and 40 ms RTT) while the
    /// inner TCP alone would do far better. `netns-tests/bench --reliability --quick`, 2 vCPU,
    /// noisy: 1% loss + 20 ms ± 5 ms 3.4 -> 50 Mbit/s, 5% 1.5 -> 48, 1% reordered 58 -> 255,
    /// 0.1% corrupted 84 -> 293; clean rows within the noise.
    pub congestion: Congestion,
    /// QUIC loss detection: a packet is declared lost once a packet sent this many after it
    /// is acknowledged. quinn's default (3, RFC 9002) reads every reordering by more than three
    /// datagrams as a loss; each is a congestion event (quinn never undoes a spurious one), so
    /// a jittery link (20 ms ± 5 ms reorders hundreds of datagrams at 100 Mbit/s) shrank the
    /// congestion window to its minimum. The inner TCP sees real losses anyway; the tunnel's
    /// own detection relies on `time_threshold` instead.
    pub packet_threshold: u32,
    /// QUIC loss detection: ... or once it was sent this many percent of an RTT (the larger of
    /// the smoothed and the latest) before an acknowledged packet. quinn's default is 112.5%;
    /// 150% leaves room for RTT jitter of a quarter of the RTT.
    pub time_threshold_percent: u16,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            keep_alive: Some(Duration::from_secs(5)),
            idle_timeout: Duration::from_secs(30),
            datagram_send_buffer: 256 * 1024,
            datagram_receive_buffer: 4 * 1024 * 1024,
            socket_send_buffer: Some(2 * 1024 * 1024),
            socket_receive_buffer: Some(2 * 1024 * 1024),
            wan_mtu: 1500,
            congestion: Congestion::Bbr,
            packet_threshold: 1000,
            time_threshold_percent: 150,
        }
    }
}

/// This gateway's certificate and private key (DER).
pub struct Identity {
    /// Self-signed end-entity certificate; its SHA-256 is what peers pin.
    pub certificate: CertificateDer<'static>,
    /// The certificate's private key.
    pub private_key: PrivateKeyDer<'static>,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("certificate", &digest_hex(&cert_digest(&self.certificate)))
            .field("private_key", &"<redacted>")
            .finish()
    }
}

/// SHA-256 of a DER certificate: the pin that identifies a peer.
pub fn cert_digest(certificate: &CertificateDer<'_>) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, certificate.as_ref());
    let mut out = [0; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Lowercase hex of a digest, as shown after `sha256:` in fingerprints and logs.
pub fn digest_hex(digest: &[u8; 32]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(64);
    for byte in digest {
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    out
}

/// A QUIC endpoint that accepts connections from pinned peers and dials pinned peers.
pub struct Endpoint {
    /// The quinn endpoint that owns the UDP socket.
    quic: quinn::Endpoint,
    /// Our certificate, key and crypto provider, shared by every handshake.
    tls: Arc<TlsSetup>,
    /// Transport parameters from [`Tuning`], shared by every connection in both directions.
    transport: Arc<quinn::TransportConfig>,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("local_addr", &self.quic.local_addr().ok())
            .field("allowed", &self.tls.allowed.len())
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// The address the UDP socket is bound to (with the real port if 0 was asked for).
    ///
    /// # Errors
    /// The socket's address cannot be read.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.quic.local_addr()
    }

    /// The underlying quinn endpoint, for closing it and waiting until it is idle.
    pub fn quic(&self) -> &quinn::Endpoint {
        &self.quic
    }
}

/// What every handshake on one endpoint shares.
struct TlsSetup {
    /// ring, with the cipher suites in the order this CPU prefers.
    provider: Arc<CryptoProvider>,
    /// Our certificate with its parsed signing key, parsed once.
    certified: Arc<CertifiedKey>,
    /// Digests of the client certificates we accept.
    allowed: Arc<[[u8; 32]]>,
    /// Whether this CPU has AES instructions; without them our cipher order overrides the
    /// client's, because AES in software is what would make us the bottleneck.
    aes_hardware: bool,
}

impl TlsSetup {
    fn server_config(
        &self,
        rejected: Arc<OnceLock<[u8; 32]>>,
        transport: &Arc<quinn::TransportConfig>,
    ) -> Result<quinn::ServerConfig, TransportError> {
        let verifier = PinnedClients {
            allowed: self.allowed.clone(),
            algorithms: self.provider.signature_verification_algorithms,
            rejected,
        };
        let mut tls = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|source| TransportError::Tls { source })?
            .with_client_cert_verifier(Arc::new(verifier))
            .with_cert_resolver(Arc::new(SingleCertAndKey::from(self.certified.clone())));
        tls.alpn_protocols = vec![ALPN.to_vec()];
        tls.ignore_client_order = !self.aes_hardware;
        // No resumption: a resumed session skips the certificate, hence the pin check.
        tls.send_tls13_tickets = 0;
        tls.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        let quic =
            QuicServerConfig::try_from(tls).map_err(|source| TransportError::QuicTls { source })?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
        config.transport_config(transport.clone());
        Ok(config)
    }

    fn client_config(
        &self,
        verifier: PinnedServer,
        transport: &Arc<quinn::TransportConfig>,
    ) -> Result<quinn::ClientConfig, TransportError> {
        let mut tls = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|source| TransportError::Tls { source })?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_cert_resolver(Arc::new(SingleCertAndKey::from(self.certified.clone())));
        tls.alpn_protocols = vec![ALPN.to_vec()];
        tls.resumption = rustls::client::Resumption::disabled();
        let quic =
            QuicClientConfig::try_from(tls).map_err(|source| TransportError::QuicTls { source })?;
        let mut config = quinn::ClientConfig::new(Arc::new(quic));
        config.transport_config(transport.clone());
        Ok(config)
    }
}

/// Opens a QUIC endpoint on `bind` that accepts peers whose certificate digest is in `allowed`
/// and can dial peers with [`connect`].
///
/// # Errors
/// The socket cannot be bound or tuned, the WAN MTU is below what QUIC needs, the idle timeout is
/// out of range, or rustls refuses the identity.
///
/// # Panics
/// Outside a tokio runtime (quinn registers the socket with the runtime's reactor).
pub fn endpoint(
    bind: SocketAddr,
    identity: Identity,
    allowed: Vec<[u8; 32]>,
    tuning: &Tuning,
) -> Result<Endpoint, TransportError> {
    if tuning
        .keep_alive
        .is_some_and(|interval| interval >= tuning.idle_timeout)
    {
        tracing::warn!(keep_alive = ?tuning.keep_alive, idle_timeout = ?tuning.idle_timeout,
            "keep-alive is not shorter than the idle timeout: idle links will be closed");
    }
    let (reset_key, cid_key) = restart_stable_keys(&identity.private_key);
    let aes_hardware = has_aes_instructions();
    let provider = Arc::new(crypto_provider(aes_hardware));
    let certified =
        CertifiedKey::from_der(vec![identity.certificate], identity.private_key, &provider)
            .map_err(|source| TransportError::Tls { source })?;
    let tls = Arc::new(TlsSetup {
        provider,
        certified: Arc::new(certified),
        allowed: allowed.into(),
        aes_hardware,
    });
    let transport = Arc::new(transport_config(tuning, udp_overhead(bind))?);
    // The endpoint needs a server config to accept at all; `accept` replaces it per connection
    // with one whose verifier reports the digest it rejected.
    let server = tls.server_config(Arc::new(OnceLock::new()), &transport)?;
    let socket = udp_socket(bind, tuning)?;
    let mut endpoint_config = quinn::EndpointConfig::new(Arc::new(reset_key));
    endpoint_config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    let quic = quinn::Endpoint::new(
        endpoint_config,
        Some(server),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|source| TransportError::Bind { addr: bind, source })?;
    Ok(Endpoint {
        quic,
        tls,
        transport,
    })
}

/// Keys that survive a restart, derived one-way from our private key instead of drawn at
/// random: the key of QUIC stateless resets and the key our connection IDs are signed with.
///
/// Why: when this gateway comes back after a crash, the peer still sends on the old
/// connection. With both keys unchanged, the new process recognises those connection IDs as
/// its own (quinn drops packets whose ID fails validation without a word) and answers with a
/// stateless reset whose token the peer learned from the old process; the peer drops the dead
/// connection at once and dials again, instead of waiting out the idle timeout (30 s). Reset
/// tokens and connection IDs reveal nothing of the private key (one-way derivations).
fn restart_stable_keys(private_key: &PrivateKeyDer<'_>) -> (ring::hmac::Key, u64) {
    let derive = |label: &[u8]| {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(label);
        ctx.update(private_key.secret_der());
        ctx.finish()
    };
    let reset = derive(b"sluice stateless reset key v1\0");
    let cid = derive(b"sluice connection id key v1\0");
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(&cid.as_ref()[..8]);
    (
        ring::hmac::Key::new(ring::hmac::HMAC_SHA256, reset.as_ref()),
        u64::from_le_bytes(cid_key),
    )
}

/// Dials `addr` and completes the handshake iff the peer's certificate digest is `expected`.
///
/// On the dialling side the handshake completes before the acceptor has checked *our*
/// certificate: if it rejects us, the returned connection closes right away with a TLS alert.
/// Treat the peer's first control message, not this return, as proof that it accepted us.
///
/// # Errors
/// [`TransportError::PeerRejected`] with the presented digest if the peer's certificate is not
/// `expected` (also logged), [`TransportError::Connect`] if dialling cannot start,
/// [`TransportError::Handshake`] for any other handshake failure (timeout, refused, ALPN).
pub async fn connect(
    endpoint: &Endpoint,
    addr: SocketAddr,
    expected: [u8; 32],
) -> Result<Connection, TransportError> {
    let rejected = Arc::new(OnceLock::new());
    let verifier = PinnedServer {
        expected,
        algorithms: endpoint.tls.provider.signature_verification_algorithms,
        rejected: rejected.clone(),
    };
    let config = endpoint.tls.client_config(verifier, &endpoint.transport)?;
    let connecting = endpoint
        .quic
        .connect_with(config, addr, SERVER_NAME)
        .map_err(|source| TransportError::Connect { addr, source })?;
    match connecting.await {
        Ok(connection) => Ok(connection),
        Err(source) => Err(handshake_error(addr, &rejected, source)),
    }
}

/// Waits for the next incoming connection attempt, before any handshake work. Hand it to
/// [`handshake`], ideally on its own task, so one slow or hostile handshake never holds up the
/// next peer.
pub async fn incoming(endpoint: &Endpoint) -> Option<quinn::Incoming> {
    endpoint.quic.accept().await
}

/// Runs the handshake of an incoming connection: mutual TLS 1.3 with the client's certificate
/// checked against the allowed digests. Returns the connection and the peer's digest.
///
/// # Errors
/// [`TransportError::PeerRejected`] (with the presented digest) for an unknown certificate,
/// or the handshake's own failure.
pub async fn handshake(
    endpoint: &Endpoint,
    incoming: quinn::Incoming,
) -> Result<(Connection, [u8; 32]), TransportError> {
    let addr = incoming.remote_address();
    let rejected = Arc::new(OnceLock::new());
    let config = match endpoint
        .tls
        .server_config(rejected.clone(), &endpoint.transport)
    {
        Ok(config) => config,
        Err(error) => {
            incoming.refuse();
            return Err(error);
        }
    };
    let outcome = match incoming.accept_with(Arc::new(config)) {
        Ok(connecting) => connecting.await,
        Err(source) => Err(source),
    };
    match outcome {
        Ok(connection) => match peer_digest(&connection) {
            Some(digest) => Ok((connection, digest)),
            None => Err(TransportError::NoPeerCertificate { addr }),
        },
        Err(source) => Err(handshake_error(addr, &rejected, source)),
    }
}

/// Waits for the next incoming connection and completes its handshake; returns the connection
/// with the digest of the certificate the peer presented.
///
/// Handshakes are completed one at a time: a slow handshake delays the next accept by at most
/// the idle timeout. The gateway uses [`incoming`] and [`handshake`] instead, one task per
/// handshake, so a flood of bogus handshakes cannot hold up a real peer.
///
/// Returns `None` once the endpoint is closed. Dropping the future mid-handshake abandons that
/// one connection attempt (the peer retries); the endpoint is unaffected.
///
/// # Errors
/// [`TransportError::PeerRejected`] with the presented digest if the client's certificate is not
/// in the allowed set (also logged), [`TransportError::Handshake`] for any other failure. The
/// endpoint keeps accepting after an error.
pub async fn accept(endpoint: &Endpoint) -> Option<Result<(Connection, [u8; 32]), TransportError>> {
    let incoming = incoming(endpoint).await?;
    Some(handshake(endpoint, incoming).await)
}

/// Digest of the end-entity certificate the peer presented on `connection`, if any.
pub fn peer_digest(connection: &Connection) -> Option<[u8; 32]> {
    let identity = connection.peer_identity()?;
    let chain = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    chain.first().map(cert_digest)
}

/// Sends one control frame: a 2-byte big-endian length, then `payload`.
///
/// # Errors
/// [`TransportError::FrameTooLarge`] (nothing is written) if `payload` is longer than
/// [`MAX_CONTROL_FRAME`]; [`TransportError::ControlWrite`] if the stream fails.
pub async fn write_frame(stream: &mut SendStream, payload: &[u8]) -> Result<(), TransportError> {
    let len = u16::try_from(payload.len())
        .ok()
        .filter(|&len| usize::from(len) <= MAX_CONTROL_FRAME)
        .ok_or(TransportError::FrameTooLarge {
            len: payload.len(),
            max: MAX_CONTROL_FRAME,
        })?;
    let write = |source| TransportError::ControlWrite { source };
    stream.write_all(&len.to_be_bytes()).await.map_err(write)?;
    stream.write_all(payload).await.map_err(write)
}

/// Reads one control frame into `buf` (replacing its contents) and returns its length, or
/// `None` if the stream ended cleanly between frames.
///
/// `buf` grows to at most [`MAX_CONTROL_FRAME`] bytes; a longer announced length is refused
/// before anything is allocated.
///
/// # Errors
/// [`TransportError::FrameTooLarge`] for a length over [`MAX_CONTROL_FRAME`],
/// [`TransportError::FrameTruncated`] if the stream ends inside a frame,
/// [`TransportError::ControlRead`] if the stream is reset or the connection lost.
pub async fn read_frame(
    stream: &mut RecvStream,
    buf: &mut Vec<u8>,
) -> Result<Option<usize>, TransportError> {
    let mut prefix = [0; 2];
    match read_exact(stream, &mut prefix).await? {
        0 => return Ok(None),
        2 => {}
        received => {
            return Err(TransportError::FrameTruncated {
                expected: 2,
                received,
            });
        }
    }
    let len = usize::from(u16::from_be_bytes(prefix));
    if len > MAX_CONTROL_FRAME {
        return Err(TransportError::FrameTooLarge {
            len,
            max: MAX_CONTROL_FRAME,
        });
    }
    buf.clear();
    buf.resize(len, 0);
    let received = read_exact(stream, buf).await?;
    if received < len {
        return Err(TransportError::FrameTruncated {
            expected: len,
            received,
        });
    }
    Ok(Some(len))
}

/// Fills `buf` unless the stream finishes first; returns how many bytes were read.
async fn read_exact(stream: &mut RecvStream, buf: &mut [u8]) -> Result<usize, TransportError> {
    match stream.read_exact(buf).await {
        Ok(()) => Ok(buf.len()),
        Err(quinn::ReadExactError::FinishedEarly(received)) => Ok(received),
        Err(quinn::ReadExactError::ReadError(source)) => {
            Err(TransportError::ControlRead { source })
        }
    }
}

/// Turns a failed handshake into our error, naming the digest if our pin check caused it.
fn handshake_error(
    addr: SocketAddr,
    rejected: &OnceLock<[u8; 32]>,
    source: quinn::ConnectionError,
) -> TransportError {
    match rejected.get() {
        Some(digest) => {
            let presented = digest_hex(digest);
            tracing::warn!(peer = %addr, presented = %format_args!("sha256:{presented}"),
                "rejected a peer certificate that is not pinned");
            TransportError::PeerRejected { addr, presented }
        }
        None => TransportError::Handshake { addr, source },
    }
}

/// ring with TLS 1.3 suites only (the `tls12` feature is off); ChaCha20-Poly1305 first when the
/// CPU has no AES instructions (Raspberry Pi 4), the provider's order otherwise. AES-128-GCM
/// stays in the list either way: QUIC Initial packets need it.
fn crypto_provider(aes_hardware: bool) -> CryptoProvider {
    let mut provider = rustls::crypto::ring::default_provider();
    if !aes_hardware {
        // Stable sort: only ChaCha moves to the front.
        provider
            .cipher_suites
            .sort_by_key(|suite| suite.suite() != CipherSuite::TLS13_CHACHA20_POLY1305_SHA256);
    }
    provider
}

#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
fn has_aes_instructions() -> bool {
    std::arch::is_x86_feature_detected!("aes")
}

#[cfg(target_arch = "aarch64")]
fn has_aes_instructions() -> bool {
    std::arch::is_aarch64_feature_detected!("aes")
}

#[cfg(not(any(target_arch = "x86", target_arch = "x86_64", target_arch = "aarch64")))]
fn has_aes_instructions() -> bool {
    false
}

/// IP + UDP header bytes for the address family of `bind`. A dual-stack `[::]` socket may carry
/// IPv4 too; the IPv6 figure is the safe one for it.
fn udp_overhead(bind: SocketAddr) -> u16 {
    if bind.is_ipv4() {
        IPV4_UDP_OVERHEAD
    } else {
        IPV6_UDP_OVERHEAD
    }
}

/// Largest UDP payload a WAN MTU allows, or an error if QUIC cannot run over it.
fn max_udp_payload(wan_mtu: u16, overhead: u16) -> Result<u16, TransportError> {
    match wan_mtu.checked_sub(overhead) {
        Some(payload) if payload >= QUIC_MIN_UDP_PAYLOAD => Ok(payload),
        _ => Err(TransportError::WanMtuTooSmall {
            wan_mtu,
            minimum: QUIC_MIN_UDP_PAYLOAD + overhead,
        }),
    }
}

fn transport_config(
    tuning: &Tuning,
    udp_overhead: u16,
) -> Result<quinn::TransportConfig, TransportError> {
    let upper_bound = max_udp_payload(tuning.wan_mtu, udp_overhead)?;
    let idle = quinn::IdleTimeout::try_from(tuning.idle_timeout).map_err(|_| {
        TransportError::IdleTimeout {
            value: tuning.idle_timeout,
        }
    })?;
    let mut mtu_discovery = quinn::MtuDiscoveryConfig::default();
    mtu_discovery.upper_bound(upper_bound);

    let mut config = quinn::TransportConfig::default();
    config
        .keep_alive_interval(tuning.keep_alive)
        .max_idle_timeout(Some(idle))
        .datagram_send_buffer_size(tuning.datagram_send_buffer)
        .datagram_receive_buffer_size(Some(tuning.datagram_receive_buffer))
        .initial_mtu(QUIC_MIN_UDP_PAYLOAD)
        .min_mtu(QUIC_MIN_UDP_PAYLOAD)
        .mtu_discovery_config(Some(mtu_discovery))
        // One control stream per connection; nothing uses unidirectional streams.
        .max_concurrent_bidi_streams(1u32.into())
        .max_concurrent_uni_streams(0u32.into())
        .packet_threshold(tuning.packet_threshold)
        .time_threshold(f32::from(tuning.time_threshold_percent) / 100.0);
    match tuning.congestion {
        Congestion::Cubic => config
            .congestion_controller_factory(Arc::new(quinn::congestion::CubicConfig::default())),
        Congestion::NewReno => config
            .congestion_controller_factory(Arc::new(quinn::congestion::NewRenoConfig::default())),
        Congestion::Bbr => {
            config.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()))
        }
    };
    Ok(config)
}

/// Creates the UDP socket with the requested buffer sizes, bound to `bind`.
fn udp_socket(bind: SocketAddr, tuning: &Tuning) -> Result<std::net::UdpSocket, TransportError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let bind_error = |source| TransportError::Bind { addr: bind, source };
    let socket = Socket::new(Domain::for_address(bind), Type::DGRAM, Some(Protocol::UDP))
        .map_err(bind_error)?;
    let option_error = |option| {
        move |source| TransportError::SocketOption {
            addr: bind,
            option,
            source,
        }
    };
    if let Some(requested) = tuning.socket_send_buffer {
        socket
            .set_send_buffer_size(requested)
            .map_err(option_error("SO_SNDBUF"))?;
        let granted = socket
            .send_buffer_size()
            .map_err(option_error("SO_SNDBUF"))?;
        warn_if_clamped("SO_SNDBUF", "net.core.wmem_max", requested, granted);
    }
    if let Some(requested) = tuning.socket_receive_buffer {
        socket
            .set_recv_buffer_size(requested)
            .map_err(option_error("SO_RCVBUF"))?;
        let granted = socket
            .recv_buffer_size()
            .map_err(option_error("SO_RCVBUF"))?;
        warn_if_clamped("SO_RCVBUF", "net.core.rmem_max", requested, granted);
    }
    socket.bind(&bind.into()).map_err(bind_error)?;
    Ok(socket.into())
}

/// Linux reports twice the size it was asked for (the doubled value covers its bookkeeping), so
/// anything below the request means the kernel capped it.
fn warn_if_clamped(option: &str, sysctl: &str, requested: usize, granted: usize) {
    if granted < requested {
        tracing::warn!(
            option,
            requested,
            granted,
            sysctl,
            "kernel capped the UDP socket buffer; raise the sysctl"
        );
    }
}

/// Client side: accepts exactly one certificate digest, the one pinned for the peer dialled.
#[derive(Debug)]
struct PinnedServer {
    /// Digest pinned for the peer being dialled.
    expected: [u8; 32],
    /// Signature algorithms of our provider, for the handshake signature.
    algorithms: WebPkiSupportedAlgorithms,
    /// Set to the presented digest if it was not `expected`, so the caller can report it.
    rejected: Arc<OnceLock<[u8; 32]>>,
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented = cert_digest(end_entity);
        if presented == self.expected {
            Ok(ServerCertVerified::assertion())
        } else {
            let _ = self.rejected.set(presented);
            Err(not_pinned(presented))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::PeerIncompatible::Tls13RequiredForQuic.into())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Server side: requires a client certificate and accepts it iff its digest is allowed.
#[derive(Debug)]
struct PinnedClients {
    /// Digests of every configured peer.
    allowed: Arc<[[u8; 32]]>,
    /// Signature algorithms of our provider, for the handshake signature.
    algorithms: WebPkiSupportedAlgorithms,
    /// Set to the presented digest if it was not allowed, so the caller can report it.
    rejected: Arc<OnceLock<[u8; 32]>>,
}

impl ClientCertVerifier for PinnedClients {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let presented = cert_digest(end_entity);
        if self.allowed.contains(&presented) {
            Ok(ClientCertVerified::assertion())
        } else {
            let _ = self.rejected.set(presented);
            Err(not_pinned(presented))
        }
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::PeerIncompatible::Tls13RequiredForQuic.into())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The rustls error for an unpinned certificate. Its text travels in the TLS alert's close
/// reason, so the peer learns which of its certificates we saw.
fn not_pinned(presented: [u8; 32]) -> rustls::Error {
    rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
        Arc::new(NotPinned(presented)),
    )))
}

/// A certificate whose digest is not pinned.
struct NotPinned([u8; 32]);

/// rustls formats `CertificateError::Other` with `Debug`, and that text is the close reason the
/// peer receives: keep it the readable fingerprint rather than 32 decimal bytes.
impl fmt::Debug for NotPinned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NotPinned(sha256:{})", digest_hex(&self.0))
    }
}

impl fmt::Display for NotPinned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "certificate sha256:{} is not pinned",
            digest_hex(&self.0)
        )
    }
}

impl std::error::Error for NotPinned {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chacha_leads_without_aes_and_aes_128_gcm_stays_for_initials() {
        let soft = crypto_provider(false);
        let suites: Vec<_> = soft.cipher_suites.iter().map(|s| s.suite()).collect();
        assert_eq!(suites[0], CipherSuite::TLS13_CHACHA20_POLY1305_SHA256);
        assert!(suites.contains(&CipherSuite::TLS13_AES_128_GCM_SHA256));
        assert!(
            suites
                .iter()
                .all(|s| format!("{s:?}").starts_with("TLS13_"))
        );

        let hard = crypto_provider(true);
        let default: Vec<_> = rustls::crypto::ring::default_provider()
            .cipher_suites
            .iter()
            .map(|s| s.suite())
            .collect();
        let hard: Vec<_> = hard.cipher_suites.iter().map(|s| s.suite()).collect();
        assert_eq!(hard, default);
        assert_eq!(suites.len(), hard.len());
    }

    #[test]
    fn digest_hex_is_lowercase_and_complete() {
        let mut digest = [0u8; 32];
        digest[0] = 0xab;
        digest[31] = 0x0f;
        let hex = digest_hex(&digest);
        assert_eq!(hex.len(), 64);
        assert!(hex.starts_with("ab00"));
        assert!(hex.ends_with("000f"));
    }

    #[test]
    fn cert_digest_is_sha256_of_der() {
        // SHA-256("abc"), FIPS 180-2 appendix B.1.
        let digest = cert_digest(&CertificateDer::from(b"abc".to_vec()));
        assert_eq!(
            digest_hex(&digest),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn wan_mtu_bounds_the_udp_payload() {
        assert_eq!(max_udp_payload(1500, IPV4_UDP_OVERHEAD).unwrap(), 1472);
        assert_eq!(max_udp_payload(1500, IPV6_UDP_OVERHEAD).unwrap(), 1452);
        assert_eq!(max_udp_payload(1228, IPV4_UDP_OVERHEAD).unwrap(), 1200);
        assert!(matches!(
            max_udp_payload(1227, IPV4_UDP_OVERHEAD),
            Err(TransportError::WanMtuTooSmall {
                wan_mtu: 1227,
                minimum: 1228
            })
        ));
        assert!(matches!(
            max_udp_payload(40, IPV6_UDP_OVERHEAD),
            Err(TransportError::WanMtuTooSmall { .. })
        ));
    }
}
