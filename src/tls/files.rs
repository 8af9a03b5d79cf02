//! Reading certificates and keys from PEM files (rustls-pki-types' PEM parser), and the platform's
//! trust store (rustls-native-certs). Every error names its keyword and the file, never a key's contents.

use std::path::Path;

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::ConfigError;

fn read_certs(
    path: &Path,
    field: &'static str,
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let shown = path.display();
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            ConfigError::new(field, format!("cannot read certificates from {shown}: {e}"))
        })?;
    if certs.is_empty() {
        return Err(ConfigError::new(
            field,
            format!("{shown} holds no PEM certificate (`-----BEGIN CERTIFICATE-----`)"),
        ));
    }
    Ok(certs)
}

pub(super) fn load_roots(path: &Path) -> Result<RootCertStore, ConfigError> {
    let mut roots = RootCertStore::empty();
    for (i, cert) in read_certs(path, "sslrootcert")?.into_iter().enumerate() {
        roots.add(cert).map_err(|e| {
            ConfigError::new(
                "sslrootcert",
                format!(
                    "certificate {} in {} is not a usable CA certificate: {e}",
                    i + 1,
                    path.display()
                ),
            )
        })?;
    }
    Ok(roots)
}

/// `sslrootcert=system`: the platform's store, through rustls-native-certs (which honours
/// `SSL_CERT_FILE` and `SSL_CERT_DIR`, as OpenSSL does).
pub(super) fn system_roots() -> Result<RootCertStore, ConfigError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        let why = found
            .errors
            .first()
            .map_or(String::new(), |e| format!(" ({e})"));
        return Err(ConfigError::new(
            "sslrootcert",
            format!("`system`: the platform's trust store holds no usable certificate{why}"),
        ));
    }
    Ok(roots)
}

pub(super) fn load_client_cert(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), ConfigError> {
    let chain = read_certs(cert, "sslcert")?;
    check_key_permissions(key)?;
    // The key's contents never go into a message: only the file name and what kind of problem it is.
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        let why = match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "holds no unencrypted PEM private key (PKCS#8, PKCS#1 or SEC1)".to_owned()
            }
            rustls::pki_types::pem::Error::Io(io) => format!("cannot be read: {io}"),
            _ => "is not a valid PEM private key".to_owned(),
        };
        ConfigError::new("sslkey", format!("{} {why}", key.display()))
    })?;
    Ok((chain, key))
}

/// libpq's rule: a key that others may read is refused (0600 or less; 0640 or less if root owns it, for a
/// key shared through a group).
#[cfg(unix)]
fn check_key_permissions(key: &Path) -> Result<(), ConfigError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(key).map_err(|e| {
        ConfigError::new("sslkey", format!("{} cannot be read: {e}", key.display()))
    })?;
    if !meta.is_file() {
        return Err(ConfigError::new(
            "sslkey",
            format!("{} is not a regular file", key.display()),
        ));
    }
    let forbidden = if meta.uid() == 0 { 0o037 } else { 0o077 };
    if meta.mode() & forbidden != 0 {
        return Err(ConfigError::new(
            "sslkey",
            format!(
                "{} has group or world access (mode {:o}); it must be u=rw (0600) or less, or u=rw,g=r (0640) \
                 or less if owned by root, as libpq requires",
                key.display(),
                meta.mode() & 0o777
            ),
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_key_permissions(_key: &Path) -> Result<(), ConfigError> {
    Ok(())
}
