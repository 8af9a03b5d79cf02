//! Connecting with or without TLS, as the configuration's [`TlsMode`] says.

use std::sync::Arc;

use deadpool_postgres::Connect;
use futures_util::future::BoxFuture;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::TlsMode;

/// The rustls connector: webpki roots, ring as the crypto provider, chosen explicitly so that an
/// application with another provider installed (or several) never makes rustls panic.
pub(crate) fn rustls_connector() -> Result<MakeRustlsConnect, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// deadpool-postgres's connect hook: plain text or rustls, and the connection task spawned with a log
/// line when it ends in error.
pub(crate) struct Connector {
    tls: Option<MakeRustlsConnect>,
}

impl Connector {
    pub(crate) fn new(mode: TlsMode) -> Result<Self, rustls::Error> {
        let tls = match mode {
            TlsMode::Disable => None,
            _ => Some(rustls_connector()?),
        };
        Ok(Self { tls })
    }

    /// The TLS connector, if the connection is encrypted (also needed to send cancel requests).
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

impl Connect for Connector {
    fn connect(
        &self,
        pg_config: &tokio_postgres::Config,
    ) -> BoxFuture<'_, Result<(Client, JoinHandle<()>), tokio_postgres::Error>> {
        let pg_config = pg_config.clone();
        let tls = self.tls.clone();
        Box::pin(async move {
            match tls {
                None => {
                    let (client, connection) = pg_config.connect(NoTls).await?;
                    Ok((client, spawn_connection(connection)))
                }
                Some(tls) => {
                    let (client, connection) = pg_config.connect(tls).await?;
                    Ok((client, spawn_connection(connection)))
                }
            }
        })
    }
}
