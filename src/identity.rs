//! A gateway's identity: its private key, its self-signed certificate and the certificate's
//! fingerprint, which is what peers pin (DESIGN.md, "Security model").
//!
//! - [`keygen`] writes a fresh Ed25519 key and certificate into a folder.
//! - [`Fingerprint`] is the SHA-256 of a DER certificate, written `sha256:<64 hex digits>`.
//! - [`load_certificate`], [`load_private_key`] and [`check_key_permissions`] read what
//!   `keygen` wrote (or what an operator brought), and [`check_key_matches`] proves that a key
//!   belongs to a certificate, so a mix-up fails at `sluice check` rather than as an opaque
//!   TLS handshake failure.
//!
//! Private keys live in [`PrivateKey`], whose `Debug` prints `<redacted>`: a key cannot leak
//! into a log line through a derived `Debug`.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// File name of the private key that [`keygen`] writes.
pub const KEY_FILE: &str = "key.pem";
/// File name of the certificate that [`keygen`] writes.
pub const CERT_FILE: &str = "cert.pem";

/// Subject and SAN of generated certificates. Peers verify by fingerprint, not by name, so
/// one fixed name serves every gateway.
const CERT_NAME: &str = "sluice";

/// Permission bits a key file must not have: any access by group or others.
const KEY_FORBIDDEN_MODE: u32 = 0o077;

/// Why an identity operation failed. Underlying OS and rcgen errors are exposed as
/// [`source`](std::error::Error::source), not repeated in the message.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// `keygen` found a file where it would write one.
    #[error("{path} already exists; remove it first or choose another folder")]
    Exists {
        /// The existing file.
        path: PathBuf,
    },
    /// Creating or writing a file failed.
    #[error("cannot write {path}")]
    Write {
        /// The file being written.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// Reading a file failed (most often: it does not exist).
    #[error("cannot read {path}")]
    Read {
        /// The file being read.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// rcgen could not generate the key or certificate.
    #[error("cannot generate a key pair and certificate")]
    Generate {
        /// What rcgen said.
        source: rcgen::Error,
    },
    /// The file holds no PEM `CERTIFICATE` section, or it is malformed.
    #[error("{path} holds no readable PEM certificate ({reason})")]
    CertificatePem {
        /// The certificate file.
        path: PathBuf,
        /// What the PEM reader said.
        reason: String,
    },
    /// The PEM section is not an X.509 certificate the TLS stack accepts.
    #[error("{path} is not a valid X.509 certificate ({reason})")]
    CertificateDer {
        /// The certificate file.
        path: PathBuf,
        /// What the certificate parser said.
        reason: String,
    },
    /// The file holds no PEM private key, or it is malformed.
    #[error("{path} holds no readable PEM private key ({reason})")]
    KeyPem {
        /// The key file.
        path: PathBuf,
        /// What the PEM reader said (never key material).
        reason: String,
    },
    /// The key is readable or writable by group or others.
    #[error(
        "{path} has mode {mode:04o}, so group or others may read or change it; \
         make it private with mode 0600 (chmod 600 {path})"
    )]
    KeyPermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The key cannot sign (only PKCS#8 Ed25519, ECDSA P-256/P-384 and RSA keys can).
    #[error("{path} is not a usable PKCS#8 Ed25519, ECDSA or RSA private key ({reason})")]
    KeyUnsupported {
        /// The key file.
        path: PathBuf,
        /// What the key loader said (never key material).
        reason: String,
    },
    /// The key is fine but belongs to another certificate.
    #[error("{key} is not the private key of {certificate}")]
    KeyMismatch {
        /// The key file.
        key: PathBuf,
        /// The certificate file.
        certificate: PathBuf,
    },
}

/// SHA-256 of a DER certificate: what a peer pins. Written `sha256:` + 64 lowercase hex
/// digits, which is both its [`Display`](fmt::Display) and the only form
/// [`FromStr`] accepts.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint([u8; 32]);

/// The text every fingerprint starts with.
const FINGERPRINT_PREFIX: &str = "sha256:";

impl Fingerprint {
    /// The fingerprint with these digest bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Fingerprint {
        Fingerprint(bytes)
    }

    /// The SHA-256 digest bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(FINGERPRINT_PREFIX)?;
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// Why a string is not a [`Fingerprint`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FingerprintError {
    /// It does not start with `sha256:`.
    #[error("must start with \"sha256:\" (as `sluice fingerprint` prints it)")]
    Prefix,
    /// The digest part is not 64 characters long.
    #[error("must have exactly 64 hex digits after \"sha256:\", found {0}")]
    Length(usize),
    /// The digest part holds something other than `0-9a-f`.
    #[error("may only hold lowercase hex digits 0-9 and a-f after \"sha256:\"")]
    Digit,
}

impl FromStr for Fingerprint {
    type Err = FingerprintError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let hex = text
            .strip_prefix(FINGERPRINT_PREFIX)
            .ok_or(FingerprintError::Prefix)?;
        if hex.len() != 64 {
            return Err(FingerprintError::Length(hex.chars().count()));
        }
        let mut bytes = [0u8; 32];
        for (byte, pair) in bytes.iter_mut().zip(hex.as_bytes().chunks_exact(2)) {
            *byte = hex_digit(pair[0])? << 4 | hex_digit(pair[1])?;
        }
        Ok(Fingerprint(bytes))
    }
}

/// The value of one lowercase hex digit. Uppercase is refused so that a fingerprint has one
/// spelling, and a text search for it in configs and logs finds every copy.
fn hex_digit(digit: u8) -> Result<u8, FingerprintError> {
    match digit {
        b'0'..=b'9' => Ok(digit - b'0'),
        b'a'..=b'f' => Ok(digit - b'a' + 10),
        _ => Err(FingerprintError::Digit),
    }
}

/// The fingerprint of a DER-encoded certificate.
pub fn fingerprint(cert: &CertificateDer<'_>) -> Fingerprint {
    let digest = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
    let mut bytes = [0u8; 32];
    bytes.copy_from_slice(digest.as_ref());
    Fingerprint(bytes)
}

/// A private key whose `Debug` output never shows the key.
pub struct PrivateKey(PrivateKeyDer<'static>);

impl PrivateKey {
    /// The key in the form rustls takes.
    pub fn der(&self) -> &PrivateKeyDer<'static> {
        &self.0
    }
}

impl Clone for PrivateKey {
    fn clone(&self) -> Self {
        PrivateKey(self.0.clone_key())
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

/// What [`keygen`] wrote.
#[derive(Clone, Debug)]
pub struct Generated {
    /// The private key file (mode 0600).
    pub key_path: PathBuf,
    /// The certificate file.
    pub cert_path: PathBuf,
    /// The certificate's fingerprint, for the peers' configs.
    pub fingerprint: Fingerprint,
}

/// Writes a new Ed25519 private key to `dir/key.pem` (mode 0600) and a self-signed
/// certificate for it to `dir/cert.pem`. Ed25519 because rustls with ring supports it for
/// TLS 1.3 and it signs fast on CPUs without crypto extensions (Raspberry Pi).
///
/// The key is written to a private temporary file and then linked into place, so it is never
/// readable by others, never seen half-written, and never replaces an existing file even if
/// one appears while this runs.
///
/// # Errors
/// [`IdentityError::Exists`] if either file exists (nothing is written then);
/// [`IdentityError::Write`] if `dir` is missing or not writable;
/// [`IdentityError::Generate`] if rcgen fails.
pub fn keygen(dir: &Path) -> Result<Generated, IdentityError> {
    let key_path = dir.join(KEY_FILE);
    let cert_path = dir.join(CERT_FILE);
    for path in [&key_path, &cert_path] {
        // `symlink_metadata`, so a dangling symlink also counts as "exists".
        if fs::symlink_metadata(path).is_ok() {
            return Err(IdentityError::Exists { path: path.clone() });
        }
    }

    let key_pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
        .map_err(|source| IdentityError::Generate { source })?;
    let params = rcgen::CertificateParams::new(vec![CERT_NAME.to_owned()])
        .map_err(|source| IdentityError::Generate { source })?;
    let cert = params
        .self_signed(&key_pair)
        .map_err(|source| IdentityError::Generate { source })?;

    let key_pem = key_pair.serialize_pem();
    write_new_file(&key_path, key_pem.as_bytes(), 0o600)?;
    if let Err(err) = write_new_file(&cert_path, cert.pem().as_bytes(), 0o644) {
        // Leave no key without its certificate: a rerun would then refuse to start.
        let _ = fs::remove_file(&key_path);
        return Err(err);
    }
    Ok(Generated {
        key_path,
        cert_path,
        fingerprint: fingerprint(cert.der()),
    })
}

/// Writes `contents` to `path`, which must not exist, with permission bits `mode`.
///
/// The bytes go to a temporary file in the same folder, created exclusively with `mode`
/// (the umask can only remove bits), synced, then hard-linked to `path`: `link` fails if
/// `path` exists, so this never overwrites, and `path` appears complete or not at all.
fn write_new_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), IdentityError> {
    let write_err = |source| IdentityError::Write {
        path: path.to_owned(),
        source,
    };
    let file_name = path.file_name().unwrap_or_default().to_string_lossy();
    let temp = path.with_file_name(format!(".{file_name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::hard_link(&temp, path)
    })();
    let _ = fs::remove_file(&temp);
    match result {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => Err(IdentityError::Exists {
            path: path.to_owned(),
        }),
        Err(err) => Err(write_err(err)),
    }
}

/// Reads the first PEM certificate in `path` and checks that it is an X.509 certificate the
/// TLS stack (webpki) can parse.
///
/// # Errors
/// [`IdentityError::Read`], [`IdentityError::CertificatePem`] or
/// [`IdentityError::CertificateDer`].
pub fn load_certificate(path: &Path) -> Result<CertificateDer<'static>, IdentityError> {
    let bytes = fs::read(path).map_err(|source| IdentityError::Read {
        path: path.to_owned(),
        source,
    })?;
    let cert =
        CertificateDer::from_pem_slice(&bytes).map_err(|err| IdentityError::CertificatePem {
            path: path.to_owned(),
            reason: pem_reason(&err),
        })?;
    webpki::EndEntityCert::try_from(&cert).map_err(|err| IdentityError::CertificateDer {
        path: path.to_owned(),
        reason: err.to_string(),
    })?;
    Ok(cert)
}

/// Fails unless the key file at `path` is closed to group and others (`mode & 0o077 == 0`).
///
/// # Errors
/// [`IdentityError::Read`] if it cannot be examined, [`IdentityError::KeyPermissions`] if it
/// is open to others.
pub fn check_key_permissions(path: &Path) -> Result<(), IdentityError> {
    let metadata = fs::metadata(path).map_err(|source| IdentityError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mode = metadata.permissions().mode() & 0o7777;
    if mode & KEY_FORBIDDEN_MODE != 0 {
        return Err(IdentityError::KeyPermissions {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

/// Reads the first PEM private key in `path`. Checks nothing about permissions: see
/// [`check_key_permissions`].
///
/// # Errors
/// [`IdentityError::Read`] or [`IdentityError::KeyPem`].
pub fn load_private_key(path: &Path) -> Result<PrivateKey, IdentityError> {
    let bytes = fs::read(path).map_err(|source| IdentityError::Read {
        path: path.to_owned(),
        source,
    })?;
    PrivateKeyDer::from_pem_slice(&bytes)
        .map(PrivateKey)
        .map_err(|err| IdentityError::KeyPem {
            path: path.to_owned(),
            reason: pem_reason(&err),
        })
}

/// A PEM error as text that cannot carry file contents. (The reader's `IllegalSectionStart`
/// quotes the offending line, which could be key material.)
fn pem_reason(err: &rustls_pki_types::pem::Error) -> String {
    use rustls_pki_types::pem::Error;
    match err {
        Error::NoItemsFound => "no PEM section of the expected kind".to_owned(),
        Error::MissingSectionEnd { .. } => "a PEM section has no END line".to_owned(),
        Error::IllegalSectionStart { .. } => "a malformed BEGIN line".to_owned(),
        Error::Base64Decode(_) => "bad base64 inside a PEM section".to_owned(),
        Error::Io(err) => err.to_string(),
        Error::SectionTooLarge => "a PEM section is too large".to_owned(),
        _ => "malformed PEM".to_owned(),
    }
}

/// Proves that `key` is the private key of `cert` by signing a fixed message with the key
/// and verifying the signature with the certificate's public key.
///
/// # Errors
/// [`IdentityError::KeyUnsupported`] if the key cannot sign, [`IdentityError::KeyMismatch`]
/// if the signature does not verify. The paths only label the errors.
pub fn check_key_matches(
    cert: &CertificateDer<'_>,
    cert_path: &Path,
    key: &PrivateKey,
    key_path: &Path,
) -> Result<(), IdentityError> {
    use rcgen::SigningKey;

    const MESSAGE: &[u8] = b"sluice: does this key belong to this certificate?";
    let unsupported = |reason: String| IdentityError::KeyUnsupported {
        path: key_path.to_owned(),
        reason,
    };
    let mismatch = || IdentityError::KeyMismatch {
        key: key_path.to_owned(),
        certificate: cert_path.to_owned(),
    };

    let key_pair =
        rcgen::KeyPair::try_from(key.der()).map_err(|err| unsupported(err.to_string()))?;
    let algorithm = key_pair.algorithm();
    let verifier: &dyn rustls_pki_types::SignatureVerificationAlgorithm =
        if algorithm == &rcgen::PKCS_ED25519 {
            webpki::ring::ED25519
        } else if algorithm == &rcgen::PKCS_ECDSA_P256_SHA256 {
            webpki::ring::ECDSA_P256_SHA256
        } else if algorithm == &rcgen::PKCS_ECDSA_P384_SHA384 {
            webpki::ring::ECDSA_P384_SHA384
        } else if algorithm == &rcgen::PKCS_RSA_SHA256 {
            webpki::ring::RSA_PKCS1_2048_8192_SHA256
        } else {
            return Err(unsupported(format!("{algorithm:?}")));
        };
    let signature = key_pair
        .sign(MESSAGE)
        .map_err(|err| unsupported(err.to_string()))?;
    // `load_certificate` already parsed it; a failure here means the caller passed other bytes.
    let parsed = webpki::EndEntityCert::try_from(cert).map_err(|_| mismatch())?;
    parsed
        .verify_signature(verifier, MESSAGE, &signature)
        .map_err(|_| mismatch())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_round_trips_through_text() {
        let fp = Fingerprint::from_bytes([0xab; 32]);
        let text = fp.to_string();
        assert_eq!(text, format!("sha256:{}", "ab".repeat(32)));
        assert_eq!(text.parse::<Fingerprint>(), Ok(fp));
    }

    #[test]
    fn fingerprint_rejects_other_spellings() {
        let hex = "0123456789abcdef".repeat(4);
        let cases: &[(String, FingerprintError)] = &[
            (hex.clone(), FingerprintError::Prefix),
            (format!("SHA256:{hex}"), FingerprintError::Prefix),
            (format!("sha1:{hex}"), FingerprintError::Prefix),
            (
                format!("sha256:{}", &hex[..63]),
                FingerprintError::Length(63),
            ),
            (format!("sha256:{hex}0"), FingerprintError::Length(65)),
            (
                format!("sha256:{}", hex.to_uppercase()),
                FingerprintError::Digit,
            ),
            (format!("sha256:{}g", &hex[..63]), FingerprintError::Digit),
            (format!("sha256:{}é", &hex[..62]), FingerprintError::Digit),
        ];
        assert!(!cases.is_empty());
        for (text, want) in cases {
            assert_eq!(text.parse::<Fingerprint>(), Err(*want), "{text}");
        }
    }

    #[test]
    fn fingerprint_is_sha256_of_der() {
        // SHA-256 of the empty string, a published test vector.
        let fp = fingerprint(&CertificateDer::from(Vec::new()));
        assert_eq!(
            fp.to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn keygen_writes_a_private_key_and_a_matching_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let generated = keygen(dir.path()).unwrap();
        let mode = fs::metadata(&generated.key_path)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        check_key_permissions(&generated.key_path).unwrap();

        let cert = load_certificate(&generated.cert_path).unwrap();
        assert_eq!(fingerprint(&cert), generated.fingerprint);
        let key = load_private_key(&generated.key_path).unwrap();
        assert!(matches!(key.der(), PrivateKeyDer::Pkcs8(_)));
        check_key_matches(&cert, &generated.cert_path, &key, &generated.key_path).unwrap();
        // No temporary file is left behind.
        let mut names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, [CERT_FILE, KEY_FILE]);
    }

    #[test]
    fn keygen_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(CERT_FILE), "keep me").unwrap();
        let err = keygen(dir.path()).unwrap_err();
        assert!(matches!(err, IdentityError::Exists { .. }), "{err}");
        assert_eq!(fs::read(dir.path().join(CERT_FILE)).unwrap(), b"keep me");
        assert!(!dir.path().join(KEY_FILE).exists());
    }

    #[test]
    fn keygen_gives_each_gateway_its_own_identity() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        assert_ne!(
            keygen(a.path()).unwrap().fingerprint,
            keygen(b.path()).unwrap().fingerprint
        );
    }

    #[test]
    fn a_key_from_another_identity_is_a_mismatch() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let a = keygen(a.path()).unwrap();
        let b = keygen(b.path()).unwrap();
        let cert = load_certificate(&a.cert_path).unwrap();
        let key = load_private_key(&b.key_path).unwrap();
        let err = check_key_matches(&cert, &a.cert_path, &key, &b.key_path).unwrap_err();
        assert!(matches!(err, IdentityError::KeyMismatch { .. }), "{err}");
    }

    #[test]
    fn key_permissions_open_to_others_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let generated = keygen(dir.path()).unwrap();
        for mode in [0o640, 0o604, 0o620, 0o602, 0o644] {
            fs::set_permissions(&generated.key_path, fs::Permissions::from_mode(mode)).unwrap();
            let err = check_key_permissions(&generated.key_path).unwrap_err();
            assert!(
                matches!(err, IdentityError::KeyPermissions { mode: m, .. } if m == mode),
                "{mode:o}: {err}"
            );
            assert!(err.to_string().contains("0600"), "{err}");
        }
        fs::set_permissions(&generated.key_path, fs::Permissions::from_mode(0o400)).unwrap();
        check_key_permissions(&generated.key_path).unwrap();
    }

    #[test]
    fn private_keys_are_redacted_in_debug() {
        let dir = tempfile::tempdir().unwrap();
        let generated = keygen(dir.path()).unwrap();
        let key = load_private_key(&generated.key_path).unwrap();
        assert_eq!(format!("{key:?}"), "PrivateKey(<redacted>)");
        assert_eq!(format!("{:?}", key.clone()), "PrivateKey(<redacted>)");
    }

    #[test]
    fn non_certificates_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let generated = keygen(dir.path()).unwrap();
        // A key file is PEM, but holds no certificate.
        let err = load_certificate(&generated.key_path).unwrap_err();
        assert!(matches!(err, IdentityError::CertificatePem { .. }), "{err}");
        // A CERTIFICATE section whose contents are not X.509.
        let junk = dir.path().join("junk.pem");
        fs::write(
            &junk,
            "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let err = load_certificate(&junk).unwrap_err();
        assert!(matches!(err, IdentityError::CertificateDer { .. }), "{err}");
        let err = load_certificate(&dir.path().join("missing.pem")).unwrap_err();
        assert!(matches!(err, IdentityError::Read { .. }), "{err}");
        // A certificate file is PEM, but holds no key.
        let err = load_private_key(&generated.cert_path).unwrap_err();
        assert!(matches!(err, IdentityError::KeyPem { .. }), "{err}");
    }
}
