//! The test harness: throwaway PostgreSQL clusters (with TLS and client certificates from
//! [`TestCerts`] when a test asks), an in-process TCP fault proxy, and a throwaway PgBouncer in
//! transaction mode ([`PgBouncer`]).
//!
//! Enabled by the `testing` feature. Every test, example and benchmark in this repository uses this one
//! implementation, and so can yours: a test that needs a server to stop, restart or misbehave starts a
//! [`Cluster`] of its own, and puts a [`FaultProxy`] in front of it when the fault is on the network.
//! [`until`] waits, bounded, for what a test expects; [`Accounts`] is the transfers workload the
//! transaction tests share.
//!
//! ```no_run
//! use rampart::testing::{Cluster, Fault, FaultProxy};
//!
//! # async fn demo() -> Result<(), rampart::testing::HarnessError> {
//! let cluster = Cluster::builder().setting("max_connections", "20").start().await?;
//! let proxy = FaultProxy::start(cluster.addr()).await?;
//! let (client, connection) =
//!     tokio_postgres::connect(&proxy.url(&cluster), tokio_postgres::NoTls).await.unwrap();
//! tokio::spawn(connection);
//! client.simple_query("SELECT 1").await.unwrap();
//!
//! proxy.set_fault(Fault::BlackHole); // queries now hang, like a dead network path
//! proxy.set_fault(Fault::PassThrough);
//! proxy.kill_silently(); // what a NAT gateway or a suspending serverless host does to idle links
//! cluster.restart().await?;
//! # Ok(()) }
//! ```
//!
//! A test that needs PostgreSQL (or PgBouncer) and cannot find it **fails** with [`HarnessError`], whose message says how
//! to install the server or which variable to set. It never skips silently.

mod accounts;
mod cluster;
mod error;
mod pgbouncer;
mod process;
mod proxy;
mod tls;
mod wait;

pub use accounts::Accounts;
pub use cluster::{Cluster, ClusterBuilder, find_bin_dir};
pub use error::HarnessError;
pub use pgbouncer::{PgBouncer, PgBouncerBuilder, find_pgbouncer};
pub use proxy::{Fault, FaultProxy, ProxyStats};
pub use tls::TestCerts;
pub use wait::{WAIT_BOUND, until, until_async};
