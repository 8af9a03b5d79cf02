//! TLS: the rustls configuration made from libpq's keywords, the connector that falls back as libpq's
//! `allow` and `prefer` do, and what a TLS failure means (see [`crate::config`]'s TLS section).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use deadpool_postgres::Connect;
use futures_util::future::BoxFuture;
use rampart_layers::Classification;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::task::JoinHandle;
use tokio_postgres::config::SslMode;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{Client, NoTls, Socket};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::ConfigError;
use crate::config::{ChannelBinding, PgConfig, RootCert, TlsMode, TlsNegotiation, TlsOptions};
use crate::error::{Error, ErrorKind};

/// ring, chosen explicitly so that an application with another provider installed (or several) never
/// makes rustls panic.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What the server's certificate is checked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verify {
    /// Nothing (libpq's `allow`, `prefer` and `require` without a root certificate): encrypted only.
    Nothing,
    /// The chain, against the roots; any host name (`verify-ca`, or a weaker mode with roots given).
    Chain,
    /// The chain and the host name (`verify-full`).
    Full,
}

/// Checks the combinations libpq refuses, naming the keyword.
fn check(opts: &TlsOptions) -> Result<(), ConfigError> {
    if opts.channel_binding == ChannelBinding::Require && opts.mode == TlsMode::Disable {
        return Err(ConfigError::new(
            "channel_binding",
            "`require` needs TLS, and sslmode is `disable`",
        ));
    }
    if opts.negotiation == TlsNegotiation::Direct && !opts.mode.requires_tls() {
        return Err(ConfigError::new(
            "sslnegotiation",
            format!(
                "`direct` needs sslmode `require`, `verify-ca` or `verify-full`, not `{}` (a direct handshake \
                 cannot fall back to plain text)",
                opts.mode.as_str()
            ),
        ));
    }
    if opts.root_cert == Some(RootCert::System) && opts.mode != TlsMode::VerifyFull {
        return Err(ConfigError::new(
            "sslrootcert",
            format!(
                "`system` needs sslmode `verify-full`, not `{}` (the public roots vouch for host names, not for a \
                 chain alone)",
                opts.mode.as_str()
            ),
        ));
    }
    match (&opts.client_cert, &opts.client_key) {
        (Some(_), None) => Err(ConfigError::new(
            "sslkey",
            "sslcert is set but sslkey is not",
        )),
        (None, Some(_)) => Err(ConfigError::new(
            "sslcert",
            "sslkey is set but sslcert is not",
        )),
        _ => Ok(()),
    }
}

/// The rustls configuration for `opts`, or `None` for plain text. Reads the certificate files; every
/// error names its keyword.
pub(crate) fn client_config(opts: &TlsOptions) -> Result<Option<ClientConfig>, ConfigError> {
    check(opts)?;
    if opts.mode == TlsMode::Disable {
        return Ok(None);
    }
    let mut config = match &opts.client_config {
        Some(config) => (**config).clone(),
        None => build_client_config(opts)?,
    };
    if opts.negotiation == TlsNegotiation::Direct
        && !config.alpn_protocols.iter().any(|p| p == b"postgresql")
    {
        config.alpn_protocols.push(b"postgresql".to_vec());
    }
    Ok(Some(config))
}

fn build_client_config(opts: &TlsOptions) -> Result<ClientConfig, ConfigError> {
    let given_roots = match (&opts.root_store, &opts.root_cert) {
        (Some(store), _) => Some((**store).clone()),
        (None, Some(RootCert::File(path))) => Some(load_roots(path)?),
        (None, Some(RootCert::System)) => Some(system_roots()?),
        (None, None) => None,
    };
    let verify = match opts.mode {
        TlsMode::VerifyFull => Verify::Full,
        TlsMode::VerifyCa => Verify::Chain,
        _ if given_roots.is_some() => Verify::Chain,
        _ => Verify::Nothing,
    };
    let roots = given_roots.unwrap_or_else(|| RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    });
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::new("tls", format!("cannot set up TLS: {e}")))?;
    let webpki = || {
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots.clone()), provider.clone())
            .build()
            .map_err(|e| ConfigError::new("sslrootcert", format!("cannot use these roots: {e}")))
    };
    let builder = match verify {
        Verify::Full => builder.with_webpki_verifier(webpki()?),
        Verify::Chain => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ChainOnly(webpki()?))),
        Verify::Nothing => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(
                provider.signature_verification_algorithms,
            ))),
    };
    match (&opts.client_cert, &opts.client_key) {
        (Some(cert), Some(key)) => {
            let (chain, key) = load_client_cert(cert, key)?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                ConfigError::new("sslkey", format!("cannot use this key with sslcert: {e}"))
            })
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

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

fn load_roots(path: &Path) -> Result<RootCertStore, ConfigError> {
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
fn system_roots() -> Result<RootCertStore, ConfigError> {
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

fn load_client_cert(
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

/// libpq's `require` without a root certificate: the link is encrypted and the handshake signed by the
/// certificate's key, but the certificate itself is not checked.
#[derive(Debug)]
struct NoVerification(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// `verify-ca`: webpki's verification less the host name. webpki checks the chain (issuer, validity
/// dates, key usage) before the name, so "not valid for this name" means everything else passed.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// deadpool-postgres's connect hook: plain text or rustls, with libpq's second attempt for `allow` and
/// `prefer`, and the connection task spawned with a log line when it ends in error.
pub(crate) struct Connector {
    tls: Option<MakeRustlsConnect>,
    mode: TlsMode,
    direct: bool,
}

impl Connector {
    /// The connector for `pg`'s TLS settings; reads the certificate files (errors name the keyword).
    pub(crate) fn new(pg: &PgConfig) -> Result<Self, ConfigError> {
        let opts = pg.tls_options();
        let tls = client_config(opts)?.map(MakeRustlsConnect::new);
        Ok(Self {
            tls,
            mode: opts.mode,
            direct: opts.negotiation == TlsNegotiation::Direct,
        })
    }

    /// The TLS connector, if the connection may be encrypted (also needed to send cancel requests,
    /// which tokio-postgres sends with the `sslmode` the connection was made with).
    pub(crate) fn tls(&self) -> Option<&MakeRustlsConnect> {
        self.tls.as_ref()
    }
}

fn spawn_connection<F>(connection: F) -> JoinHandle<()>
where
    F: std::future::Future<Output = Result<(), tokio_postgres::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(target: "rampart::pool", error = %e, "connection ended with an error");
        }
    })
}

/// A server older than PostgreSQL 17 reads a direct TLS handshake as a malformed startup packet and
/// hangs up without a word; [`Handshake`] puts this in place of that bare end of file, so that the
/// failure can be told from a link lost mid-handshake.
#[derive(Debug)]
struct DirectTlsRefused;

impl std::fmt::Display for DirectTlsRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(
            "TLS: the server hung up on a direct TLS handshake (sslnegotiation=direct needs PostgreSQL 17 \
             or later; use sslnegotiation=postgres for older servers and most poolers)",
        )
    }
}

impl std::error::Error for DirectTlsRefused {}

/// tokio-postgres-rustls's connector, naming the failure of a direct handshake and recording whether a
/// handshake succeeded (libpq's `prefer` tries plain text after a server error only if TLS was in use).
#[derive(Clone)]
struct Handshake {
    inner: MakeRustlsConnect,
    direct: bool,
    done: Arc<AtomicBool>,
}

type RustlsTlsConnect = <MakeRustlsConnect as MakeTlsConnect<Socket>>::TlsConnect;
type RustlsStream = <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream;

impl MakeTlsConnect<Socket> for Handshake {
    type Stream = RustlsStream;
    type TlsConnect = HandshakeConnect;
    type Error = <MakeRustlsConnect as MakeTlsConnect<Socket>>::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<HandshakeConnect, Self::Error> {
        Ok(HandshakeConnect {
            inner: MakeTlsConnect::<Socket>::make_tls_connect(&mut self.inner, domain)?,
            direct: self.direct,
            done: self.done.clone(),
        })
    }
}

struct HandshakeConnect {
    inner: RustlsTlsConnect,
    direct: bool,
    done: Arc<AtomicBool>,
}

impl TlsConnect<Socket> for HandshakeConnect {
    type Stream = RustlsStream;
    type Error = std::io::Error;
    // Boxed: the inner future's type is private to tokio-postgres-rustls. One allocation per connect.
    type Future = BoxFuture<'static, Result<RustlsStream, std::io::Error>>;

    fn connect(self, stream: Socket) -> Self::Future {
        let (direct, done) = (self.direct, self.done);
        let handshake = self.inner.connect(stream);
        Box::pin(async move {
            let stream = handshake.await;
            done.store(stream.is_ok(), Ordering::Relaxed);
            stream.map_err(|e| {
                if direct && e.kind() == std::io::ErrorKind::UnexpectedEof {
                    std::io::Error::new(e.kind(), DirectTlsRefused)
                } else {
                    e
                }
            })
        })
    }
}

async fn connect_once(
    pg_config: &tokio_postgres::Config,
    tls: Option<&Handshake>,
    mode: SslMode,
) -> Result<(Client, JoinHandle<()>), tokio_postgres::Error> {
    let mut config = pg_config.clone();
    config.ssl_mode(mode);
    match (mode, tls) {
        (SslMode::Disable, _) | (_, None) => {
            config.ssl_mode(SslMode::Disable);
            let (client, connection) = config.connect(NoTls).await?;
            Ok((client, spawn_connection(connection)))
        }
        (_, Some(tls)) => {
            let (client, connection) = config.connect(tls.clone()).await?;
            Ok((client, spawn_connection(connection)))
        }
    }
}

/// Whether the TLS handshake failed (tokio-postgres has no public kind for it, only this message), or
/// rustls refused the certificate.
fn handshake_failed(err: &tokio_postgres::Error) -> bool {
    err.to_string()
        .starts_with("error performing TLS handshake")
        || rustls_cause(err).is_some()
}

impl Connect for Connector {
    fn connect(
        &self,
        pg_config: &tokio_postgres::Config,
    ) -> BoxFuture<'_, Result<(Client, JoinHandle<()>), tokio_postgres::Error>> {
        let pg_config = pg_config.clone();
        Box::pin(async move {
            let handshake = self.tls.clone().map(|inner| Handshake {
                inner,
                direct: self.direct,
                done: Arc::new(AtomicBool::new(false)),
            });
            let tls = handshake.as_ref();
            let tls_was_used = || {
                handshake
                    .as_ref()
                    .is_some_and(|h| h.done.load(Ordering::Relaxed))
            };
            match self.mode {
                TlsMode::Disable => connect_once(&pg_config, None, SslMode::Disable).await,
                // libpq: plain text first; if the server answers with an error (a `hostssl`-only
                // pg_hba.conf, say), once more with TLS.
                TlsMode::Allow => match connect_once(&pg_config, None, SslMode::Disable).await {
                    Err(e) if e.as_db_error().is_some() => {
                        connect_once(&pg_config, tls, SslMode::Prefer).await
                    }
                    done => done,
                },
                // libpq: TLS if offered; if the handshake fails or the server answers the TLS
                // connection with an error (a `hostnossl`-only pg_hba.conf), once more in plain text.
                // When that fails too, a TLS failure is the error that explains it.
                TlsMode::Prefer => match connect_once(&pg_config, tls, SslMode::Prefer).await {
                    Err(first)
                        if handshake_failed(&first)
                            || (first.as_db_error().is_some() && tls_was_used()) =>
                    {
                        match connect_once(&pg_config, None, SslMode::Disable).await {
                            Err(_) if handshake_failed(&first) => Err(first),
                            done => done,
                        }
                    }
                    done => done,
                },
                TlsMode::Require | TlsMode::VerifyCa | TlsMode::VerifyFull => {
                    connect_once(&pg_config, tls, SslMode::Require).await
                }
            }
        })
    }
}

/// The errors in `err`'s chain, `err` first. tokio-rustls wraps rustls's error in an `io::Error`,
/// whose `source()` skips it, so each `io::Error`'s inner error is taken too.
fn chain(err: &tokio_postgres::Error) -> Vec<&(dyn std::error::Error + 'static)> {
    let mut found: Vec<&(dyn std::error::Error + 'static)> = vec![err];
    let mut current = std::error::Error::source(err);
    while let Some(e) = current {
        found.push(e);
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            found.push(inner);
        }
        current = e.source();
    }
    found
}

/// The first error of type `E` in `err`'s chain.
fn cause<E: std::error::Error + 'static>(err: &tokio_postgres::Error) -> Option<&E> {
    chain(err).into_iter().find_map(|e| e.downcast_ref::<E>())
}

fn rustls_cause(err: &tokio_postgres::Error) -> Option<&rustls::Error> {
    cause::<rustls::Error>(err)
}

/// What a certificate error means, in words.
fn describe_certificate(err: &CertificateError) -> String {
    match err {
        CertificateError::UnknownIssuer => {
            "TLS: the server's certificate is signed by an unknown issuer (not in sslrootcert, or not a \
             public CA when no sslrootcert is given)"
                .to_owned()
        }
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            "TLS: the server's certificate does not name this host (sslmode=verify-full checks the host \
             name; verify-ca does not)"
                .to_owned()
        }
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            "TLS: the server's certificate has expired".to_owned()
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "TLS: the server's certificate is not valid yet (check the clock)".to_owned()
        }
        CertificateError::Revoked => "TLS: the server's certificate has been revoked".to_owned(),
        other => format!("TLS: the server's certificate is not acceptable: {other:?}"),
    }
}

fn describe_rustls(err: &rustls::Error) -> String {
    match err {
        rustls::Error::InvalidCertificate(cert) => describe_certificate(cert),
        rustls::Error::AlertReceived(alert) => format!(
            "TLS: the server refused the handshake ({alert:?}); if it asks for a client certificate, \
             check sslcert/sslkey and that the server trusts their issuer"
        ),
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            "TLS: the server's answer is not TLS (sslnegotiation=direct needs PostgreSQL 17 or later)"
                .to_owned()
        }
        rustls::Error::NoApplicationProtocol => {
            "TLS: the server refused ALPN `postgresql` (sslnegotiation=direct)".to_owned()
        }
        other => format!("TLS: {other}"),
    }
}

/// The error for a connect that failed because of TLS, certificates or channel binding, or `None` for
/// any other failure. Such a failure is `Permanent`: the same settings fail the same way on the next
/// try, so it is never retried and never counts against the breaker. `server` is the redacted address.
pub(crate) fn classify_tls_failure(err: &tokio_postgres::Error, server: &str) -> Option<Error> {
    // tokio-postgres's own TLS and authentication failures are plain strings in the chain, not types.
    let message = chain(err)
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(": ");
    let cause = if let Some(tls) = rustls_cause(err) {
        describe_rustls(tls)
    } else if let Some(refused) = cause::<DirectTlsRefused>(err) {
        refused.to_string()
    } else if message.contains("server does not support TLS") {
        "TLS: the server does not support TLS, and sslmode requires it".to_owned()
    } else if message.contains("no hostname provided for TLS handshake") {
        "TLS: no host name to verify the certificate against (hostaddr alone is not enough)"
            .to_owned()
    } else if message.contains("channel binding") {
        "channel binding is required (channel_binding=require) but the server did not use it (it needs \
         TLS and SCRAM authentication)"
            .to_owned()
    } else {
        return None;
    };
    Some(Error::new(
        ErrorKind::Connect,
        Classification::Permanent,
        format!("could not connect to {server}: {cause}"),
    ))
}
