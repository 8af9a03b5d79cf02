//! What the cluster and PgBouncer share: a child process, its log, and waiting until it answers a query.

use std::path::Path;
use std::process::Child;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::HarnessError;

/// A server process of the harness, started and stopped at will.
#[derive(Debug, Default)]
pub(crate) struct Process {
    child: Mutex<Option<Child>>,
}

impl Process {
    pub(crate) fn set(&self, child: Child) {
        *self.child.lock().unwrap_or_else(|p| p.into_inner()) = Some(child);
    }

    /// The child, if one was started (and not taken since).
    pub(crate) fn take(&self) -> Option<Child> {
        self.child.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    pub(crate) fn is_running(&self) -> bool {
        let mut child = self.child.lock().unwrap_or_else(|p| p.into_inner());
        match child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }
}

/// The last `lines` lines of a log file, for error messages.
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Waits until `config` connects and answers `SELECT 1`, failing with the log's tail if the process
/// exits or `limit` passes. A refused connection or a 57P03 ("starting up") answer means: not yet.
pub(crate) async fn wait_until_answering(
    what: &str,
    config: &tokio_postgres::Config,
    process: &Process,
    log: &Path,
    limit: Duration,
) -> Result<(), HarnessError> {
    let started = Instant::now();
    loop {
        if !process.is_running() {
            return Err(HarnessError::new(format!(
                "{what} exited while starting; its log ends with:\n{}",
                log_tail(log, 20)
            )));
        }
        if let Ok(Ok((client, conn))) = tokio::time::timeout(
            Duration::from_secs(2),
            config.connect(tokio_postgres::NoTls),
        )
        .await
        {
            let conn = tokio::spawn(conn);
            let ok = client.simple_query("SELECT 1").await.is_ok();
            drop(client);
            let _ = conn.await;
            if ok {
                return Ok(());
            }
        }
        if started.elapsed() > limit {
            return Err(HarnessError::new(format!(
                "{what} did not answer a query within {limit:?}; its log ends with:\n{}",
                log_tail(log, 20)
            )));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
