//! Certificates for TLS tests, made fresh for each test run: a CA, a server certificate it signed (for
//! `localhost` and `127.0.0.1`), an expired one, a client certificate for the `postgres` user, and an
//! unrelated CA that trusts none of them.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use super::HarnessError;

/// Certificates for TLS tests, made fresh for each run: a CA, a server certificate it signed (for
/// `localhost` and `127.0.0.1`), an expired one, a client certificate for the `postgres` user, and an
/// unrelated CA that trusts none of them. PEM files in a temporary directory, removed when dropped.
#[derive(Debug)]
pub struct TestCerts {
    dir: tempfile::TempDir,
}

fn rcgen_error(what: &str) -> impl FnOnce(rcgen::Error) -> HarnessError + '_ {
    move |e| HarnessError::new(format!("generating the {what}: {e}"))
}

fn named(name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn
}

fn ca(name: &str) -> Result<(CertificateParams, KeyPair, String), HarnessError> {
    let key = KeyPair::generate().map_err(rcgen_error("CA key"))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = named(name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key).map_err(rcgen_error("CA"))?;
    Ok((params, key, cert.pem()))
}

fn leaf(
    names: &[&str],
    common_name: &str,
    purpose: ExtendedKeyUsagePurpose,
    issuer: &Issuer<'_, &KeyPair>,
    expired: bool,
) -> Result<(String, String), HarnessError> {
    let key = KeyPair::generate().map_err(rcgen_error("key"))?;
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .map_err(rcgen_error("certificate"))?;
    params.distinguished_name = named(common_name);
    params.extended_key_usages = vec![purpose];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    if expired {
        params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        params.not_after = rcgen::date_time_ymd(2001, 1, 1);
    }
    let cert = params
        .signed_by(&key, issuer)
        .map_err(rcgen_error("certificate"))?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn write(dir: &Path, name: &str, contents: &str) -> Result<(), HarnessError> {
    let path = dir.join(name);
    std::fs::write(&path, contents)
        .map_err(|e| HarnessError::io(format!("writing {}", path.display()), e))?;
    if name.ends_with(".key") {
        use std::os::unix::fs::PermissionsExt;
        // libpq and the server refuse a key that others may read.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| HarnessError::io(format!("chmod {}", path.display()), e))?;
    }
    Ok(())
}

impl TestCerts {
    /// Generates the certificates into a new temporary directory.
    pub fn generate() -> Result<TestCerts, HarnessError> {
        let dir = tempfile::Builder::new()
            .prefix("rampart-certs-")
            .tempdir()
            .map_err(|e| HarnessError::io("creating a directory for certificates", e))?;
        let (ca_params, ca_key, ca_pem) = ca("rampart test CA")?;
        let issuer = Issuer::from_params(&ca_params, &ca_key);
        let (_, _, other_pem) = ca("rampart unrelated CA")?;
        let server_names = ["localhost", "127.0.0.1"];
        let (server, server_key) = leaf(
            &server_names,
            "localhost",
            ExtendedKeyUsagePurpose::ServerAuth,
            &issuer,
            false,
        )?;
        let (expired, expired_key) = leaf(
            &server_names,
            "localhost",
            ExtendedKeyUsagePurpose::ServerAuth,
            &issuer,
            true,
        )?;
        // clientcert=verify-full matches the certificate's common name against the user name.
        let (client, client_key) = leaf(
            &[],
            "postgres",
            ExtendedKeyUsagePurpose::ClientAuth,
            &issuer,
            false,
        )?;
        for (name, pem) in [
            ("ca.crt", &ca_pem),
            ("other-ca.crt", &other_pem),
            ("server.crt", &server),
            ("server.key", &server_key),
            ("expired.crt", &expired),
            ("expired.key", &expired_key),
            ("client.crt", &client),
            ("client.key", &client_key),
        ] {
            write(dir.path(), name, pem)?;
        }
        Ok(TestCerts { dir })
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The CA that signed the server and client certificates (for `sslrootcert`).
    pub fn ca(&self) -> PathBuf {
        self.file("ca.crt")
    }

    /// A CA that signed nothing here: verification against it fails with an unknown issuer.
    pub fn other_ca(&self) -> PathBuf {
        self.file("other-ca.crt")
    }

    /// The server certificate, for `localhost` and `127.0.0.1`.
    pub fn server_cert(&self) -> PathBuf {
        self.file("server.crt")
    }

    /// The server certificate's key (mode 0600).
    pub fn server_key(&self) -> PathBuf {
        self.file("server.key")
    }

    /// A server certificate for the same names that expired in 2001.
    pub fn expired_server_cert(&self) -> PathBuf {
        self.file("expired.crt")
    }

    /// The expired certificate's key (mode 0600).
    pub fn expired_server_key(&self) -> PathBuf {
        self.file("expired.key")
    }

    /// A client certificate for the user `postgres` (for `sslcert`).
    pub fn client_cert(&self) -> PathBuf {
        self.file("client.crt")
    }

    /// The client certificate's key, mode 0600 (for `sslkey`).
    pub fn client_key(&self) -> PathBuf {
        self.file("client.key")
    }
}
