//! The local control socket: `sluice status` connects, sends `status`, and reads a text
//! report of every peer. The socket is created mode 0600 in a root-owned folder, so only
//! root (the daemon's user) can use it; it never shows keys.

use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

use crate::gateway::State;

/// Longest a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Binds the control socket at `path` (replacing a stale one) and serves it until
/// `shutdown`. The returned guard removes the socket file when dropped.
///
/// # Errors
/// The folder cannot be created or the socket cannot be bound.
pub fn serve(
    path: &Path,
    state: Arc<State>,
    shutdown: CancellationToken,
) -> std::io::Result<SocketGuard> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                _ = shutdown.cancelled() => return,
                s = listener.accept() => match s {
                    Ok((s, _)) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "control socket accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let state = state.clone();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(REQUEST_TIMEOUT, answer(stream, &state)).await;
            });
        }
    });
    Ok(SocketGuard(path.to_path_buf()))
}

/// Removes the socket file on drop.
pub struct SocketGuard(std::path::PathBuf);

impl Drop for SocketGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

async fn answer(stream: UnixStream, state: &State) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read).read_line(&mut line).await?;
    let reply = match line.trim() {
        "status" => report(state),
        other => format!("unknown request {other:?}; try `status`\n"),
    };
    write.write_all(reply.as_bytes()).await?;
    write.shutdown().await
}

/// The status report: one block per peer.
pub fn report(state: &State) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "interface {}  mtu {}  shards {}  threads {}  up {}s",
        state.interface,
        state.mtu,
        state.shards,
        state.threads,
        state.started.elapsed().as_secs()
    );
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    // quinn's endpoint counters see handshakes before TLS; ours see how TLS ended. Datagrams
    // that fail QUIC's packet authentication (corrupted, forged, random) are dropped inside
    // quinn without a counter; the per-connection line shows what it did receive.
    let quic = state.endpoint.quic().stats();
    let _ = writeln!(
        out,
        "endpoint: handshakes accepted by QUIC {}  refused {}  ignored {}  failed (TLS/pin/timeout) {}  unknown peer {}  handed to a peer {}",
        quic.accepted_handshakes,
        quic.refused_handshakes,
        quic.ignored_handshakes,
        load(&state.handshakes.failed),
        load(&state.handshakes.unknown_peer),
        load(&state.handshakes.accepted),
    );
    for (i, shard) in state.counters.iter().enumerate() {
        let lan_in: u64 = shard.iter().map(|c| load(&c.lan_in_packets)).sum();
        let lan_out: u64 = shard.iter().map(|c| load(&c.lan_out_packets)).sum();
        let _ = writeln!(
            out,
            "shard {i}: restarts {}  LAN in {lan_in} packets  LAN out {lan_out} packets",
            state.restarts.get(i).map_or(0, |r| load(r))
        );
    }
    for (i, peer) in state.peers.iter().enumerate() {
        let session = &state.sessions[i];
        let conn = session.connection.lock().expect("status lock").clone();
        match &conn {
            Some(c) => {
                let _ = writeln!(
                    out,
                    "peer {}: connected to {}  rtt {:.2} ms  connections so far {}  fingerprint {}",
                    peer.name,
                    c.remote_address(),
                    c.rtt().as_secs_f64() * 1000.0,
                    session.connects.load(std::sync::atomic::Ordering::Relaxed),
                    peer.fingerprint
                );
                let stats = c.stats();
                // Only the send side's I/O count means system calls: quinn-proto 0.11 counts
                // one receive "io" per QUIC packet it handles, whatever recvmmsg or GRO did.
                let _ = writeln!(
                    out,
                    "  QUIC: UDP datagrams in {} out {} ({} send calls)  packets lost {}  congestion events {}  DATAGRAM frames in {} (lost in quinn's receive buffer or still there {}, dropped for a full shard queue {})",
                    stats.udp_rx.datagrams,
                    stats.udp_tx.datagrams,
                    stats.udp_tx.ios,
                    stats.path.lost_packets,
                    stats.path.congestion_events,
                    stats.frame_rx.datagram,
                    stats.frame_rx.datagram.saturating_sub(
                        session
                            .datagrams_read
                            .load(std::sync::atomic::Ordering::Relaxed)
                    ),
                    session
                        .shard_queue_full
                        .load(std::sync::atomic::Ordering::Relaxed),
                );
            }
            None => {
                let last = session.last_error.lock().expect("status lock").clone();
                let _ = writeln!(
                    out,
                    "peer {}: not connected{}  fingerprint {}",
                    peer.name,
                    last.map(|e| format!(" (last error: {e})"))
                        .unwrap_or_default(),
                    peer.fingerprint
                );
            }
        }
        let t = state.totals(i);
        let _ = writeln!(
            out,
            "  LAN in  {} packets {} bytes   LAN out {} packets {} bytes",
            t.lan_in_packets, t.lan_in_bytes, t.lan_out_packets, t.lan_out_bytes
        );
        let _ = writeln!(
            out,
            "  WAN out {} datagrams {} bytes   WAN in  {} datagrams {} bytes",
            t.wan_out_datagrams, t.wan_out_bytes, t.wan_in_datagrams, t.wan_in_bytes
        );
        match t.wan_ratio() {
            Some(r) => {
                let _ = writeln!(
                    out,
                    "  savings: WAN/LAN {r:.3} ({:.2}x less on the WAN)",
                    1.0 / r.max(1e-9)
                );
            }
            None => {
                let _ = writeln!(out, "  savings: no traffic yet");
            }
        }
        let _ = writeln!(
            out,
            "  compression saved {} bytes ({} in, {} out)",
            t.codec_in_bytes.saturating_sub(t.codec_out_bytes),
            t.codec_in_bytes,
            t.codec_out_bytes
        );
        let link = session.link.lock().expect("status lock").clone();
        match link.and_then(|l| l.dedupe) {
            Some(d) => {
                let (e, r) = (d.encoder.stats(), d.decoder.stats());
                let hit = if e.bytes_in > 0 {
                    100.0 * e.bytes_matched as f64 / e.bytes_in as f64
                } else {
                    0.0
                };
                let _ = writeln!(
                    out,
                    "  dedupe (cache {}, this connection): sent {} bytes, saved {} bytes, cache hit rate {hit:.1}% of bytes, {} references, {} resets",
                    crate::config::ByteSize::new(d.encoder.size()),
                    e.bytes_in,
                    e.bytes_saved,
                    e.refs,
                    e.resets
                );
                let _ = writeln!(
                    out,
                    "  dedupe received: {} references, {} bytes from cache, references rejected {}, wrong restores {}, resets requested {}",
                    r.refs,
                    r.bytes_from_cache,
                    r.refs_rejected,
                    r.checksum_failures,
                    r.resets_requested
                );
            }
            None => {
                let _ = writeln!(out, "  dedupe: off");
            }
        }
        let _ = writeln!(
            out,
            "  acks sent: {} beside data, {} on the control stream",
            t.acks_with_data, t.acks_on_control
        );
        let _ = writeln!(
            out,
            "  drops: source not allowed {}  malformed {}  no link {}  refused {}  send errors {}  bypassed {} packets",
            t.source_not_allowed,
            t.malformed,
            t.no_link,
            t.refused,
            t.send_errors,
            t.bypassed_packets
        );
    }
    out
}

/// Asks the daemon behind `path` for its status report.
///
/// # Errors
/// The daemon is not running (no socket), refuses, or does not answer in time.
pub async fn request_status(path: &Path) -> std::io::Result<String> {
    let mut stream = UnixStream::connect(path).await?;
    stream.write_all(b"status\n").await?;
    let mut reply = String::new();
    let read = async {
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        while reader.read_line(&mut line).await? > 0 {
            reply.push_str(&line);
            line.clear();
        }
        Ok::<_, std::io::Error>(())
    };
    tokio::time::timeout(REQUEST_TIMEOUT, read)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer"))??;
    Ok(reply)
}
