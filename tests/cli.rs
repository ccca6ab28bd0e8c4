//! The real `sluice` binary: keygen, fingerprint and check, as an operator runs them.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

fn sluice(args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
    command.args(args);
    // A stray override in the test runner's environment must not change the outcome.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("SLUICE_") {
            command.env_remove(name);
        }
    }
    command.output().expect("the sluice binary runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

/// A panic prints this; no input may cause one.
fn assert_no_panic(output: &Output) {
    let err = stderr(output);
    assert!(!err.contains("panicked"), "{err}");
    assert_ne!(output.status.code(), Some(101), "{err}");
}

/// Runs `sluice keygen --out dir` and returns the fingerprint it printed.
fn keygen(dir: &Path) -> String {
    let output = sluice(&["keygen", "--out", dir.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    let out = stdout(&output);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "{out:?}");
    assert!(out.ends_with('\n'));
    lines[0].to_owned()
}

#[test]
fn keygen_prints_only_the_fingerprint_and_writes_a_private_key() {
    let dir = tempfile::tempdir().unwrap();
    let fingerprint = keygen(dir.path());
    let hex = fingerprint.strip_prefix("sha256:").expect("sha256: prefix");
    assert_eq!(hex.len(), 64);
    assert!(
        hex.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    );
    let mode = fs::metadata(dir.path().join("key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(dir.path().join("cert.pem").exists());
}

#[test]
fn keygen_creates_a_missing_folder() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("etc/sluice");
    keygen(&out);
    let mode = fs::metadata(&out).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "{mode:o}");
}

#[test]
fn keygen_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    keygen(dir.path());
    let key_before = fs::read(dir.path().join("key.pem")).unwrap();
    let output = sluice(&["keygen", "--out", dir.path().to_str().unwrap()]);
    assert!(!output.status.success());
    assert_no_panic(&output);
    assert_eq!(stdout(&output), "");
    assert!(
        stderr(&output).contains("already exists"),
        "{}",
        stderr(&output)
    );
    assert_eq!(fs::read(dir.path().join("key.pem")).unwrap(), key_before);
}

#[test]
fn fingerprint_matches_keygen() {
    let dir = tempfile::tempdir().unwrap();
    let printed = keygen(dir.path());
    let cert = dir.path().join("cert.pem");
    let output = sluice(&["fingerprint", cert.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output), format!("{printed}\n"));
}

#[test]
fn fingerprint_of_a_non_certificate_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    keygen(dir.path());
    for file in ["key.pem", "missing.pem"] {
        let path = dir.path().join(file);
        let output = sluice(&["fingerprint", path.to_str().unwrap()]);
        assert!(!output.status.success());
        assert_no_panic(&output);
        assert!(stderr(&output).contains(file), "{}", stderr(&output));
    }
}

/// A folder with an identity and a config built from the shipped example.
fn site_from_example() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    keygen(dir.path());
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("peers.toml.example");
    fs::copy(example, dir.path().join("peers.toml")).unwrap();
    dir
}

#[test]
fn check_accepts_the_example_and_summarises_it() {
    let dir = site_from_example();
    let config = dir.path().join("peers.toml");
    let output = sluice(&["check", "-c", config.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    let out = stdout(&output);
    assert!(out.contains(": ok"), "{out}");
    assert!(out.contains("peer site-b"), "{out}");
    // The long form works too.
    let output = sluice(&["check", "--config", config.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
}

#[test]
fn check_names_file_and_key_of_a_bad_value() {
    let dir = site_from_example();
    let config = dir.path().join("peers.toml");
    let text = fs::read_to_string(&config).unwrap();
    fs::write(
        &config,
        text.replacen("zstd_level = 1", "zstd_level = 42", 1),
    )
    .unwrap();
    let output = sluice(&["check", "-c", config.to_str().unwrap()]);
    assert!(!output.status.success());
    assert_no_panic(&output);
    let err = stderr(&output);
    assert!(err.contains(config.to_str().unwrap()), "{err}");
    assert!(err.contains("optimize.zstd_level"), "{err}");
    assert_eq!(stdout(&output), "");
}

#[test]
fn check_names_the_environment_variable_of_a_bad_override() {
    let dir = site_from_example();
    let config = dir.path().join("peers.toml");
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["check", "-c", config.to_str().unwrap()])
        .env("SLUICE_OPTIMIZE__COMPRESSION", "brotli")
        .env("SLUICE_LOG", "debug")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let err = stderr(&output);
    assert!(err.contains("optimize.compression"), "{err}");
    assert!(err.contains("SLUICE_OPTIMIZE__COMPRESSION"), "{err}");
}

#[test]
fn check_refuses_a_key_open_to_others() {
    let dir = site_from_example();
    let config = dir.path().join("peers.toml");
    fs::set_permissions(
        dir.path().join("key.pem"),
        fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let output = sluice(&["check", "-c", config.to_str().unwrap()]);
    assert!(!output.status.success());
    let err = stderr(&output);
    assert!(err.contains("interface.key"), "{err}");
    assert!(err.contains("0600"), "{err}");
}

#[test]
fn check_never_panics_on_odd_files() {
    let dir = site_from_example();
    let config = dir.path().join("peers.toml");
    let odd: &[&[u8]] = &[
        b"",
        b"\xff\xfe not utf-8",
        b"[interface\n",
        b"interface = 3\n",
        b"[[interface]]\n",
        b"[interface]\nmtu = 1e400\n",
        b"[interface]\nmtu = -1\naddress = []\n",
        b"[[peer]]\n[[peer]]\n",
    ];
    assert!(!odd.is_empty());
    for contents in odd {
        fs::write(&config, contents).unwrap();
        let output = sluice(&["check", "-c", config.to_str().unwrap()]);
        assert!(!output.status.success(), "{contents:?}");
        assert_no_panic(&output);
        let err = stderr(&output);
        assert!(
            err.contains(config.to_str().unwrap()),
            "{contents:?}: {err}"
        );
    }
    let missing = dir.path().join("missing.toml");
    let output = sluice(&["check", "-c", missing.to_str().unwrap()]);
    assert!(!output.status.success());
    assert_no_panic(&output);
    assert!(stderr(&output).contains("missing.toml"));
}
