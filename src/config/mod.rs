//! Connection settings: from a URL or a builder, with the defaults tokio-postgres does not give.
//!
//! What users read is on [`PgConfig`] (the module is private: the flat list in `lib.rs` is the one public
//! path). The files: `tls` (the TLS settings), `hosts` (a configuration naming several hosts, one host at a time), `modes` (presets, pooler mode), `keywords` (rampart's own
//! keywords out of the connection string, and the checks of what the server would refuse), this one (the
//! settings and their builder).

mod hosts;
mod keywords;
mod modes;
mod tls;

pub(crate) use self::hosts::one_by_one;

pub use self::modes::{PoolerMode, Preset};
pub(crate) use self::tls::TlsOptions;
pub use self::tls::{ChannelBinding, RootCert, TlsMode, TlsNegotiation};

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::config::{SslMode, SslNegotiation, TargetSessionAttrs};

use crate::ConfigError;

/// Connection settings for one Postgres server; see below.
///
/// tokio-postgres connects with no connect timeout, no TCP keepalives and the kernel's default
/// `tcp_user_timeout` (about 15 minutes of retransmissions on Linux). On a hosted database that means a dead
/// network path hangs a connect or a write for minutes. [`PgConfig`] fills those in, with two presets:
///
/// | setting | [`server`](PgConfig::server) (always-on hosts, the default) | [`serverless`](PgConfig::serverless) (Neon-like hosts) | why |
/// |---|---|---|---|
/// | connect timeout | 5 s | 15 s | a cold serverless compute takes seconds to wake; an always-on server answers in milliseconds or not at all |
/// | TCP keepalive idle / interval / count | 30 s / 10 s / 3 | 60 s / 15 s / 4 | an idle link whose peer vanished is found in about a minute (server) or two (serverless), instead of the kernel's two hours |
/// | `tcp_user_timeout` | 2.5 s | 10 s | unacknowledged writes (and an unanswered keepalive probe) fail the link within the stacks' attempt timeout (3 s, 15 s), not after 15 minutes of retransmission |
/// | TLS | as the URL's `sslmode` says (default `prefer`, as libpq) | `verify-full` unless the URL says otherwise | hosted Postgres requires TLS, and an unverified link is open to anyone on the path |
/// | keepalive pinger | off (may be turned on) | off, always | an application-level ping would keep a suspended compute awake, and billed |
/// | `application_name` | `rampart` | `rampart` | so operators can find the connections in `pg_stat_activity` |
///
/// A third preset, [`pooler`](PgConfig::pooler), is for a pooler in transaction mode (PgBouncer and the
/// hosted poolers built on it): the `server` settings, plus [`PoolerMode::Transaction`], which keeps no
/// state in the server session between transactions (see [`PoolerMode::Transaction`](crate::PoolerMode::Transaction)). It is a setting of its
/// own ([`PgConfig::pooling`]) so that it combines with `serverless` for a serverless host's pooler.
///
/// Keepalives only help an *idle* link: Linux sends no probes while data is unacknowledged, and nothing
/// at the TCP level helps against a peer that acknowledges and never answers. That is why the ready-made
/// stacks also put a deadline and a per-attempt timeout on every request.
///
/// # TLS
///
/// TLS is rustls (with ring), and the keywords are libpq's, with libpq's meaning, in the URL's query
/// (`postgres://...?sslmode=verify-full&sslrootcert=/etc/ssl/rds.pem`), in a key=value string
/// (`host=db sslmode=verify-full`), in the `PGSSL*` environment variables where the string says nothing,
/// and in the builder methods:
///
/// | keyword (variable) | values | meaning |
/// |---|---|---|
/// | `sslmode` (`PGSSLMODE`) | `disable` | plain text |
/// | | `allow` | plain text; TLS only if the server rejects the plain connection |
/// | | `prefer` (the `server` default) | TLS if the server offers it; plain text if it does not, or if the TLS handshake or verification fails, or if the server rejects the TLS connection |
/// | | `require` | TLS, **not verified**, unless a root certificate is given: then the chain is verified as `verify-ca` does |
/// | | `verify-ca` | TLS, the chain verified against the roots; any host name |
/// | | `verify-full` (the `serverless` default) | TLS, the chain verified and the certificate must name the host |
/// | `sslrootcert` (`PGSSLROOTCERT`) | a PEM file | the roots to verify against (an RDS region bundle, a provider's CA) |
/// | | `system` | the platform's trust store; implies `verify-full`, and a weaker `sslmode` is refused (as libpq 16) |
/// | `sslcert`, `sslkey` (`PGSSLCERT`, `PGSSLKEY`) | PEM files | a client certificate (and its chain) and its key (PKCS#8, PKCS#1 or SEC1, unencrypted; mode 0600 or less, or 0640 if root owns it, as libpq requires) |
/// | `sslnegotiation` (`PGSSLNEGOTIATION`) | `postgres`, `direct` | `direct` starts TLS at once with ALPN `postgresql` (PostgreSQL 17 and later), saving a round trip; it needs `require` or stronger |
/// | `channel_binding` (`PGCHANNELBINDING`) | `disable`, `prefer` (default), `require` | SCRAM channel binding (`tls-server-end-point`); `require` refuses a server that does not bind (md5, trust, plain text) |
///
/// Where rampart differs from libpq: it reads no files from `~/.postgresql` (name them with the keywords
/// or the variables); `verify-ca`/`verify-full` without `sslrootcert` verify against the public
/// (Mozilla/webpki) roots, which is what Neon's and other public-CA hosts need, where libpq would look for
/// `~/.postgresql/root.crt`; and a file it is told to use must be there (libpq quietly goes on without an
/// `sslcert` that does not exist, and without an `sslrootcert` that does not exist unless the mode is
/// `verify-ca` or `verify-full`, which leaves a typo unverified). [`PgConfig::tls_root_store`] and [`PgConfig::tls_client_config`] take rustls
/// values for anything the keywords cannot say.
///
/// Settings that cannot work are a [`ConfigError`] naming the keyword, when the URL is parsed or when the
/// pool is built: an unknown value, `channel_binding=require` with `sslmode=disable`, `sslnegotiation=direct`
/// with `allow` or `prefer`, a certificate file that cannot be read or holds no PEM certificate, a key that
/// does not match its certificate. A TLS failure when connecting (an unknown issuer, a certificate that
/// does not name the host or has expired, a server without TLS under `require`) is a
/// [`Permanent`](rampart_layers::Classification::Permanent) [`ErrorKind::Connect`](crate::ErrorKind::Connect)
/// error naming the cause and the server: it is never retried and never counts against the breaker.
///
/// Providers: Neon signs with a public CA, so the `serverless` preset's `verify-full` works as it is. For
/// RDS download the region's bundle and pass `sslrootcert=/path/to/eu-west-1-bundle.pem` (and
/// `sslmode=verify-full`); for Supabase, its CA certificate from the dashboard the same way.
///
/// ```
/// use rampart::{PgConfig, TlsMode};
///
/// // libpq's `require` with a root certificate verifies the chain; without one it only encrypts.
/// let neon = PgConfig::serverless("postgres://app@ep-cool-1.eu-central-1.aws.neon.tech/app")?;
/// assert_eq!(neon.tls_mode(), TlsMode::VerifyFull);
/// let local = PgConfig::server("host=127.0.0.1 user=app sslmode=require")?;
/// assert_eq!(local.tls_mode(), TlsMode::Require);
/// // `sslmode=` inside another value changes nothing.
/// let odd = PgConfig::serverless("postgres://app@h/app?application_name=sslmode%3Ddisable")?;
/// assert_eq!(odd.tls_mode(), TlsMode::VerifyFull);
/// # Ok::<(), rampart::ConfigError>(())
/// ```
///
/// # Secrets
///
/// The password appears in no `Debug` or `Display` output: [`PgConfig::redacted_url`] prints the URL with
/// the password replaced by `***`, and every error that names the server uses it.
///
/// ```
/// use std::time::Duration;
/// use rampart::PgConfig;
///
/// let config = PgConfig::serverless("postgres://app:hunter2@db.example.com/app")?
///     .connect_timeout(Duration::from_secs(20));
/// assert_eq!(config.redacted_url(), "postgres://app:***@db.example.com:5432/app?sslmode=verify-full");
/// assert!(!format!("{config:?}").contains("hunter2"));
/// # Ok::<(), rampart::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct PgConfig {
    pg: tokio_postgres::Config,
    tls: TlsOptions,
    preset: Preset,
    pooler: PoolerMode,
}

impl fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgConfig")
            .field("url", &self.redacted_url())
            .field("preset", &self.preset)
            .field("pooler", &self.pooler)
            .field("tls", &self.tls)
            .field("connect_timeout", &self.pg.get_connect_timeout())
            .field("keepalives_idle", &self.pg.get_keepalives_idle())
            .field("keepalives_interval", &self.pg.get_keepalives_interval())
            .field("keepalives_retries", &self.pg.get_keepalives_retries())
            .field("tcp_user_timeout", &self.pg.get_tcp_user_timeout())
            .field("application_name", &self.pg.get_application_name())
            .finish()
    }
}

impl fmt::Display for PgConfig {
    /// The redacted URL.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted_url())
    }
}

impl PgConfig {
    /// Parses a `postgres://` URL (or a key=value connection string) with the [`server`](Self::server)
    /// defaults. The error names what is wrong without repeating the URL (which may hold a password).
    pub fn from_url(url: &str) -> Result<Self, ConfigError> {
        Self::server(url)
    }

    /// Settings for an always-on server (see the table in the [`PgConfig`] docs).
    pub fn server(url: &str) -> Result<Self, ConfigError> {
        Self::parse(url, Preset::Server, &process_env)
    }

    /// Settings for a serverless host that suspends when idle (Neon and the like): longer connect timeout
    /// for cold starts, TLS required and the host verified (`verify-full`) unless the URL's `sslmode`
    /// says otherwise, never a keepalive pinger.
    pub fn serverless(url: &str) -> Result<Self, ConfigError> {
        Self::parse(url, Preset::Serverless, &process_env)
    }

    /// Settings for a pooler in transaction mode (PgBouncer, Neon's `-pooler` endpoints, Supabase's
    /// pooler): the [`server`](Self::server) timeouts with [`PoolerMode::Transaction`]. For a serverless
    /// host's pooler endpoint, start from [`serverless`](Self::serverless) and add
    /// [`pooling`](Self::pooling)`(PoolerMode::Transaction)`.
    pub fn pooler(url: &str) -> Result<Self, ConfigError> {
        Ok(Self::server(url)?.pooling(PoolerMode::Transaction))
    }

    /// Like [`server`](Self::server) or [`serverless`](Self::serverless), but the `PGSSLMODE`,
    /// `PGSSLROOTCERT`, `PGSSLCERT`, `PGSSLKEY`, `PGSSLNEGOTIATION` and `PGCHANNELBINDING` variables are
    /// looked up with `env` instead of in the process environment (for tests, or a configuration
    /// system of your own).
    pub fn with_env(
        url: &str,
        preset: Preset,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        Self::parse(url, preset, &env)
    }

    fn default_tls_mode(&self) -> TlsMode {
        match (self.preset, &self.tls.root_cert) {
            (_, Some(RootCert::System)) | (Preset::Serverless, _) => TlsMode::VerifyFull,
            (Preset::Server, _) => TlsMode::Prefer,
        }
    }

    /// Carries the settings tokio-postgres acts on into its configuration. The connector sets the
    /// `sslmode` of each attempt itself (see `crate::tls::Connector`); this is the first attempt's.
    fn sync_tls(&mut self) {
        self.pg.ssl_mode(match self.tls.mode {
            TlsMode::Disable | TlsMode::Allow => SslMode::Disable,
            TlsMode::Prefer => SslMode::Prefer,
            TlsMode::Require | TlsMode::VerifyCa | TlsMode::VerifyFull => SslMode::Require,
        });
        self.pg.ssl_negotiation(match self.tls.negotiation {
            TlsNegotiation::Postgres => SslNegotiation::Postgres,
            TlsNegotiation::Direct => SslNegotiation::Direct,
        });
        self.pg.channel_binding(match self.tls.channel_binding {
            ChannelBinding::Disable => tokio_postgres::config::ChannelBinding::Disable,
            ChannelBinding::Prefer => tokio_postgres::config::ChannelBinding::Prefer,
            ChannelBinding::Require => tokio_postgres::config::ChannelBinding::Require,
        });
    }

    /// How long a connect may take, TLS and authentication included.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.pg.connect_timeout(timeout);
        self
    }

    /// TCP keepalives on idle links: first probe after `idle`, then every `interval`, giving up after `retries`.
    pub fn keepalives(mut self, idle: Duration, interval: Duration, retries: u32) -> Self {
        self.pg
            .keepalives(true)
            .keepalives_idle(idle)
            .keepalives_interval(interval)
            .keepalives_retries(retries);
        self
    }

    /// How long written data may stay unacknowledged before the kernel gives up on the link.
    pub fn tcp_user_timeout(mut self, timeout: Duration) -> Self {
        self.pg.tcp_user_timeout(timeout);
        self
    }

    /// The `application_name` the server shows in `pg_stat_activity`.
    pub fn application_name(mut self, name: &str) -> Self {
        self.pg.application_name(name);
        self
    }

    /// Overrides the TLS mode (`sslmode`) the URL gave.
    pub fn tls(mut self, mode: TlsMode) -> Self {
        self.tls.mode = mode;
        self.tls.mode_explicit = true;
        self.sync_tls();
        self
    }

    /// The roots to verify the server's certificate against (`sslrootcert`). [`RootCert::System`]
    /// makes [`TlsMode::VerifyFull`] the mode unless one was asked for.
    pub fn ssl_root_cert(mut self, root: RootCert) -> Self {
        self.tls.root_cert = Some(root);
        if !self.tls.mode_explicit {
            self.tls.mode = self.default_tls_mode();
        }
        self.sync_tls();
        self
    }

    /// A client certificate (PEM, the certificate first and then its chain) and its private key (PEM:
    /// PKCS#8, PKCS#1 or SEC1, unencrypted): `sslcert` and `sslkey`. The files are read when the pool is
    /// built; an error names the keyword.
    pub fn ssl_client_cert(mut self, cert: impl AsRef<Path>, key: impl AsRef<Path>) -> Self {
        self.tls.client_cert = Some(cert.as_ref().to_owned());
        self.tls.client_key = Some(key.as_ref().to_owned());
        self
    }

    /// How TLS is started (`sslnegotiation`).
    pub fn tls_negotiation(mut self, negotiation: TlsNegotiation) -> Self {
        self.tls.negotiation = negotiation;
        self.sync_tls();
        self
    }

    /// SCRAM channel binding (`channel_binding`).
    pub fn channel_binding(mut self, binding: ChannelBinding) -> Self {
        self.tls.channel_binding = binding;
        self.sync_tls();
        self
    }

    /// Verifies against these roots instead of `sslrootcert`'s or the public ones; a given root store
    /// counts as a given root certificate (so `require` verifies the chain, as libpq does).
    pub fn tls_root_store(mut self, roots: rustls::RootCertStore) -> Self {
        self.tls.root_store = Some(Arc::new(roots));
        self
    }

    /// Uses this rustls configuration for every TLS connection (and cancel request), instead of the one
    /// rampart makes from the keywords: its verifier, roots and client certificate are yours. `sslmode`
    /// still decides whether TLS is used; ALPN `postgresql` is added for `sslnegotiation=direct`.
    pub fn tls_client_config(mut self, config: rustls::ClientConfig) -> Self {
        self.tls.client_config = Some(Arc::new(config));
        self
    }

    /// Whether a pooler in transaction mode sits in front of the server (see [`PoolerMode`]).
    pub fn pooling(mut self, mode: PoolerMode) -> Self {
        self.pooler = mode;
        self
    }

    /// The pooler mode in force.
    pub fn pooler_mode(&self) -> PoolerMode {
        self.pooler
    }

    /// The TLS mode in force.
    pub fn tls_mode(&self) -> TlsMode {
        self.tls.mode
    }

    /// The root certificates asked for (`sslrootcert`), if any.
    pub fn root_cert(&self) -> Option<&RootCert> {
        self.tls.root_cert.as_ref()
    }

    /// The client certificate and key files (`sslcert`, `sslkey`), if any.
    pub fn client_cert(&self) -> Option<(&Path, &Path)> {
        self.tls
            .client_cert
            .as_deref()
            .zip(self.tls.client_key.as_deref())
    }

    /// How TLS is started (`sslnegotiation`).
    pub fn negotiation(&self) -> TlsNegotiation {
        self.tls.negotiation
    }

    /// The channel binding setting (`channel_binding`).
    pub fn channel_binding_mode(&self) -> ChannelBinding {
        self.tls.channel_binding
    }

    pub(crate) fn tls_options(&self) -> &TlsOptions {
        &self.tls
    }

    /// The preset this configuration started from.
    pub fn preset(&self) -> Preset {
        self.preset
    }

    /// The tokio-postgres configuration underneath (it holds the password: don't log it).
    pub fn pg_config(&self) -> &tokio_postgres::Config {
        &self.pg
    }

    /// The URL with the password replaced by `***`: safe for logs, errors and health output.
    pub fn redacted_url(&self) -> String {
        let mut url = String::from("postgres://");
        if let Some(user) = self.pg.get_user() {
            url.push_str(user);
            if self.pg.get_password().is_some() {
                url.push_str(":***");
            }
            url.push('@');
        }
        url.push_str(&self.hosts_string());
        url.push('/');
        url.push_str(self.pg.get_dbname().or(self.pg.get_user()).unwrap_or(""));
        url.push_str("?sslmode=");
        url.push_str(self.tls.mode.as_str());
        // Which of several hosts it takes is part of where it connects.
        match self.pg.get_target_session_attrs() {
            TargetSessionAttrs::ReadWrite => url.push_str("&target_session_attrs=read-write"),
            TargetSessionAttrs::ReadOnly => url.push_str("&target_session_attrs=read-only"),
            _ => {}
        }
        url
    }

    /// `host:port[,host:port...]`, for messages.
    pub fn hosts_string(&self) -> String {
        let ports = self.pg.get_ports();
        self.pg
            .get_hosts()
            .iter()
            .enumerate()
            .map(|(i, host)| {
                let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
                hosts::label(host, port)
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}

fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

#[cfg(test)]
mod tests;
