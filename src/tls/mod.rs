//! TLS: the rustls configuration made from libpq's keywords (`files` reads the certificates, `verify`
//! holds the verifiers webpki lacks), the connector that falls back as libpq's `allow` and `prefer` do
//! (`connector`), and what a TLS failure means (`classify`). The keywords are in [`crate::config`]'s
//! TLS section.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, RootCertStore};

use crate::ConfigError;
use crate::config::{ChannelBinding, RootCert, TlsMode, TlsNegotiation, TlsOptions};

mod classify;
mod connector;
mod files;
mod verify;

pub(crate) use classify::classify_tls_failure;
pub(crate) use connector::{Connected, Connector, Refused, wrong_kind_of_session};

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
        (None, Some(RootCert::File(path))) => Some(files::load_roots(path)?),
        (None, Some(RootCert::System)) => Some(files::system_roots()?),
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
            .with_custom_certificate_verifier(Arc::new(verify::ChainOnly(webpki()?))),
        Verify::Nothing => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verify::NoVerification(
                provider.signature_verification_algorithms,
            ))),
    };
    match (&opts.client_cert, &opts.client_key) {
        (Some(cert), Some(key)) => {
            let (chain, key) = files::load_client_cert(cert, key)?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                ConfigError::new("sslkey", format!("cannot use this key with sslcert: {e}"))
            })
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}
