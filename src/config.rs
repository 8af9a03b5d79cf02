//! Connection settings: from a `postgres://` URL or a builder, with the defaults tokio-postgres does not give.
//!
//! tokio-postgres connects with no connect timeout, no TCP keepalives and the kernel's default
//! `tcp_user_timeout` (about 15 minutes of retransmissions on Linux). On a hosted database that means a dead
//! network path hangs a connect or a write for minutes. [`PgConfig`] fills those in, with two presets:
//!
//! | setting | [`server`](PgConfig::server) (always-on hosts, the default) | [`serverless`](PgConfig::serverless) (Neon-like hosts) | why |
//! |---|---|---|---|
//! | connect timeout | 5 s | 15 s | a cold serverless compute takes seconds to wake; an always-on server answers in milliseconds or not at all |
//! | TCP keepalive idle / interval / count | 30 s / 10 s / 3 | 60 s / 15 s / 4 | an idle link whose peer vanished is found in about a minute (server) or two (serverless), instead of the kernel's two hours |
//! | `tcp_user_timeout` | 2.5 s | 10 s | unacknowledged writes (and an unanswered keepalive probe) fail the link within the stacks' attempt timeout (3 s, 15 s), not after 15 minutes of retransmission |
//! | TLS | as the URL's `sslmode` says (default `prefer`, as libpq) | `verify-full` unless the URL says otherwise | hosted Postgres requires TLS, and an unverified link is open to anyone on the path |
//! | keepalive pinger | off (may be turned on) | off, always | an application-level ping would keep a suspended compute awake, and billed |
//! | `application_name` | `rampart` | `rampart` | so operators can find the connections in `pg_stat_activity` |
//!
//! A third preset, [`pooler`](PgConfig::pooler), is for a pooler in transaction mode (PgBouncer and the
//! hosted poolers built on it): the `server` settings, plus [`PoolerMode::Transaction`], which keeps no
//! state in the server session between transactions (see [`PoolerMode::Transaction`](crate::PoolerMode::Transaction)). It is a setting of its
//! own ([`PgConfig::pooling`]) so that it combines with `serverless` for a serverless host's pooler.
//!
//! Keepalives only help an *idle* link: Linux sends no probes while data is unacknowledged, and nothing
//! at the TCP level helps against a peer that acknowledges and never answers. That is why the ready-made
//! stacks also put a deadline and a per-attempt timeout on every request.
//!
//! # TLS
//!
//! TLS is rustls (with ring), and the keywords are libpq's, with libpq's meaning, in the URL's query
//! (`postgres://...?sslmode=verify-full&sslrootcert=/etc/ssl/rds.pem`), in a key=value string
//! (`host=db sslmode=verify-full`), in the `PGSSL*` environment variables where the string says nothing,
//! and in the builder methods:
//!
//! | keyword (variable) | values | meaning |
//! |---|---|---|
//! | `sslmode` (`PGSSLMODE`) | `disable` | plain text |
//! | | `allow` | plain text; TLS only if the server rejects the plain connection |
//! | | `prefer` (the `server` default) | TLS if the server offers it; plain text if it does not, or if the TLS handshake or verification fails, or if the server rejects the TLS connection |
//! | | `require` | TLS, **not verified**, unless a root certificate is given: then the chain is verified as `verify-ca` does |
//! | | `verify-ca` | TLS, the chain verified against the roots; any host name |
//! | | `verify-full` (the `serverless` default) | TLS, the chain verified and the certificate must name the host |
//! | `sslrootcert` (`PGSSLROOTCERT`) | a PEM file | the roots to verify against (an RDS region bundle, a provider's CA) |
//! | | `system` | the platform's trust store; implies `verify-full`, and a weaker `sslmode` is refused (as libpq 16) |
//! | `sslcert`, `sslkey` (`PGSSLCERT`, `PGSSLKEY`) | PEM files | a client certificate (and its chain) and its key (PKCS#8, PKCS#1 or SEC1, unencrypted; mode 0600 or less, or 0640 if root owns it, as libpq requires) |
//! | `sslnegotiation` (`PGSSLNEGOTIATION`) | `postgres`, `direct` | `direct` starts TLS at once with ALPN `postgresql` (PostgreSQL 17 and later), saving a round trip; it needs `require` or stronger |
//! | `channel_binding` (`PGCHANNELBINDING`) | `disable`, `prefer` (default), `require` | SCRAM channel binding (`tls-server-end-point`); `require` refuses a server that does not bind (md5, trust, plain text) |
//!
//! Where rampart differs from libpq: it reads no files from `~/.postgresql` (name them with the keywords
//! or the variables); `verify-ca`/`verify-full` without `sslrootcert` verify against the public
//! (Mozilla/webpki) roots, which is what Neon's and other public-CA hosts need, where libpq would look for
//! `~/.postgresql/root.crt`; and a file it is told to use must be there (libpq quietly goes on without an
//! `sslcert` that does not exist, and without an `sslrootcert` that does not exist unless the mode is
//! `verify-ca` or `verify-full`, which leaves a typo unverified). [`PgConfig::tls_root_store`] and [`PgConfig::tls_client_config`] take rustls
//! values for anything the keywords cannot say.
//!
//! Settings that cannot work are a [`ConfigError`] naming the keyword, when the URL is parsed or when the
//! pool is built: an unknown value, `channel_binding=require` with `sslmode=disable`, `sslnegotiation=direct`
//! with `allow` or `prefer`, a certificate file that cannot be read or holds no PEM certificate, a key that
//! does not match its certificate. A TLS failure when connecting (an unknown issuer, a certificate that
//! does not name the host or has expired, a server without TLS under `require`) is a
//! [`Permanent`](rampart_layers::Classification::Permanent) [`ErrorKind::Connect`](crate::ErrorKind::Connect)
//! error naming the cause and the server: it is never retried and never counts against the breaker.
//!
//! Providers: Neon signs with a public CA, so the `serverless` preset's `verify-full` works as it is. For
//! RDS download the region's bundle and pass `sslrootcert=/path/to/eu-west-1-bundle.pem` (and
//! `sslmode=verify-full`); for Supabase, its CA certificate from the dashboard the same way.
//!
//! ```
//! use rampart::{PgConfig, TlsMode};
//!
//! // libpq's `require` with a root certificate verifies the chain; without one it only encrypts.
//! let neon = PgConfig::serverless("postgres://app@ep-cool-1.eu-central-1.aws.neon.tech/app")?;
//! assert_eq!(neon.tls_mode(), TlsMode::VerifyFull);
//! let local = PgConfig::server("host=127.0.0.1 user=app sslmode=require")?;
//! assert_eq!(local.tls_mode(), TlsMode::Require);
//! // `sslmode=` inside another value changes nothing.
//! let odd = PgConfig::serverless("postgres://app@h/app?application_name=sslmode%3Ddisable")?;
//! assert_eq!(odd.tls_mode(), TlsMode::VerifyFull);
//! # Ok::<(), rampart::ConfigError>(())
//! ```
//!
//! # Secrets
//!
//! The password appears in no `Debug` or `Display` output: [`PgConfig::redacted_url`] prints the URL with
//! the password replaced by `***`, and every error that names the server uses it.
//!
//! ```
//! use std::time::Duration;
//! use rampart::PgConfig;
//!
//! let config = PgConfig::serverless("postgres://app:hunter2@db.example.com/app")?
//!     .connect_timeout(Duration::from_secs(20));
//! assert_eq!(config.redacted_url(), "postgres://app:***@db.example.com:5432/app?sslmode=verify-full");
//! assert!(!format!("{config:?}").contains("hunter2"));
//! # Ok::<(), rampart::ConfigError>(())
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use percent_encoding::percent_decode_str;
use tokio_postgres::config::{Host, SslMode, SslNegotiation};

use crate::ConfigError;

/// How the connection is encrypted and what is verified: libpq's `sslmode`, from the URL, `PGSSLMODE`
/// or [`PgConfig::tls`] (see the [module docs](self#tls)).
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

/// Which preset a configuration started from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Preset {
    /// [`PgConfig::server`]: an always-on host.
    Server,
    /// [`PgConfig::serverless`]: a host that suspends when idle and takes seconds to wake.
    Serverless,
}

/// What sits between the application and Postgres, as far as session state is concerned.
///
/// In [`Transaction`](PoolerMode::Transaction) mode rampart keeps no state in the server session
/// between transactions; see [`PoolerMode::Transaction`](crate::PoolerMode::Transaction) for what changes and what it costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum PoolerMode {
    /// Postgres itself, or a pooler in session mode: one server session per connection, for as long as
    /// the connection lives. Statements are prepared once per connection and cached, and a deadline is
    /// pushed down as a session `SET statement_timeout`.
    #[default]
    Session,
    /// A pooler in transaction mode (PgBouncer `pool_mode = transaction`, Neon's `-pooler` endpoints,
    /// Supabase's pooler on port 6543): consecutive transactions on one connection may run on different
    /// server sessions. Statements are sent unnamed (no prepared statement outlives its request), and a
    /// deadline is pushed down as `SET LOCAL statement_timeout` inside the statement's own transaction.
    Transaction,
}

/// Connection settings for one Postgres server; see the [module docs](self).
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

/// The keywords rampart reads itself, because tokio-postgres knows none of them (`sslrootcert`,
/// `sslcert`, `sslkey`) or not all of their values (`sslmode`), and the environment variable of each.
const OWN_KEYWORDS: [(&str, &str); 6] = [
    ("sslmode", "PGSSLMODE"),
    ("sslrootcert", "PGSSLROOTCERT"),
    ("sslcert", "PGSSLCERT"),
    ("sslkey", "PGSSLKEY"),
    ("sslnegotiation", "PGSSLNEGOTIATION"),
    ("channel_binding", "PGCHANNELBINDING"),
];

/// The values of [`OWN_KEYWORDS`] a connection string gave, in that order.
type Keywords = [Option<String>; 6];

fn keyword_index(key: &str) -> Option<usize> {
    OWN_KEYWORDS.iter().position(|(k, _)| *k == key)
}

/// Takes rampart's own keywords out of a connection string, URL or key=value, and returns the rest for
/// tokio-postgres. It parses the string into its parameters: a keyword inside another value (a password,
/// an `application_name`) is part of that value and is left alone.
fn split_keywords(conn: &str) -> Result<(String, Keywords), ConfigError> {
    match ["postgres://", "postgresql://"]
        .iter()
        .find(|p| conn.starts_with(**p))
    {
        Some(prefix) => split_url_keywords(conn, prefix.len()),
        None => split_key_value_keywords(conn),
    }
}

/// URL form: the query starts at the first `?` after the user info (tokio-postgres reads the user info
/// up to the first `@`), and its parameters are `&`-separated, percent-encoded `key=value` pairs.
fn split_url_keywords(url: &str, prefix: usize) -> Result<(String, Keywords), ConfigError> {
    let mut found = Keywords::default();
    let rest = &url[prefix..];
    let after_user = rest.find('@').map_or(0, |at| at + 1);
    let Some(query_at) = rest[after_user..]
        .find('?')
        .map(|q| prefix + after_user + q)
    else {
        return Ok((url.to_owned(), found));
    };
    let mut kept = Vec::new();
    for pair in url[query_at + 1..].split('&') {
        let own = pair.split_once('=').and_then(|(key, value)| {
            let key = percent_decode_str(key).decode_utf8().ok()?;
            Some((keyword_index(&key)?, value))
        });
        match own {
            Some((i, value)) => {
                let value = percent_decode_str(value).decode_utf8().map_err(|_| {
                    ConfigError::new(OWN_KEYWORDS[i].0, "is not valid percent-encoded UTF-8")
                })?;
                found[i] = Some(value.into_owned());
            }
            None => kept.push(pair),
        }
    }
    let mut out = url[..query_at].to_owned();
    if !kept.is_empty() {
        out.push('?');
        out.push_str(&kept.join("&"));
    }
    Ok((out, found))
}

/// key=value form, as libpq reads it: `key = value` pairs separated by white space, a value either
/// bare or in single quotes, `\` escaping the next character in both.
fn split_key_value_keywords(conn: &str) -> Result<(String, Keywords), ConfigError> {
    let mut found = Keywords::default();
    let mut kept = Vec::new();
    let mut chars = conn.chars().peekable();
    let skip_space = |chars: &mut std::iter::Peekable<std::str::Chars<'_>>| {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
    };
    loop {
        skip_space(&mut chars);
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        skip_space(&mut chars);
        if chars.next() != Some('=') {
            return Err(ConfigError::new(
                "url",
                "not a valid connection string: a key without `=`",
            ));
        }
        skip_space(&mut chars);
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\'') => break,
                    Some('\\') => value.extend(chars.next()),
                    Some(c) => value.push(c),
                    None => {
                        return Err(ConfigError::new(
                            "url",
                            "not a valid connection string: a quoted value is not closed",
                        ));
                    }
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        match keyword_index(&key) {
            Some(i) => found[i] = Some(value),
            None => kept.push((key, value)),
        }
    }
    let out = kept
        .iter()
        .map(|(key, value)| {
            let escaped = value.replace('\\', "\\\\").replace('\'', "\\'");
            format!("{key}='{escaped}'")
        })
        .collect::<Vec<_>>()
        .join(" ");
    Ok((out, found))
}

fn parse_keyword<T: Copy>(
    key: &'static str,
    value: &str,
    from_env: Option<&str>,
    table: &[(&str, T)],
) -> Result<T, ConfigError> {
    table
        .iter()
        .find(|(name, _)| *name == value)
        .map(|(_, v)| *v)
        .ok_or_else(|| {
            let names: Vec<&str> = table.iter().map(|(n, _)| *n).collect();
            let place = from_env.map_or(String::new(), |var| format!(" (from {var})"));
            ConfigError::new(
                key,
                format!("unknown value{place}; expected one of {}", names.join(", ")),
            )
        })
}

impl PgConfig {
    /// Parses a `postgres://` URL (or a key=value connection string) with the [`server`](Self::server)
    /// defaults. The error names what is wrong without repeating the URL (which may hold a password).
    pub fn from_url(url: &str) -> Result<Self, ConfigError> {
        Self::server(url)
    }

    /// Settings for an always-on server (see the table in the [module docs](self)).
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

    fn parse(
        url: &str,
        preset: Preset,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let (parsable, mut keywords) = split_keywords(url.trim())?;
        let mut from_env = [None; 6];
        for (i, (_, var)) in OWN_KEYWORDS.iter().enumerate() {
            if keywords[i].is_none() {
                keywords[i] = env(var).filter(|v| !v.is_empty());
                from_env[i] = keywords[i].as_ref().map(|_| *var);
            }
        }
        let [
            sslmode,
            sslrootcert,
            sslcert,
            sslkey,
            sslnegotiation,
            channel_binding,
        ] = keywords;
        let mut pg: tokio_postgres::Config =
            parsable.parse().map_err(|e: tokio_postgres::Error| {
                // tokio-postgres's parse errors name the bad option, not the value, so they are safe to show.
                ConfigError::new("url", format!("not a valid Postgres connection URL: {e}"))
            })?;
        if pg.get_hosts().is_empty() {
            return Err(ConfigError::new("url", "names no host"));
        }
        if pg.get_user().is_none() {
            return Err(ConfigError::new("url", "names no user"));
        }
        let mode = sslmode
            .as_deref()
            .map(|v| {
                parse_keyword(
                    "sslmode",
                    v,
                    from_env[0],
                    &[
                        ("disable", TlsMode::Disable),
                        ("allow", TlsMode::Allow),
                        ("prefer", TlsMode::Prefer),
                        ("require", TlsMode::Require),
                        ("verify-ca", TlsMode::VerifyCa),
                        ("verify-full", TlsMode::VerifyFull),
                    ],
                )
            })
            .transpose()?;
        let negotiation = sslnegotiation
            .as_deref()
            .map(|v| {
                parse_keyword(
                    "sslnegotiation",
                    v,
                    from_env[4],
                    &[
                        ("postgres", TlsNegotiation::Postgres),
                        ("direct", TlsNegotiation::Direct),
                    ],
                )
            })
            .transpose()?
            .unwrap_or_default();
        let channel_binding = channel_binding
            .as_deref()
            .map(|v| {
                parse_keyword(
                    "channel_binding",
                    v,
                    from_env[5],
                    &[
                        ("disable", ChannelBinding::Disable),
                        ("prefer", ChannelBinding::Prefer),
                        ("require", ChannelBinding::Require),
                    ],
                )
            })
            .transpose()?
            .unwrap_or_default();
        let root_cert = sslrootcert.map(|v| match v.as_str() {
            "system" => RootCert::System,
            _ => RootCert::File(PathBuf::from(v)),
        });
        let (connect, idle, interval, retries, user_timeout) = match preset {
            // tcp_user_timeout in milliseconds: under the stacks' attempt timeouts (3 s, 15 s), so real
            // packet loss fails the link before the attempt is cut.
            Preset::Server => (5, 30, 10, 3, 2_500),
            Preset::Serverless => (15, 60, 15, 4, 10_000),
        };
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(Duration::from_secs(connect));
        }
        pg.keepalives(true)
            .keepalives_idle(Duration::from_secs(idle))
            .keepalives_interval(Duration::from_secs(interval))
            .keepalives_retries(retries);
        if pg.get_tcp_user_timeout().is_none() {
            pg.tcp_user_timeout(Duration::from_millis(user_timeout));
        }
        if pg.get_application_name().is_none() {
            pg.application_name("rampart");
        }
        let mut config = PgConfig {
            pg,
            tls: TlsOptions {
                mode: TlsMode::Prefer,
                mode_explicit: false,
                root_cert: None,
                client_cert: sslcert.map(PathBuf::from),
                client_key: sslkey.map(PathBuf::from),
                negotiation,
                channel_binding,
                root_store: None,
                client_config: None,
            },
            preset,
            pooler: PoolerMode::Session,
        };
        config.tls.mode = config.default_tls_mode();
        if let Some(root) = root_cert {
            config = config.ssl_root_cert(root);
        }
        if let Some(mode) = mode {
            config.tls.mode = mode;
            config.tls.mode_explicit = true;
        }
        config.sync_tls();
        // Bad combinations and unreadable files are reported now, naming the keyword.
        crate::tls::client_config(&config.tls)?;
        Ok(config)
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
                match host {
                    Host::Tcp(h) if h.contains(':') => format!("[{h}]:{port}"),
                    Host::Tcp(h) => format!("{h}:{port}"),
                    Host::Unix(path) => format!("{}:{port}", path.display()),
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}

fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_defaults_are_filled_in() {
        let c = PgConfig::from_url("postgres://u@localhost/db").unwrap();
        assert_eq!(c.preset(), Preset::Server);
        assert_eq!(
            c.pg_config().get_connect_timeout(),
            Some(&Duration::from_secs(5))
        );
        assert!(c.pg_config().get_keepalives());
        assert_eq!(c.pg_config().get_keepalives_idle(), Duration::from_secs(30));
        assert_eq!(
            c.pg_config().get_tcp_user_timeout(),
            Some(&Duration::from_millis(2_500))
        );
        assert_eq!(c.pg_config().get_application_name(), Some("rampart"));
        assert_eq!(c.tls_mode(), TlsMode::Prefer);
    }

    #[test]
    fn serverless_verifies_the_host_unless_the_url_says_otherwise() {
        let c = PgConfig::serverless("postgres://u@ep-cool-1.neon.tech/db").unwrap();
        assert_eq!(c.tls_mode(), TlsMode::VerifyFull);
        assert_eq!(
            c.pg_config().get_connect_timeout(),
            Some(&Duration::from_secs(15))
        );
        let local = PgConfig::serverless("postgres://u@127.0.0.1/db?sslmode=disable").unwrap();
        assert_eq!(local.tls_mode(), TlsMode::Disable);
    }

    #[test]
    fn sslmode_is_honoured_including_verify_modes() {
        for (mode, want) in [
            ("disable", TlsMode::Disable),
            ("prefer", TlsMode::Prefer),
            ("allow", TlsMode::Allow),
            ("require", TlsMode::Require),
            ("verify-ca", TlsMode::VerifyCa),
            ("verify-full", TlsMode::VerifyFull),
        ] {
            let url = format!("postgres://u@h/db?application_name=x&sslmode={mode}");
            let c = PgConfig::from_url(&url).unwrap();
            assert_eq!(c.tls_mode(), want, "{mode}");
            assert_eq!(
                c.pg_config().get_application_name(),
                Some("x"),
                "{mode}: other options kept"
            );
        }
        assert!(PgConfig::from_url("postgres://u@h/db?sslmode=bogus").is_err());
    }

    #[test]
    fn the_pooler_preset_is_the_server_preset_in_transaction_mode() {
        let c = PgConfig::pooler("postgres://u@pgbouncer.internal:6432/db").unwrap();
        assert_eq!(c.pooler_mode(), PoolerMode::Transaction);
        assert_eq!(c.preset(), Preset::Server);
        assert_eq!(
            PgConfig::server("postgres://u@h/db").unwrap().pooler_mode(),
            PoolerMode::Session
        );
        let neon = PgConfig::serverless("postgres://u@ep-cool-1-pooler.neon.tech/db")
            .unwrap()
            .pooling(PoolerMode::Transaction);
        assert_eq!(neon.preset(), Preset::Serverless);
        assert_eq!(neon.pooler_mode(), PoolerMode::Transaction);
    }

    #[test]
    fn url_settings_win_over_preset_defaults() {
        let c = PgConfig::serverless("postgres://u@h/db?connect_timeout=3").unwrap();
        assert_eq!(
            c.pg_config().get_connect_timeout(),
            Some(&Duration::from_secs(3))
        );
    }

    #[test]
    fn passwords_never_show() {
        let c = PgConfig::from_url("postgres://app:pa%24%24word-123@db.internal:6543/app").unwrap();
        assert_eq!(
            c.redacted_url(),
            "postgres://app:***@db.internal:6543/app?sslmode=prefer"
        );
        for shown in [format!("{c}"), format!("{c:?}"), format!("{c:#?}")] {
            assert!(!shown.contains("word-123"), "{shown}");
            assert!(!shown.contains("pa$$"), "{shown}");
        }
    }

    #[test]
    fn bad_urls_are_typed_errors_that_do_not_echo_the_url() {
        for bad in ["mysql://u:secretpw@h/db", "", "postgres:///db"] {
            let err = PgConfig::from_url(bad).unwrap_err();
            assert_eq!(err.field(), "url", "{bad}");
            assert!(!err.to_string().contains("secretpw"), "{err}");
        }
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn with_env(url: &str, vars: &[(&str, &str)]) -> Result<PgConfig, ConfigError> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        PgConfig::with_env(url, Preset::Server, move |name| {
            vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn sslmode_inside_another_value_changes_nothing() {
        let urls = [
            // URL: in application_name, encoded and not, and in the password, encoded and not.
            "postgres://u@h/db?application_name=sslmode%3Ddisable",
            "postgres://u@h/db?application_name=x&sslmode=disable",
            "postgres://u@h/db?application_name=sslmode=disable",
            "postgres://u:pw%26sslmode%3Ddisable@h/db",
            "postgres://u:pw?sslmode=disable@h/db",
            // key=value: quoted values holding the keyword.
            "host=h user=u application_name='sslmode=disable'",
            "host=h user=u password='x sslmode=disable'",
        ];
        for url in urls {
            let c = PgConfig::with_env(url, Preset::Serverless, no_env).unwrap();
            let want = if url.contains("&sslmode=disable") {
                TlsMode::Disable
            } else {
                TlsMode::VerifyFull
            };
            assert_eq!(c.tls_mode(), want, "{url}");
        }
        let c = PgConfig::with_env(
            "postgres://u:pw%26sslmode%3Ddisable@h/db?application_name=sslmode%3Ddisable",
            Preset::Server,
            no_env,
        )
        .unwrap();
        assert_eq!(
            c.pg_config().get_password(),
            Some(&b"pw&sslmode=disable"[..])
        );
        assert_eq!(
            c.pg_config().get_application_name(),
            Some("sslmode=disable")
        );
        let c = PgConfig::from_url("host=h user=u password='it\\'s sslmode=require'").unwrap();
        assert_eq!(
            c.pg_config().get_password(),
            Some(&b"it's sslmode=require"[..])
        );
        assert_eq!(c.tls_mode(), TlsMode::Prefer);
    }

    #[test]
    fn key_value_strings_take_every_keyword() {
        let c = PgConfig::from_url(
            "host=db.internal port=6543 user=app dbname=app sslmode = verify-ca channel_binding=require \
             sslnegotiation=direct application_name='my app'",
        )
        .unwrap();
        assert_eq!(c.tls_mode(), TlsMode::VerifyCa);
        assert_eq!(c.channel_binding_mode(), ChannelBinding::Require);
        assert_eq!(c.negotiation(), TlsNegotiation::Direct);
        assert_eq!(c.pg_config().get_application_name(), Some("my app"));
        assert_eq!(c.pg_config().get_ports(), &[6543]);
        assert!(PgConfig::from_url("host=h user=u application_name='open").is_err());
    }

    #[test]
    fn unknown_values_name_the_keyword() {
        for (url, field) in [
            ("postgres://u:secretpw@h/db?sslmode=nope", "sslmode"),
            ("postgres://u:secretpw@h/db?sslmode=Require", "sslmode"),
            (
                "postgres://u:secretpw@h/db?sslnegotiation=fast",
                "sslnegotiation",
            ),
            (
                "postgres://u:secretpw@h/db?channel_binding=yes",
                "channel_binding",
            ),
            (
                "host=h user=u password=secretpw sslmode=sometimes",
                "sslmode",
            ),
        ] {
            let err = PgConfig::with_env(url, Preset::Server, no_env).unwrap_err();
            assert_eq!(err.field(), field, "{url}");
            assert!(!err.to_string().contains("secretpw"), "{err}");
        }
    }

    #[test]
    fn impossible_combinations_are_config_errors() {
        for (url, field) in [
            (
                "postgres://u@h/db?sslmode=disable&channel_binding=require",
                "channel_binding",
            ),
            (
                "postgres://u@h/db?sslmode=prefer&sslnegotiation=direct",
                "sslnegotiation",
            ),
            (
                "postgres://u@h/db?sslmode=allow&sslnegotiation=direct",
                "sslnegotiation",
            ),
            ("postgres://u@h/db?sslnegotiation=direct", "sslnegotiation"),
            (
                "postgres://u@h/db?sslrootcert=system&sslmode=require",
                "sslrootcert",
            ),
            (
                "postgres://u@h/db?sslrootcert=system&sslmode=verify-ca",
                "sslrootcert",
            ),
            (
                "postgres://u@h/db?sslrootcert=/nonexistent/root.crt",
                "sslrootcert",
            ),
            ("postgres://u@h/db?sslcert=/nonexistent/c.crt", "sslkey"),
            ("postgres://u@h/db?sslkey=/nonexistent/c.key", "sslcert"),
            (
                "postgres://u@h/db?sslcert=/nonexistent/c.crt&sslkey=/nonexistent/c.key",
                "sslcert",
            ),
        ] {
            let err = PgConfig::with_env(url, Preset::Server, no_env).unwrap_err();
            assert_eq!(err.field(), field, "{url}: {err}");
        }
        // What the builder sets is checked when the pool is built.
        let c = PgConfig::from_url("postgres://u@h/db?sslmode=disable")
            .unwrap()
            .channel_binding(ChannelBinding::Require);
        assert_eq!(
            crate::tls::client_config(c.tls_options())
                .unwrap_err()
                .field(),
            "channel_binding"
        );
        let c = PgConfig::from_url("postgres://u@h/db?sslmode=verify-full&sslnegotiation=direct")
            .unwrap();
        assert_eq!(c.negotiation(), TlsNegotiation::Direct);
    }

    #[test]
    #[cfg(feature = "testing")]
    fn a_file_that_is_not_pem_is_a_config_error() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let url = format!("postgres://u@h/db?sslrootcert={}", junk.display());
        let err = PgConfig::from_url(&url).unwrap_err();
        assert_eq!(err.field(), "sslrootcert");
        assert!(err.to_string().contains("no PEM certificate"), "{err}");
    }

    #[test]
    fn system_roots_imply_verify_full() {
        let c = with_env("postgres://u@h/db?sslrootcert=system", &[]);
        // A machine without a trust store cannot build this; it still names the keyword.
        match c {
            Ok(c) => {
                assert_eq!(c.tls_mode(), TlsMode::VerifyFull);
                assert_eq!(c.root_cert(), Some(&RootCert::System));
            }
            Err(e) => assert_eq!(e.field(), "sslrootcert"),
        }
    }

    #[test]
    fn environment_variables_fill_in_what_the_url_does_not_say() {
        let c = with_env("postgres://u@h/db", &[("PGSSLMODE", "require")]).unwrap();
        assert_eq!(c.tls_mode(), TlsMode::Require);
        let c = with_env(
            "postgres://u@h/db?sslmode=disable",
            &[("PGSSLMODE", "require")],
        )
        .unwrap();
        assert_eq!(c.tls_mode(), TlsMode::Disable, "the URL wins");
        let c = with_env(
            "postgres://u@h/db",
            &[
                ("PGSSLMODE", "verify-full"),
                ("PGCHANNELBINDING", "require"),
            ],
        )
        .unwrap();
        assert_eq!(c.channel_binding_mode(), ChannelBinding::Require);
        let err = with_env("postgres://u@h/db", &[("PGSSLMODE", "always")]).unwrap_err();
        assert_eq!(err.field(), "sslmode");
        assert!(err.to_string().contains("PGSSLMODE"), "{err}");
        let err = with_env(
            "postgres://u@h/db",
            &[("PGSSLROOTCERT", "/nonexistent/root.crt")],
        )
        .unwrap_err();
        assert_eq!(err.field(), "sslrootcert");
        let err =
            with_env("postgres://u@h/db", &[("PGSSLCERT", "/nonexistent/c.crt")]).unwrap_err();
        assert_eq!(err.field(), "sslkey");
    }

    #[test]
    fn libpq_keywords_leave_the_rest_of_the_url_intact() {
        let c = PgConfig::from_url(
            "postgres://app:pw@db.internal:6543/app?sslmode=require&application_name=a%20b&channel_binding=disable&connect_timeout=3",
        )
        .unwrap();
        assert_eq!(c.tls_mode(), TlsMode::Require);
        assert_eq!(c.channel_binding_mode(), ChannelBinding::Disable);
        assert_eq!(c.pg_config().get_application_name(), Some("a b"));
        assert_eq!(
            c.pg_config().get_connect_timeout(),
            Some(&Duration::from_secs(3))
        );
        assert_eq!(c.pg_config().get_dbname(), Some("app"));
        assert!(PgConfig::from_url("postgres://u@h/db?sslmode=require&bogus=1").is_err());
    }

    #[test]
    #[cfg(feature = "testing")]
    fn client_keys_are_read_but_never_shown() {
        let certs = crate::testing::TestCerts::generate().unwrap();
        let url = format!(
            "postgres://app:hunter2@h/db?sslmode=verify-full&sslrootcert={}&sslcert={}&sslkey={}",
            certs.ca().display(),
            certs.client_cert().display(),
            certs.client_key().display()
        );
        let c = PgConfig::from_url(&url).unwrap();
        assert_eq!(
            c.client_cert(),
            Some((certs.client_cert().as_path(), certs.client_key().as_path()))
        );
        let key = std::fs::read_to_string(certs.client_key()).unwrap();
        let key_line = key.lines().nth(1).unwrap();
        for shown in [format!("{c}"), format!("{c:?}"), format!("{c:#?}")] {
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(!shown.contains(key_line), "{shown}");
        }
        // A key that is not a key: the error names the keyword and the file, never the contents.
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.key");
        std::fs::write(
            &bad,
            "-----BEGIN PRIVATE KEY-----\nU0VDUkVUU1RVRkY=\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o600)).unwrap();
        let url = format!(
            "postgres://app:hunter2@h/db?sslcert={}&sslkey={}",
            certs.client_cert().display(),
            bad.display()
        );
        let err = PgConfig::from_url(&url).unwrap_err();
        assert_eq!(err.field(), "sslkey");
        assert!(!err.to_string().contains("U0VDUkVU"), "{err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        // A key that is not the certificate's.
        let url = format!(
            "postgres://app@h/db?sslcert={}&sslkey={}",
            certs.client_cert().display(),
            certs.server_key().display()
        );
        let err = PgConfig::from_url(&url).unwrap_err();
        assert_eq!(err.field(), "sslkey", "{err}");
    }
}
