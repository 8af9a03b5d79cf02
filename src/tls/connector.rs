//! Connecting as libpq does for each `sslmode`, including its second attempts, through
//! tokio-postgres-rustls.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use deadpool_postgres::Connect;
use futures_util::future::BoxFuture;
use tokio::task::JoinHandle;
use tokio_postgres::config::SslMode;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{Client, NoTls, Socket};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::classify::{DirectTlsRefused, rustls_cause};
use crate::ConfigError;
use crate::config::{PgConfig, TlsMode, TlsNegotiation, one_by_one};

/// deadpool-postgres's connect hook: plain text or rustls, with libpq's second attempt for `allow` and
/// `prefer`, and the connection task spawned with a log line when it ends in error.
#[derive(Clone)]
pub(crate) struct Connector {
    tls: Option<MakeRustlsConnect>,
    mode: TlsMode,
    direct: bool,
}

impl Connector {
    /// The connector for `pg`'s TLS settings; reads the certificate files (errors name the keyword).
    pub(crate) fn new(pg: &PgConfig) -> Result<Self, ConfigError> {
        let opts = pg.tls_options();
        let tls = super::client_config(opts)?.map(MakeRustlsConnect::new);
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
    match tls.filter(|_| mode != SslMode::Disable) {
        None => {
            config.ssl_mode(SslMode::Disable);
            let (client, connection) = config.connect(NoTls).await?;
            Ok((client, spawn_connection(connection)))
        }
        Some(tls) => {
            config.ssl_mode(mode);
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

/// A connection made, and the host (`host:port`) it was made to.
pub(crate) struct Connected {
    pub(crate) client: Client,
    pub(crate) task: JoinHandle<()>,
    pub(crate) host: Arc<str>,
}

/// A connect that failed on every host, and the host whose failure explains it.
pub(crate) struct Refused {
    pub(crate) error: tokio_postgres::Error,
    pub(crate) host: String,
}

impl Connector {
    /// Connects to the first of `pg`'s hosts that accepts the connection and passes its
    /// `target_session_attrs` check, trying them in turn as libpq does, but one host at a time (see
    /// `config/hosts.rs`), so the connection knows its host. When every host fails, the error is that
    /// of the last host that *answered* (a server error, or a session of the wrong kind: a standby for
    /// `read-write`), which says more than a refused connect to a host that is down; otherwise the last.
    pub(crate) async fn connect_to(
        &self,
        pg: &tokio_postgres::Config,
    ) -> Result<Connected, Refused> {
        let mut refused: Option<Refused> = None;
        for one in one_by_one(pg) {
            match self.connect_once(&one.config).await {
                Ok((client, task)) => {
                    return Ok(Connected {
                        client,
                        task,
                        host: one.label.into(),
                    });
                }
                Err(error) => {
                    let answered = error.as_db_error().is_some() || wrong_kind_of_session(&error);
                    let keep = refused.as_ref().is_none_or(|r| {
                        answered
                            || !(r.error.as_db_error().is_some() || wrong_kind_of_session(&r.error))
                    });
                    if keep {
                        refused = Some(Refused {
                            error,
                            host: one.label,
                        });
                    }
                }
            }
        }
        match refused {
            Some(refused) => Err(refused),
            // A configuration without a host is refused when it is built; connect as tokio-postgres
            // would, for its own error.
            None => self
                .connect_once(pg)
                .await
                .map(|(client, task)| Connected {
                    client,
                    task,
                    host: "".into(),
                })
                .map_err(|error| Refused {
                    error,
                    host: String::new(),
                }),
        }
    }
}

/// Whether a connect was refused because the server's session is not of the kind
/// `target_session_attrs` asks for: a standby (or a read-only server) for `read-write`, a primary for
/// `read-only`. tokio-postgres says so only in the message of an I/O error of kind `PermissionDenied`.
pub(crate) fn wrong_kind_of_session(err: &tokio_postgres::Error) -> bool {
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            let message = io.to_string();
            return io.kind() == std::io::ErrorKind::PermissionDenied
                && (message.contains("does not allow writes")
                    || message.contains("is not read only"));
        }
        source = s.source();
    }
    false
}

impl Connect for Connector {
    fn connect(
        &self,
        pg_config: &tokio_postgres::Config,
    ) -> BoxFuture<'_, Result<(Client, JoinHandle<()>), tokio_postgres::Error>> {
        let pg_config = pg_config.clone();
        Box::pin(async move {
            self.connect_to(&pg_config)
                .await
                .map(|c| (c.client, c.task))
                .map_err(|r| r.error)
        })
    }
}

impl Connector {
    /// Connects to the host `pg_config` names (or, given several, to the first that will do, as
    /// tokio-postgres does), with libpq's TLS fallbacks for the `sslmode`.
    async fn connect_once(
        &self,
        pg_config: &tokio_postgres::Config,
    ) -> Result<(Client, JoinHandle<()>), tokio_postgres::Error> {
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
            TlsMode::Disable => connect_once(pg_config, None, SslMode::Disable).await,
            // libpq: plain text first; if the server answers with an error (a `hostssl`-only
            // pg_hba.conf, say), once more with TLS.
            TlsMode::Allow => match connect_once(pg_config, None, SslMode::Disable).await {
                Err(e) if e.as_db_error().is_some() => {
                    connect_once(pg_config, tls, SslMode::Prefer).await
                }
                done => done,
            },
            // libpq: TLS if offered; if the handshake fails or the server answers the TLS
            // connection with an error (a `hostnossl`-only pg_hba.conf), once more in plain text.
            // When that fails too, a TLS failure is the error that explains it.
            TlsMode::Prefer => match connect_once(pg_config, tls, SslMode::Prefer).await {
                Err(first)
                    if handshake_failed(&first)
                        || (first.as_db_error().is_some() && tls_was_used()) =>
                {
                    match connect_once(pg_config, None, SslMode::Disable).await {
                        Err(_) if handshake_failed(&first) => Err(first),
                        done => done,
                    }
                }
                done => done,
            },
            TlsMode::Require | TlsMode::VerifyCa | TlsMode::VerifyFull => {
                connect_once(pg_config, tls, SslMode::Require).await
            }
        }
    }
}
