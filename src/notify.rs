//! systemd readiness notifications (`Type=notify`). Without `NOTIFY_SOCKET` (not started by
//! systemd) they do nothing.

/// Tells systemd the gateway is up: device, addresses and routes are in place.
pub fn ready() {
    if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
        tracing::debug!(error = %e, "sd_notify READY failed");
    }
}

/// Tells systemd the gateway is stopping.
pub fn stopping() {
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
}
