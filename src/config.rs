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
//! | `tcp_user_timeout` | 15 s | 30 s | unacknowledged writes fail in seconds, not 15 minutes of retransmission |
//! | TLS | as the URL's `sslmode` says (default `prefer`) | required unless the URL says otherwise | hosted Postgres requires TLS |
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
//! TLS is rustls with the webpki roots. `sslmode` is honoured: `disable` connects in plain text, `prefer`
//! tries TLS and falls back to plain text, and `require`, `verify-ca` and `verify-full` require TLS **and
//! verify the certificate and host name**. That is stricter than libpq's `require` (which encrypts without
//! verifying); an unverified link is open to anyone on the path, so rampart does not offer one.
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
//! assert_eq!(config.redacted_url(), "postgres://app:***@db.example.com:5432/app?sslmode=require");
//! assert!(!format!("{config:?}").contains("hunter2"));
//! # Ok::<(), rampart::ConfigError>(())
//! ```

use std::fmt;
use std::time::Duration;

use tokio_postgres::config::{Host, SslMode};

use crate::ConfigError;

/// How the connection is encrypted; from the URL's `sslmode` or [`PgConfig::tls`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsMode {
    /// Plain text.
    Disable,
    /// TLS (verified) when the server offers it, plain text otherwise.
    Prefer,
    /// TLS with the certificate and host name verified (`require`, `verify-ca` and `verify-full`).
    Require,
}

impl TlsMode {
    fn as_str(self) -> &'static str {
        match self {
            TlsMode::Disable => "disable",
            TlsMode::Prefer => "prefer",
            TlsMode::Require => "require",
        }
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
    tls: TlsMode,
    preset: Preset,
    pooler: PoolerMode,
}

impl fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgConfig")
            .field("url", &self.redacted_url())
            .field("preset", &self.preset)
            .field("pooler", &self.pooler)
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

/// Splits `sslmode=verify-ca|verify-full` out of a URL, since tokio-postgres knows only
/// disable/prefer/require; returns the URL it can parse and whether verification was asked for.
fn split_verify_modes(url: &str) -> (String, bool) {
    let mut verify = false;
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_owned(), false);
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| match *pair {
            "sslmode=verify-ca" | "sslmode=verify-full" => {
                verify = true;
                false
            }
            _ => true,
        })
        .collect();
    let mut out = base.to_owned();
    if verify || !kept.is_empty() {
        let mut params = kept;
        if verify {
            params.push("sslmode=require");
        }
        if !params.is_empty() {
            out.push('?');
            out.push_str(&params.join("&"));
        }
    }
    (out, verify)
}

impl PgConfig {
    /// Parses a `postgres://` URL (or a key=value connection string) with the [`server`](Self::server)
    /// defaults. The error names what is wrong without repeating the URL (which may hold a password).
    pub fn from_url(url: &str) -> Result<Self, ConfigError> {
        Self::server(url)
    }

    /// Settings for an always-on server (see the table in the [module docs](self)).
    pub fn server(url: &str) -> Result<Self, ConfigError> {
        Self::parse(url, Preset::Server)
    }

    /// Settings for a serverless host that suspends when idle (Neon and the like): longer connect timeout
    /// for cold starts, TLS required unless the URL's `sslmode` says otherwise, never a keepalive pinger.
    pub fn serverless(url: &str) -> Result<Self, ConfigError> {
        Self::parse(url, Preset::Serverless)
    }

    /// Settings for a pooler in transaction mode (PgBouncer, Neon's `-pooler` endpoints, Supabase's
    /// pooler): the [`server`](Self::server) timeouts with [`PoolerMode::Transaction`]. For a serverless
    /// host's pooler endpoint, start from [`serverless`](Self::serverless) and add
    /// [`pooling`](Self::pooling)`(PoolerMode::Transaction)`.
    pub fn pooler(url: &str) -> Result<Self, ConfigError> {
        Ok(Self::server(url)?.pooling(PoolerMode::Transaction))
    }

    fn parse(url: &str, preset: Preset) -> Result<Self, ConfigError> {
        let (parsable, verify) = split_verify_modes(url.trim());
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
        let explicit_sslmode = url.contains("sslmode=");
        let tls = if verify {
            TlsMode::Require
        } else {
            match (pg.get_ssl_mode(), explicit_sslmode, preset) {
                (_, false, Preset::Serverless) => TlsMode::Require,
                (SslMode::Disable, _, _) => TlsMode::Disable,
                (SslMode::Require, _, _) => TlsMode::Require,
                _ => TlsMode::Prefer,
            }
        };
        let (connect, idle, interval, retries, user_timeout) = match preset {
            Preset::Server => (5, 30, 10, 3, 15),
            Preset::Serverless => (15, 60, 15, 4, 30),
        };
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(Duration::from_secs(connect));
        }
        pg.keepalives(true)
            .keepalives_idle(Duration::from_secs(idle))
            .keepalives_interval(Duration::from_secs(interval))
            .keepalives_retries(retries);
        if pg.get_tcp_user_timeout().is_none() {
            pg.tcp_user_timeout(Duration::from_secs(user_timeout));
        }
        if pg.get_application_name().is_none() {
            pg.application_name("rampart");
        }
        let mut config = PgConfig {
            pg,
            tls,
            preset,
            pooler: PoolerMode::Session,
        };
        config.sync_ssl_mode();
        Ok(config)
    }

    fn sync_ssl_mode(&mut self) {
        self.pg.ssl_mode(match self.tls {
            TlsMode::Disable => SslMode::Disable,
            TlsMode::Prefer => SslMode::Prefer,
            TlsMode::Require => SslMode::Require,
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

    /// Overrides the TLS mode the URL gave.
    pub fn tls(mut self, mode: TlsMode) -> Self {
        self.tls = mode;
        self.sync_ssl_mode();
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
        self.tls
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
        url.push_str(self.tls.as_str());
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
            Some(&Duration::from_secs(15))
        );
        assert_eq!(c.pg_config().get_application_name(), Some("rampart"));
        assert_eq!(c.tls_mode(), TlsMode::Prefer);
    }

    #[test]
    fn serverless_requires_tls_unless_the_url_says_otherwise() {
        let c = PgConfig::serverless("postgres://u@ep-cool-1.neon.tech/db").unwrap();
        assert_eq!(c.tls_mode(), TlsMode::Require);
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
            ("require", TlsMode::Require),
            ("verify-ca", TlsMode::Require),
            ("verify-full", TlsMode::Require),
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
        for bad in [
            "mysql://u:secretpw@h/db",
            "postgres://u:secretpw@h/db?sslmode=nope",
            "",
            "postgres:///db",
        ] {
            let err = PgConfig::from_url(bad).unwrap_err();
            assert_eq!(err.field(), "url", "{bad}");
            assert!(!err.to_string().contains("secretpw"), "{err}");
        }
    }
}
