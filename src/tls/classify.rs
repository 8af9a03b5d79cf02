//! What a TLS, certificate or channel-binding failure at connect means, in words, as a `Permanent`
//! connect error.

use rampart_layers::Classification;
use rustls::CertificateError;

use crate::error::{Error, ErrorKind};

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

pub(super) fn rustls_cause(err: &tokio_postgres::Error) -> Option<&rustls::Error> {
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

/// A server older than PostgreSQL 17 reads a direct TLS handshake as a malformed startup packet and
/// hangs up without a word; the connector's handshake puts this in place of that bare end of file, so that the
/// failure can be told from a link lost mid-handshake.
#[derive(Debug)]
pub(super) struct DirectTlsRefused;

impl std::fmt::Display for DirectTlsRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(
            "TLS: the server hung up on a direct TLS handshake (sslnegotiation=direct needs PostgreSQL 17 \
             or later; use sslnegotiation=postgres for older servers and most poolers)",
        )
    }
}

impl std::error::Error for DirectTlsRefused {}
