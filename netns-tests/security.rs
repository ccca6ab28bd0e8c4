//! Security and bad start-up, end to end (issue 5): `sluice up` with a listen port in use or
//! without permission for /dev/net/tun fails cleanly; keys never reach the logs or `status`;
//! the control socket is root's only. (The pin check before any packet reaches a TUN device
//! and the `allowed_ips` source check are in `main.rs`.)

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::harness::{Topology, addr, require_root};
use crate::serial;
use crate::sites::{self, Options, Site};

/// The unprivileged user the tests switch to (nobody).
const NOBODY: &str = "65534";

/// `setpriv` arguments that run a command as nobody with no supplementary groups, or `None`
/// (with the reason printed, and a failure under `CI=true`) when setpriv is missing.
fn as_nobody(test: &str) -> Option<Vec<String>> {
    let ok = Command::new("setpriv")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Some(
            [
                "setpriv",
                &format!("--reuid={NOBODY}"),
                &format!("--regid={NOBODY}"),
                "--clear-groups",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        );
    }
    let why =
        format!("SKIPPED: `{test}` needs setpriv (util-linux) to drop to an unprivileged user");
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{why}; under CI=true a skip is a failure");
    }
    eprintln!("{why}");
    None
}

/// A copy of `site`'s folder (config, certificate and key) owned by nobody, with
/// `control_socket` pointed at `socket` if given; returns the copied config.
fn copy_for_nobody(topo: &Topology, site: &Site, socket: Option<&Path>) -> PathBuf {
    let dir = topo.dir.join(format!("{}-nobody", site.name));
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["cert.pem", "key.pem", "peers.toml"] {
        std::fs::copy(site.dir.join(f), dir.join(f)).unwrap();
    }
    std::fs::set_permissions(dir.join("key.pem"), std::fs::Permissions::from_mode(0o600)).unwrap();
    if let Some(socket) = socket {
        let config = std::fs::read_to_string(dir.join("peers.toml")).unwrap();
        let config = config.replace(
            "control_socket = \"control.sock\"",
            &format!("control_socket = \"{}\"", socket.display()),
        );
        std::fs::write(dir.join("peers.toml"), config).unwrap();
    }
    let owner = format!("{NOBODY}:{NOBODY}");
    crate::harness::must(Command::new("chown").args(["-R", &owner]).arg(&dir));
    std::fs::set_permissions(&topo.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir.join("peers.toml")
}

/// Checks that a failed `sluice up` said `needles`, exited non-zero without a panic and left
/// no device, route or control socket behind in `ns`.
fn assert_failed_cleanly(
    topo: &Topology,
    ns: &str,
    out: &std::process::Output,
    dir: &Path,
    needles: &[&str],
) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("sluice up said: {}", stderr.trim());
    assert!(!out.status.success(), "non-zero exit: {stderr}");
    assert_eq!(
        out.status.code(),
        Some(1),
        "an error exit, not a signal: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "no panic: {stderr}");
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "the error names {needle:?}: {stderr}"
        );
    }
    assert!(!topo.has_link(ns, "sluice0"), "no device left behind");
    assert!(
        topo.routes_matching(ns, "sluice0").is_empty(),
        "no route left behind"
    );
    assert!(
        !dir.join("control.sock").exists(),
        "no control socket left behind"
    );
}

/// Runs `sluice up` to completion (it must fail fast) in `ns` with `prefix` before it.
fn up_once(topo: &Topology, ns: &str, prefix: &[String], config: &Path) -> std::process::Output {
    let config = config.to_string_lossy().into_owned();
    let mut args: Vec<&str> = prefix.iter().map(String::as_str).collect();
    args.extend(["timeout", "20", sites::sluice(), "up", "-c", &config]);
    topo.try_exec(ns, &args)
}

#[test]
fn up_fails_cleanly_when_the_listen_port_is_in_use() {
    if !require_root("up_fails_cleanly_when_the_listen_port_is_in_use") {
        return;
    }
    let _serial = serial();
    let topo = Topology::new("port");
    let a = sites::keygen(&topo, "a");
    let b = sites::keygen(&topo, "b");
    sites::write_config(&a, true, &b.fingerprint, &Options::default());
    let holder = "import socket,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('0.0.0.0',7443))\nprint('bound',flush=True)\ntime.sleep(60)";
    let _holder = topo.spawn(&topo.gw_a, &["python3", "-c", holder], "holder.log");
    let bound = topo.wait_for(Duration::from_secs(10), || {
        topo.log("holder.log").contains("bound")
    });
    assert!(bound.is_some(), "port 7443 is taken");
    let out = up_once(&topo, &topo.gw_a, &[], &a.config);
    let file = a.config.to_string_lossy().into_owned();
    assert_failed_cleanly(
        &topo,
        &topo.gw_a,
        &out,
        &a.dir,
        &["interface.listen", &file, "0.0.0.0:7443", "in use"],
    );
}

#[test]
fn up_without_permission_for_tun_fails_cleanly() {
    let test = "up_without_permission_for_tun_fails_cleanly";
    if !require_root(test) {
        return;
    }
    let Some(nobody) = as_nobody(test) else {
        return;
    };
    let _serial = serial();
    let topo = Topology::new("perm");
    let a = sites::keygen(&topo, "a");
    let b = sites::keygen(&topo, "b");
    sites::write_config(&a, true, &b.fingerprint, &Options::default());
    let config = copy_for_nobody(&topo, &a, None);
    let out = up_once(&topo, &topo.gw_a, &nobody, &config);
    let file = config.to_string_lossy().into_owned();
    assert_failed_cleanly(
        &topo,
        &topo.gw_a,
        &out,
        config.parent().unwrap(),
        &[
            "TUN device sluice0",
            "interface.name",
            &file,
            "CAP_NET_ADMIN",
        ],
    );
}

#[test]
fn the_control_socket_is_root_only() {
    let test = "the_control_socket_is_root_only";
    if !require_root(test) {
        return;
    }
    let Some(nobody) = as_nobody(test) else {
        return;
    };
    let _serial = serial();
    let topo = Topology::new("ctl");
    let g = sites::up(&topo, Options::default());
    let socket = g.a.dir.join("control.sock");
    let meta = std::fs::metadata(&socket).expect("control socket exists");
    assert_eq!(meta.mode() & 0o777, 0o600, "socket mode 0600");
    assert_eq!(meta.uid(), 0, "socket owned by root");
    // Root gets the report.
    assert!(sites::status(&topo, &topo.gw_a, &g.a).contains("connected to"));
    // Nobody, with a config of its own that points at the same socket, is refused clearly.
    // The folder holding the socket is opened for this test (keygen makes it 0700), so the
    // socket's own mode is what refuses.
    std::fs::set_permissions(&g.a.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = copy_for_nobody(&topo, &g.a, Some(&socket));
    let config = config.to_string_lossy().into_owned();
    let mut args: Vec<&str> = nobody.iter().map(String::as_str).collect();
    args.extend([sites::sluice(), "status", "-c", &config]);
    let out = topo.try_exec(&topo.gw_a, &args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("sluice status as nobody: {}", stderr.trim());
    assert!(!out.status.success(), "nobody gets no status");
    assert!(!stderr.contains("panicked"));
    assert!(
        stderr.contains("permission denied") && stderr.contains("only root"),
        "a clear refusal: {stderr}"
    );
    assert!(out.stdout.is_empty(), "and no report");
}

/// Strings that would show a private key: each line of the PEM body, the base64 of the whole
/// DER, and the last 32 bytes of the PKCS#8 DER (the Ed25519 seed) in hex and as a Debug list.
fn key_fingerprints(key_path: &Path) -> Vec<String> {
    let key_pem = std::fs::read_to_string(key_path).unwrap();
    let body: Vec<&str> = key_pem
        .lines()
        .filter(|l| !l.starts_with("-----") && !l.is_empty())
        .collect();
    let key = sluice::identity::load_private_key(key_path).expect("key loads");
    let der = key.der().secret_der();
    let seed = &der[der.len() - 32..];
    let hex: String = seed.iter().map(|b| format!("{b:02x}")).collect();
    let debug = seed[..8]
        .iter()
        .map(|b| b.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let mut out: Vec<String> = body.iter().map(|l| l.to_string()).collect();
    out.push(body.concat());
    out.push(hex);
    out.push(debug);
    out
}

#[test]
fn keys_never_appear_in_logs_or_status() {
    if !require_root("keys_never_appear_in_logs_or_status") {
        return;
    }
    let _serial = serial();
    let topo = Topology::new("keys");
    let g = sites::up(
        &topo,
        Options {
            log: "trace",
            ..Options::default()
        },
    );
    assert!(topo.ping_ok(&topo.lan_a, addr::LAN_B));
    let status_a = sites::status(&topo, &topo.gw_a, &g.a);
    let status_b = sites::status(&topo, &topo.gw_b, &g.b);
    drop(g);
    let logs = topo.log("gw-a.log") + &topo.log("gw-b.log");
    assert!(
        logs.lines().count() > 100 && logs.contains("TRACE"),
        "the gateways logged at trace level ({} lines)",
        logs.lines().count()
    );
    for site in ["a", "b"] {
        let marks = key_fingerprints(&topo.dir.join(site).join("key.pem"));
        assert!(marks.len() >= 4);
        for mark in &marks {
            for (what, text) in [
                ("logs", &logs),
                ("status A", &status_a),
                ("status B", &status_b),
            ] {
                assert!(
                    !text.contains(mark.as_str()),
                    "key material of {site} ({mark}) appears in the {what}"
                );
            }
        }
    }
    eprintln!(
        "keys: {} lines of trace logs and both status reports hold no key material",
        logs.lines().count()
    );
}
