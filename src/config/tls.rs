//! The TLS settings: libpq's `sslmode`, `sslrootcert`, `sslnegotiation`, `channel_binding`.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

/// How the connection is encrypted and what is verified: libpq's `sslmode`, from the URL, `PGSSLMODE`
/// or [`PgConfig::tls`](crate::PgConfig::tls) (see the [`PgConfig`](crate::PgConfig) docs, "TLS").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsMode {
    /// Plain text.
    Disable,
    /// Plain text; TLS only if the server rejects the plain connection.
    Allow,
    /// TLS when the server offers it and the handshake succeeds; plain text otherwise.
    Prefer,
    /// TLS, verified only when a root certificate is given (then as [`VerifyCa`](TlsMode::VerifyCa)).
    Require,
    /// TLS with the certificate chain verified against the roots; the host name is not checked.
    VerifyCa,
    /// TLS with the chain verified and the host name checked against the certificate.
    VerifyFull,
}

impl TlsMode {
    /// libpq's name for the mode.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::Disable => "disable",
            TlsMode::Allow => "allow",
            TlsMode::Prefer => "prefer",
            TlsMode::Require => "require",
            TlsMode::VerifyCa => "verify-ca",
            TlsMode::VerifyFull => "verify-full",
        }
    }

    /// Whether the connection fails rather than go without TLS.
    pub fn requires_tls(self) -> bool {
        matches!(
            self,
            TlsMode::Require | TlsMode::VerifyCa | TlsMode::VerifyFull
        )
    }
}

/// Where the roots that verify the server's certificate come from: libpq's `sslrootcert`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RootCert {
    /// A PEM file of one or more CA certificates (an RDS region bundle, a provider's CA).
    File(PathBuf),
    /// The platform's trust store (`sslrootcert=system`); implies [`TlsMode::VerifyFull`].
    System,
}

/// How TLS is started: libpq's `sslnegotiation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum TlsNegotiation {
    /// Ask the server first (`SSLRequest`), as every PostgreSQL version understands.
    #[default]
    Postgres,
    /// Start the TLS handshake at once, with ALPN `postgresql`: PostgreSQL 17 and later only.
    Direct,
}

/// SCRAM channel binding: libpq's `channel_binding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ChannelBinding {
    /// Never bind.
    Disable,
    /// Bind when the server offers SCRAM-SHA-256-PLUS over TLS.
    #[default]
    Prefer,
    /// Fail unless the authentication is bound to the TLS channel.
    Require,
}

/// The TLS settings of a [`PgConfig`], turned into a rustls configuration by `crate::tls`.
#[derive(Clone)]
pub(crate) struct TlsOptions {
    pub(crate) mode: TlsMode,
    /// Whether the mode was asked for (URL, variable, builder) rather than the preset's default.
    pub(crate) mode_explicit: bool,
    pub(crate) root_cert: Option<RootCert>,
    pub(crate) client_cert: Option<PathBuf>,
    pub(crate) client_key: Option<PathBuf>,
    pub(crate) negotiation: TlsNegotiation,
    pub(crate) channel_binding: ChannelBinding,
    pub(crate) root_store: Option<Arc<rustls::RootCertStore>>,
    pub(crate) client_config: Option<Arc<rustls::ClientConfig>>,
}

impl fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("mode", &self.mode)
            .field("root_cert", &self.root_cert)
            .field("client_cert", &self.client_cert.is_some())
            .field("negotiation", &self.negotiation)
            .field("channel_binding", &self.channel_binding)
            .field("root_store", &self.root_store.as_ref().map(|s| s.len()))
            .field("client_config", &self.client_config.is_some())
            .finish()
    }
}
