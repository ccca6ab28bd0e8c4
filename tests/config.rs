//! Config files on disk through `Settings::load_with_env`: one valid file, and a table of
//! broken variants of it, each of which must fail with an error that names the file and the
//! key at fault.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sluice::config::{ConfigError, Mtu, Origin, PerCore, Settings, Shards, Threads};
use sluice::core::encoder::Compression;
use sluice::identity;

const PEER_B: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const PEER_C: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

/// A valid config using every key, with relative paths to the key and certificate.
fn valid_config() -> String {
    format!(
        r#"
[interface]
name = "sluice0"
address = ["10.99.0.1/24", "fd99::1/64"]
listen = "0.0.0.0:7443"
key = "key.pem"
certificate = "cert.pem"
mtu = "auto"
wan_mtu = 1500
shards = "auto"
threads = "auto"
routes = true

[optimize]
compression = "auto"
zstd_level = 1
max_delay = "0ms"

[[peer]]
name = "site-b"
endpoint = "192.0.2.2:7443"
fingerprint = "{PEER_B}"
allowed_ips = ["10.20.0.0/16"]

[[peer]]
name = "site-c"
fingerprint = "{PEER_C}"
allowed_ips = ["10.30.0.0/16", "fd30::/48"]
"#
    )
}

/// The error's message followed by those of its sources, as the binary prints it.
fn full_message(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(err) = source {
        text.push_str(": ");
        text.push_str(&err.to_string());
        source = err.source();
    }
    text
}

/// A folder holding a fresh identity and `peers.toml` with `text`.
struct Site {
    dir: tempfile::TempDir,
    own_fingerprint: String,
}

impl Site {
    fn new(text: &str) -> Site {
        let dir = tempfile::tempdir().unwrap();
        let generated = identity::keygen(dir.path()).unwrap();
        fs::write(dir.path().join("peers.toml"), text).unwrap();
        Site {
            dir,
            own_fingerprint: generated.fingerprint.to_string(),
        }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("peers.toml")
    }

    fn load(&self, env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Settings::load_with_env(&self.config(), env)
    }
}

#[test]
fn a_valid_file_loads_with_paths_resolved_against_its_folder() {
    let site = Site::new(&valid_config());
    let settings = site.load(&[]).unwrap();
    let interface = settings.interface();
    assert_eq!(interface.name.as_str(), "sluice0");
    assert_eq!(interface.addresses.len(), 2);
    assert_eq!(interface.listen, Some("0.0.0.0:7443".parse().unwrap()));
    assert_eq!(interface.key_path, site.dir.path().join("key.pem"));
    assert_eq!(interface.certificate_path, site.dir.path().join("cert.pem"));
    assert_eq!(interface.fingerprint.to_string(), site.own_fingerprint);
    assert_eq!(interface.mtu, Mtu::Auto);
    assert_eq!(interface.shards, Shards::Auto);
    assert_eq!(interface.threads, Threads::Auto);
    assert!(interface.routes);
    assert_eq!(settings.optimize().compression, Compression::Auto);
    assert_eq!(settings.optimize().zstd_level.get(), 1);
    assert_eq!(settings.optimize().max_delay, Duration::ZERO);
    let names: Vec<_> = settings.peers().iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["site-b", "site-c"]);
    assert_eq!(settings.peers()[1].endpoint, None);
    // The key is loaded but never printed.
    let debug = format!("{settings:?}");
    assert!(debug.contains("<redacted>"), "{debug}");
    let key_pem = fs::read_to_string(&interface.key_path).unwrap();
    let key_body = key_pem.lines().nth(1).unwrap();
    assert!(!debug.contains(key_body));
}

#[test]
fn omitted_keys_take_their_defaults() {
    let text = format!(
        r#"
[interface]
address = ["10.99.0.1/24"]
key = "key.pem"
certificate = "cert.pem"

[[peer]]
name = "site-b"
endpoint = "192.0.2.2:7443"
fingerprint = "{PEER_B}"
allowed_ips = ["10.20.0.0/16"]
"#
    );
    let site = Site::new(&text);
    let settings = site.load(&[]).unwrap();
    assert_eq!(settings.interface().name.as_str(), "sluice0");
    assert_eq!(settings.interface().listen, None);
    assert_eq!(settings.interface().mtu, Mtu::Auto);
    assert_eq!(settings.interface().wan_mtu, 1500);
    assert_eq!(settings.optimize().compression, Compression::Auto);
}

#[test]
fn environment_overrides_win_and_stray_variables_are_ignored() {
    let site = Site::new(&valid_config());
    let settings = site
        .load(&[
            ("SLUICE_OPTIMIZE__COMPRESSION", "lz4"),
            ("SLUICE_OPTIMIZE__ZSTD_LEVEL", "-3"),
            ("SLUICE_INTERFACE__MTU", "1400"),
            ("SLUICE_INTERFACE__SHARDS", "4"),
            ("SLUICE_INTERFACE__THREADS", "1"),
            // None of these names a key: they must not trip deny_unknown_fields.
            ("SLUICE_LOG", "debug"),
            ("SLUICE_FOO", "1"),
            ("SLUICE_FOO__BAR", "1"),
            ("SLUICE_PEER__NAME", "x"),
            ("SLUICE_INTERFACE", "x"),
            ("SLUICE_", "x"),
            ("SLUICE", "x"),
            ("OTHER_OPTIMIZE__COMPRESSION", "zstd"),
        ])
        .unwrap();
    assert_eq!(settings.optimize().compression, Compression::Lz4);
    assert_eq!(settings.optimize().zstd_level.get(), -3);
    assert_eq!(settings.interface().mtu, Mtu::Fixed(1400));
    assert_eq!(
        settings.interface().shards,
        Shards::Fixed(4.try_into().unwrap())
    );
    assert_eq!(
        settings.interface().threads,
        Threads::Fixed(1.try_into().unwrap())
    );
    assert_eq!(settings.interface().threads.here(), 1);
}

#[test]
fn per_core_counts_follow_the_machine_only_when_auto() {
    assert_eq!(PerCore::Auto.resolve(2), 2);
    assert_eq!(PerCore::Auto.resolve(0), 1);
    assert_eq!(PerCore::Auto.resolve(64), 16);
    assert_eq!(PerCore::Fixed(3.try_into().unwrap()).resolve(64), 3);
    assert_eq!(PerCore::Fixed(200.try_into().unwrap()).resolve(2), 200);
}

#[test]
fn a_missing_config_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.toml");
    let err = Settings::load_with_env(&path, []).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }), "{err}");
    assert!(err.to_string().contains("nope.toml"), "{err}");
}

#[test]
fn a_toml_syntax_error_names_the_file_and_line() {
    let site = Site::new("[interface\nname = 1\n");
    let err = site.load(&[]).unwrap_err();
    assert!(matches!(err, ConfigError::Syntax { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("peers.toml"), "{text}");
    assert!(text.contains("line 1"), "{text}");
}

#[test]
fn an_env_error_names_the_variable() {
    let site = Site::new(&valid_config());
    let err = site
        .load(&[("SLUICE_OPTIMIZE__ZSTD_LEVEL", "99")])
        .unwrap_err();
    match &err {
        ConfigError::Value { origin, .. } => assert_eq!(
            origin,
            &Origin::Env("SLUICE_OPTIMIZE__ZSTD_LEVEL".to_owned())
        ),
        other => panic!("{other}"),
    }
    assert!(
        err.to_string().contains("SLUICE_OPTIMIZE__ZSTD_LEVEL"),
        "{err}"
    );
}

/// How a case breaks the valid site.
enum Break {
    /// Replace the first occurrence of `.0` in the config text with `.1`.
    Replace(&'static str, &'static str),
    /// Append text to the config.
    Append(&'static str),
    /// Set these environment variables.
    Env(&'static [(&'static str, &'static str)]),
    /// chmod the key file.
    KeyMode(u32),
    /// Delete a file next to the config.
    Remove(&'static str),
    /// Pin our own certificate as peer[1]'s.
    PinSelf,
}

struct Case {
    name: &'static str,
    breaks: Break,
    /// The key the error must name.
    key: &'static str,
    /// Text the message must contain.
    says: &'static str,
}

const CASES: &[Case] = &[
    Case {
        name: "unknown key in a section",
        breaks: Break::Replace("routes = true", "routes = true\nroute = false"),
        key: "interface.route",
        says: "unknown key",
    },
    Case {
        name: "unknown section",
        breaks: Break::Append("\n[optimise]\nzstd_level = 3\n"),
        key: "optimise",
        says: "unknown key",
    },
    Case {
        name: "unknown key in a peer",
        breaks: Break::Replace(r#"name = "site-c""#, "name = \"site-c\"\nkeepalive = 5"),
        key: "peer[1].keepalive",
        says: "unknown key",
    },
    Case {
        name: "missing required key",
        breaks: Break::Replace(r#"certificate = "cert.pem""#, ""),
        key: "interface.certificate",
        says: "required key is missing",
    },
    Case {
        name: "wrong type",
        breaks: Break::Replace("routes = true", r#"routes = "yes""#),
        key: "interface.routes",
        says: "bool",
    },
    Case {
        name: "bad CIDR",
        breaks: Break::Replace(r#""10.30.0.0/16""#, r#""10.30.0.0/33""#),
        key: "peer[1].allowed_ips[0]",
        says: "prefix length 33",
    },
    Case {
        name: "allowed_ips with host bits",
        breaks: Break::Replace(r#""fd30::/48""#, r#""fd30::1/48""#),
        key: "peer[1].allowed_ips[1]",
        says: "fd30::/48",
    },
    Case {
        name: "bad interface address",
        breaks: Break::Replace(r#""fd99::1/64""#, r#""fd99::1""#),
        key: "interface.address[1]",
        says: "prefix length",
    },
    Case {
        name: "bad fingerprint",
        breaks: Break::Replace("sha256:2222", "sha256:ZZZZ"),
        key: "peer[1].fingerprint",
        says: "hex",
    },
    Case {
        name: "missing key file",
        breaks: Break::Remove("key.pem"),
        key: "interface.key",
        says: "key.pem",
    },
    Case {
        name: "missing certificate file",
        breaks: Break::Remove("cert.pem"),
        key: "interface.certificate",
        says: "cert.pem",
    },
    Case {
        name: "key file readable by others",
        breaks: Break::KeyMode(0o644),
        key: "interface.key",
        says: "0600",
    },
    Case {
        name: "key file writable by group",
        breaks: Break::KeyMode(0o620),
        key: "interface.key",
        says: "chmod 600",
    },
    Case {
        name: "duplicate peer name",
        breaks: Break::Replace(r#"name = "site-c""#, r#"name = "site-b""#),
        key: "peer[1].name",
        says: "peer[0].name",
    },
    Case {
        name: "duplicate fingerprint",
        breaks: Break::Replace(PEER_C, PEER_B),
        key: "peer[1].fingerprint",
        says: "peer[0].fingerprint",
    },
    Case {
        name: "peer pins our own certificate",
        breaks: Break::PinSelf,
        key: "peer[1].fingerprint",
        says: "our own certificate",
    },
    Case {
        name: "overlapping allowed_ips",
        breaks: Break::Replace(r#""10.30.0.0/16""#, r#""10.0.0.0/8""#),
        key: "peer[1].allowed_ips[0]",
        says: "peer[0].allowed_ips[0]",
    },
    Case {
        name: "mtu below the IPv6 minimum",
        breaks: Break::Replace(r#"mtu = "auto""#, "mtu = 1000"),
        key: "interface.mtu",
        says: "1280",
    },
    Case {
        name: "mtu neither auto nor a number",
        breaks: Break::Replace(r#"mtu = "auto""#, r#"mtu = "big""#),
        key: "interface.mtu",
        says: "\"auto\" or a number",
    },
    Case {
        name: "shards out of range",
        breaks: Break::Replace(r#"shards = "auto""#, "shards = 256"),
        key: "interface.shards",
        says: "1 to 255",
    },
    Case {
        name: "threads zero",
        breaks: Break::Replace(r#"threads = "auto""#, "threads = 0"),
        key: "interface.threads",
        says: "1 to 255",
    },
    Case {
        name: "threads neither auto nor a number",
        breaks: Break::Replace(r#"threads = "auto""#, r#"threads = "many""#),
        key: "interface.threads",
        says: "\"auto\" or a number",
    },
    Case {
        name: "bad duration",
        breaks: Break::Replace(r#"max_delay = "0ms""#, r#"max_delay = "soon""#),
        key: "optimize.max_delay",
        says: "duration",
    },
    Case {
        name: "zstd level out of range",
        breaks: Break::Replace("zstd_level = 1", "zstd_level = 20"),
        key: "optimize.zstd_level",
        says: "-7 to 19",
    },
    Case {
        name: "bad compression mode",
        breaks: Break::Replace(r#"compression = "auto""#, r#"compression = "gzip""#),
        key: "optimize.compression",
        says: "auto, lz4, zstd, off",
    },
    Case {
        name: "listen is not a socket address",
        breaks: Break::Replace(r#"listen = "0.0.0.0:7443""#, r#"listen = "0.0.0.0""#),
        key: "interface.listen",
        says: "address and port",
    },
    Case {
        name: "nobody can dial",
        breaks: Break::Replace(r#"listen = "0.0.0.0:7443""#, ""),
        key: "peer[1].endpoint",
        says: "neither side",
    },
    Case {
        name: "env override with a bad value",
        breaks: Break::Env(&[("SLUICE_OPTIMIZE__COMPRESSION", "brotli")]),
        key: "optimize.compression",
        says: "SLUICE_OPTIMIZE__COMPRESSION",
    },
    Case {
        name: "env override with the wrong type",
        breaks: Break::Env(&[("SLUICE_OPTIMIZE__ZSTD_LEVEL", "fast")]),
        key: "optimize.zstd_level",
        says: "SLUICE_OPTIMIZE__ZSTD_LEVEL",
    },
    Case {
        name: "env override of an unknown key",
        breaks: Break::Env(&[("SLUICE_INTERFACE__BOGUS", "1")]),
        key: "interface.bogus",
        says: "SLUICE_INTERFACE__BOGUS",
    },
];

#[test]
fn each_broken_file_fails_naming_file_and_key() {
    assert!(!CASES.is_empty());
    for case in CASES {
        let mut text = valid_config();
        let mut env: &[(&str, &str)] = &[];
        match case.breaks {
            Break::Replace(old, new) => {
                assert!(text.contains(old), "{}: fixture lacks {old:?}", case.name);
                text = text.replacen(old, new, 1);
            }
            Break::Append(extra) => text.push_str(extra),
            Break::Env(vars) => env = vars,
            _ => {}
        }
        let site = Site::new(&text);
        match case.breaks {
            Break::KeyMode(mode) => {
                let key = site.dir.path().join("key.pem");
                fs::set_permissions(key, fs::Permissions::from_mode(mode)).unwrap();
            }
            Break::Remove(name) => fs::remove_file(site.dir.path().join(name)).unwrap(),
            Break::PinSelf => {
                let text = text.replacen(PEER_C, &site.own_fingerprint, 1);
                fs::write(site.config(), text).unwrap();
            }
            _ => {}
        }

        let err = match site.load(env) {
            Ok(_) => panic!("{}: loaded", case.name),
            Err(err) => err,
        };
        let message = full_message(&err);
        assert_eq!(err.file(), site.config(), "{}: {message}", case.name);
        assert!(
            message.starts_with(&site.config().display().to_string()),
            "{}: {message}",
            case.name
        );
        assert_eq!(err.key(), Some(case.key), "{}: {message}", case.name);
        assert!(message.contains(case.key), "{}: {message}", case.name);
        assert!(
            message.contains(case.says),
            "{}: {message:?} lacks {:?}",
            case.name,
            case.says
        );
    }
}

#[test]
fn a_file_without_peers_is_refused() {
    let text = valid_config();
    let cut = text.find("[[peer]]").unwrap();
    let site = Site::new(&text[..cut]);
    let err = site.load(&[]).unwrap_err();
    assert!(matches!(err, ConfigError::NoPeers { .. }), "{err}");
    assert_eq!(err.key(), Some("peer"));
}

#[test]
fn absolute_paths_are_kept() {
    let site = Site::new("");
    let other = tempfile::tempdir().unwrap();
    let generated = identity::keygen(other.path()).unwrap();
    let text = valid_config()
        .replace(
            r#"key = "key.pem""#,
            &format!("key = {:?}", generated.key_path.display().to_string()),
        )
        .replace(
            r#"certificate = "cert.pem""#,
            &format!(
                "certificate = {:?}",
                generated.cert_path.display().to_string()
            ),
        );
    fs::write(site.config(), text).unwrap();
    let settings = site.load(&[]).unwrap();
    assert_eq!(settings.interface().key_path, generated.key_path);
    assert_eq!(settings.interface().fingerprint, generated.fingerprint);
}

#[test]
fn a_key_that_belongs_to_another_certificate_is_refused() {
    let site = Site::new(&valid_config());
    let other = tempfile::tempdir().unwrap();
    let generated = identity::keygen(other.path()).unwrap();
    fs::copy(&generated.key_path, site.dir.path().join("key.pem")).unwrap();
    let err = site.load(&[]).unwrap_err();
    assert_eq!(err.key(), Some("interface.key"), "{err}");
    assert!(full_message(&err).contains("not the private key"), "{err}");
}

/// The shipped example, copied next to a fresh identity (its key and certificate paths are
/// relative, so they resolve there).
#[test]
fn the_example_file_is_accepted() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("peers.toml.example");
    let text = fs::read_to_string(example).unwrap();
    let site = Site::new(&text);
    let settings = site.load(&[]).unwrap();
    assert!(!settings.peers().is_empty());
}
