//! What a marked write's transaction is (see [`crate::resolve`]): the server's functions for
//! transaction ids, the statements that open such a transaction and read its id, and the [`Mark`] read.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use tokio_postgres::SimpleQueryMessage;

/// Which functions the server has for transaction ids, learned once per pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Flavour {
    Unknown = 0,
    /// PostgreSQL 13 and later: `pg_current_xact_id()`, `pg_xact_status(xid8)`.
    Modern = 1,
    /// PostgreSQL 10 to 12: `txid_current()`, `txid_status(bigint)`.
    Legacy = 2,
    /// Neither: writes run as before, their lost replies unknown.
    Unsupported = 3,
}

impl Flavour {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Flavour::Modern,
            2 => Flavour::Legacy,
            3 => Flavour::Unsupported,
            _ => Flavour::Unknown,
        }
    }

    /// From `server_version_num`.
    pub(crate) fn of_version(num: Option<&str>) -> Self {
        match num.and_then(|n| n.trim().parse::<u32>().ok()) {
            Some(v) if v >= 130_000 => Flavour::Modern,
            Some(v) if v >= 100_000 => Flavour::Legacy,
            _ => Flavour::Unsupported,
        }
    }
}

/// The pool's learned [`Flavour`].
#[derive(Debug, Default)]
pub(crate) struct LearnedFlavour(AtomicU8);

impl LearnedFlavour {
    pub(crate) fn get(&self) -> Flavour {
        Flavour::from_u8(self.0.load(Ordering::Relaxed))
    }

    pub(crate) fn set(&self, flavour: Flavour) {
        self.0.store(flavour as u8, Ordering::Relaxed);
    }
}

pub(crate) fn first_row(messages: &[SimpleQueryMessage]) -> Option<Vec<&str>> {
    messages.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(row) => {
            Some((0..row.len()).map(|i| row.get(i).unwrap_or("")).collect())
        }
        _ => None,
    })
}

/// What the transaction of a marked write is, learned from the first reply: enough to ask about it and
/// to end it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mark {
    /// The 64-bit transaction id (epoch and xid), as `pg_current_xact_id()` gives it.
    pub(crate) xid: u64,
    /// The backend running it.
    pub(crate) pid: i32,
    /// When the server started: a different start time at lookup means it restarted in between.
    pub(crate) boot: Arc<str>,
    pub(crate) flavour: Flavour,
}

/// The statements that open a marked write's transaction (one simple query): `BEGIN`, the local
/// settings, and the select of the [`Mark`]. `prelude` is more to set inside it (the pooler mode's
/// `SET LOCAL statement_timeout`).
pub(crate) fn begin_sql(flavour: Flavour, remaining: Option<Duration>, prelude: &str) -> String {
    let idle = remaining.map_or(String::new(), |r| {
        // Past the request's time nobody waits for this transaction: the server ends it on its own.
        let ms = (r.as_millis() as u64).clamp(1_000, i32::MAX as u64);
        format!("SET LOCAL idle_in_transaction_session_timeout = {ms}; ")
    });
    let xid = match flavour {
        Flavour::Legacy => "txid_current()",
        _ => "pg_current_xact_id()",
    };
    format!(
        "BEGIN; {prelude}{idle}SELECT {xid}::text, pg_backend_pid()::text, pg_postmaster_start_time()::text"
    )
}

/// The select that reads the [`Mark`] inside a transaction already begun (the transactor's).
pub(crate) fn mark_sql(flavour: Flavour) -> &'static str {
    match flavour {
        Flavour::Legacy => {
            "SELECT txid_current()::text, pg_backend_pid()::text, pg_postmaster_start_time()::text"
        }
        _ => {
            "SELECT pg_current_xact_id()::text, pg_backend_pid()::text, pg_postmaster_start_time()::text"
        }
    }
}

/// The select that reads the [`Mark`] of a transaction begun earlier, if it was assigned an id (it
/// wrote something): a `NULL` id otherwise, which [`parse_mark`] reads as no mark.
pub(crate) fn mark_if_assigned_sql(flavour: Flavour) -> &'static str {
    match flavour {
        Flavour::Legacy => {
            "SELECT txid_current_if_assigned()::text, pg_backend_pid()::text, pg_postmaster_start_time()::text"
        }
        _ => {
            "SELECT pg_current_xact_id_if_assigned()::text, pg_backend_pid()::text, pg_postmaster_start_time()::text"
        }
    }
}

/// The [`Mark`] in the replies to [`begin_sql`] or [`mark_sql`].
pub(crate) fn parse_mark(messages: &[SimpleQueryMessage], flavour: Flavour) -> Option<Mark> {
    let row = first_row(messages)?;
    match row.as_slice() {
        [xid, pid, boot] => mark_of(Some(xid), Some(pid), Some(boot), flavour),
        _ => None,
    }
}

/// The [`Mark`] of the three columns of [`mark_sql`] (as text); `None` if the id is `NULL` (none was
/// assigned) or anything does not read.
pub(crate) fn mark_of(
    xid: Option<&str>,
    pid: Option<&str>,
    boot: Option<&str>,
    flavour: Flavour,
) -> Option<Mark> {
    Some(Mark {
        xid: xid?.parse().ok()?,
        pid: pid?.parse().ok()?,
        boot: boot?.into(),
        flavour,
    })
}

/// How many lost replies of plain writes a stack has looked up, by answer ([`Db::resolved`]).
///
/// [`Db::resolved`]: crate::Db::resolved
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Resolved {
    /// Applied: the server said the transaction committed.
    pub committed: u64,
    /// Not applied (the transaction rolled back, or its `COMMIT` was never sent), and so retried.
    pub not_applied: u64,
    /// No certain answer: reported as outcome unknown.
    pub unknown: u64,
}

impl Resolved {
    /// What was looked up since `earlier` (a snapshot of the same stack).
    pub fn since(&self, earlier: &Resolved) -> Resolved {
        Resolved {
            committed: self.committed.saturating_sub(earlier.committed),
            not_applied: self.not_applied.saturating_sub(earlier.not_applied),
            unknown: self.unknown.saturating_sub(earlier.unknown),
        }
    }

    /// Every lost reply looked up: those that would have been "outcome unknown" without resolution.
    pub fn total(&self) -> u64 {
        self.committed + self.not_applied + self.unknown
    }
}

/// How many lost replies a stack resolved, by answer.
#[derive(Debug, Default)]
pub(crate) struct Counts {
    pub(crate) committed: AtomicU64,
    pub(crate) not_applied: AtomicU64,
    pub(crate) unknown: AtomicU64,
}

impl Counts {
    pub(crate) fn record(&self, label: &str) {
        let counter = match label {
            "committed" => &self.committed,
            "aborted" => &self.not_applied,
            _ => &self.unknown,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Resolved {
        Resolved {
            committed: self.committed.load(Ordering::Relaxed),
            not_applied: self.not_applied.load(Ordering::Relaxed),
            unknown: self.unknown.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flavour_follows_the_server_version() {
        assert_eq!(Flavour::of_version(Some("150019")), Flavour::Modern);
        assert_eq!(Flavour::of_version(Some("130000")), Flavour::Modern);
        assert_eq!(Flavour::of_version(Some("120011")), Flavour::Legacy);
        assert_eq!(Flavour::of_version(Some("100000")), Flavour::Legacy);
        assert_eq!(Flavour::of_version(Some("90624")), Flavour::Unsupported);
        assert_eq!(Flavour::of_version(Some("cockroach")), Flavour::Unsupported);
        assert_eq!(Flavour::of_version(None), Flavour::Unsupported);
    }

    #[test]
    fn the_opening_sets_its_own_idle_limit_and_reads_the_mark() {
        let sql = begin_sql(Flavour::Modern, Some(Duration::from_millis(2_500)), "");
        assert_eq!(
            sql,
            "BEGIN; SET LOCAL idle_in_transaction_session_timeout = 2500; SELECT \
             pg_current_xact_id()::text, pg_backend_pid()::text, pg_postmaster_start_time()::text"
        );
        let legacy = begin_sql(Flavour::Legacy, None, "SET LOCAL statement_timeout = 5; ");
        assert!(
            legacy.starts_with("BEGIN; SET LOCAL statement_timeout = 5; SELECT txid_current()")
        );
        // Never below a second: a slow link's round trip must not end the transaction before COMMIT.
        assert!(begin_sql(Flavour::Modern, Some(Duration::from_millis(3)), "").contains("= 1000;"));
    }
}
