//! The API's TLS: the operator's certificate and key, or (standalone) a local CA and a server
//! certificate for localhost generated into the data dir on first start and reused after.
//! Private keys are written 0600.

use crate::private_files::{read_text, write_private, PrivateFileError};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const CA_FILE: &str = "ca.pem";
pub const CA_KEY_FILE: &str = "ca-key.pem";
pub const SERVER_CERT_FILE: &str = "server.pem";
pub const SERVER_KEY_FILE: &str = "server-key.pem";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    File(#[from] PrivateFileError),
    #[error("cannot generate the local CA or server certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{path} holds no usable PEM {what}: {reason}")]
    Pem {
        path: PathBuf,
        what: &'static str,
        reason: String,
    },
    #[error("the certificate {cert} and key {key} do not make a TLS configuration: {source}")]
    Config {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
}

/// The files the API's TLS uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The local CA clients should trust (generated mode only).
    pub ca: Option<PathBuf>,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// This start created them.
    pub generated: bool,
}

/// Builds the server configuration from the operator's files, or from generated ones under
/// `data_dir` (created on first start for localhost, 127.0.0.1, ::1 and `extra_names`).
pub fn server_config(
    operator: Option<(&Path, &Path)>,
    data_dir: &Path,
    extra_names: &[String],
) -> Result<(Arc<rustls::ServerConfig>, TlsFiles), TlsError> {
    let files = match operator {
        Some((cert, key)) => TlsFiles {
            ca: None,
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            generated: false,
        },
        None => ensure_local_ca(data_dir, extra_names)?,
    };
    let certs = load_certs(&files.cert)?;
    let key = load_key(&files.key)?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default protocol versions")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|source| TlsError::Config {
        cert: files.cert.clone(),
        key: files.key.clone(),
        source,
    })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((Arc::new(config), files))
}

/// Generates `ca.pem`, `ca-key.pem`, `server.pem` and `server-key.pem` in `dir` unless the
/// server certificate and key already exist.
pub fn ensure_local_ca(dir: &Path, extra_names: &[String]) -> Result<TlsFiles, TlsError> {
    let files = TlsFiles {
        ca: Some(dir.join(CA_FILE)),
        cert: dir.join(SERVER_CERT_FILE),
        key: dir.join(SERVER_KEY_FILE),
        generated: false,
    };
    if files.cert.is_file() && files.key.is_file() {
        return Ok(files);
    }
    // The issuer needs only the CA's key and distinguished name, which `ca_params` rebuilds
    // identically, so an existing CA can sign a new server certificate.
    let ca_key = if dir.join(CA_FILE).is_file() && dir.join(CA_KEY_FILE).is_file() {
        KeyPair::from_pem(&read_text(&dir.join(CA_KEY_FILE))?)?
    } else {
        let key = KeyPair::generate()?;
        let mut params = ca_params()?;
        let (not_before, not_after) = validity(3650);
        params.not_before = not_before;
        params.not_after = not_after;
        let cert = params.self_signed(&key)?;
        write_private(&dir.join(CA_KEY_FILE), key.serialize_pem().as_bytes())?;
        write_public(&dir.join(CA_FILE), cert.pem().as_bytes())?;
        key
    };
    let issuer = Issuer::new(ca_params()?, ca_key);

    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    names.extend(extra_names.iter().cloned());
    let server_key = KeyPair::generate()?;
    let mut params = CertificateParams::new(names)?;
    params
        .distinguished_name
        .push(DnType::CommonName, "clonepool coordinator");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let (not_before, not_after) = validity(3650);
    params.not_before = not_before;
    params.not_after = not_after;
    let cert = params.signed_by(&server_key, &issuer)?;
    write_private(&files.key, server_key.serialize_pem().as_bytes())?;
    write_public(&files.cert, cert.pem().as_bytes())?;
    Ok(TlsFiles {
        generated: true,
        ..files
    })
}

fn ca_params() -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params
        .distinguished_name
        .push(DnType::CommonName, "clonepool local CA");
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

fn validity(days: i64) -> (time::OffsetDateTime, time::OffsetDateTime) {
    let now = time::OffsetDateTime::now_utc();
    (
        now - time::Duration::days(1),
        now + time::Duration::days(days),
    )
}

/// Certificates are public, but written through the same atomic path; 0644 so clients can read
/// the CA.
fn write_public(path: &Path, contents: &[u8]) -> Result<(), TlsError> {
    use std::os::unix::fs::PermissionsExt;
    write_private(path, contents)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).map_err(|source| {
        PrivateFileError::Write {
            path: path.to_path_buf(),
            source,
        }
        .into()
    })
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem_error = |reason: String| TlsError::Pem {
        path: path.to_path_buf(),
        what: "certificate",
        reason,
    };
    let bytes = std::fs::read(path).map_err(|source| PrivateFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| pem_error(err.to_string()))?;
    if certs.is_empty() {
        return Err(pem_error("no CERTIFICATE block".into()));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| PrivateFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|err| TlsError::Pem {
        path: path.to_path_buf(),
        what: "private key",
        reason: err.to_string(),
    })
}

/// A rustls client configuration trusting only the CA in `ca_pem` (for clients and tests).
pub fn client_config_trusting(ca_pem: &[u8]) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        let cert = cert.map_err(|err| TlsError::Pem {
            path: PathBuf::from("<ca>"),
            what: "certificate",
            reason: err.to_string(),
        })?;
        roots.add(cert).map_err(|err| TlsError::Pem {
            path: PathBuf::from("<ca>"),
            what: "certificate",
            reason: err.to_string(),
        })?;
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn first_start_generates_a_ca_and_a_localhost_certificate_and_reuses_them_after() {
        let dir = tempfile::tempdir().unwrap();
        let (_, files) = server_config(None, dir.path(), &[]).unwrap();
        assert!(files.generated);
        for file in [CA_KEY_FILE, SERVER_KEY_FILE] {
            let mode = std::fs::metadata(dir.path().join(file))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{file}");
        }
        let cert_before = std::fs::read(&files.cert).unwrap();
        let (_, again) = server_config(None, dir.path(), &[]).unwrap();
        assert!(!again.generated);
        assert_eq!(std::fs::read(&again.cert).unwrap(), cert_before);
        // The CA file makes a client configuration.
        client_config_trusting(&std::fs::read(files.ca.unwrap()).unwrap()).unwrap();
    }

    #[test]
    fn an_operators_certificate_and_key_are_used_as_given() {
        let theirs = tempfile::tempdir().unwrap();
        let generated = ensure_local_ca(theirs.path(), &["api.example.test".into()]).unwrap();
        let data = tempfile::tempdir().unwrap();
        let (_, files) =
            server_config(Some((&generated.cert, &generated.key)), data.path(), &[]).unwrap();
        assert_eq!(files.ca, None);
        assert_eq!(files.cert, generated.cert);
        assert!(!files.generated);
        assert!(
            !data.path().join(SERVER_CERT_FILE).exists(),
            "nothing generated"
        );
    }

    #[test]
    fn a_missing_operator_key_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let generated = ensure_local_ca(dir.path(), &[]).unwrap();
        let missing = dir.path().join("nope.pem");
        let err = server_config(Some((&generated.cert, &missing)), dir.path(), &[]).unwrap_err();
        assert!(err.to_string().contains("nope.pem"), "{err}");
    }
}
