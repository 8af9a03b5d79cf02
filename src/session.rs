//! What a statement does to the session it runs in, read from its text: decides where it may run
//! (a shared connection or one of its own), whether a pooled connection can go back to the pool after
//! it, and whether `run` takes it at all.
//!
//! It looks at the first keyword (after any leading comments; for `CREATE` and `PREPARE`, the next
//! ones), case-insensitively, and at session-level advisory lock functions and `set_config` anywhere.
//! Scanned without allocating: this runs for every request.

/// What running a statement does to its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Effect {
    /// Nothing that outlives the statement: it may share a connection.
    None,
    /// Maintenance (`VACUUM`, `CREATE INDEX`, ...): harmless to the session, but slow; not for a shared
    /// connection.
    Maintenance,
    /// Changes or depends on session state (`SET`, `LISTEN`, cursors, prepared statements, temporary
    /// tables, session advisory locks, `set_config`): a connection of its own, closed afterwards rather
    /// than handed to the next caller with the state left on it.
    Session,
    /// Transaction control (`BEGIN`, `COMMIT`, `ROLLBACK`, `SAVEPOINT`, `PREPARE TRANSACTION`, ...): a
    /// connection left inside a transaction would swallow the next caller's writes; refused (the
    /// transactor runs transactions).
    Transaction,
    /// `COPY`: its data does not travel as rows of a statement; refused.
    Copy,
}

/// The statement's words, skipping leading `--` and `/* */` comments.
fn words(sql: &str) -> impl Iterator<Item = &str> {
    let mut rest = sql.trim_start();
    loop {
        if let Some(after) = rest.strip_prefix("--") {
            rest = after.split_once('\n').map_or("", |(_, r)| r).trim_start();
        } else if let Some(after) = rest.strip_prefix("/*") {
            rest = after.split_once("*/").map_or("", |(_, r)| r).trim_start();
        } else {
            break;
        }
    }
    rest.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
}

/// The statement's first keyword, after any leading comments.
pub(crate) fn first_word(sql: &str) -> Option<&str> {
    words(sql).next()
}

/// What `sql` does to its session (see [`Effect`]).
pub(crate) fn effect(sql: &str) -> Effect {
    let mut words = words(sql);
    let Some(first) = words.next() else {
        return Effect::None;
    };
    let is = |k: &str| first.eq_ignore_ascii_case(k);
    const TRANSACTION: &[&str] = &[
        "BEGIN",
        "START",
        "COMMIT",
        "END",
        "ROLLBACK",
        "ABORT",
        "SAVEPOINT",
        "RELEASE",
    ];
    const SESSION: &[&str] = &[
        "SET",
        "RESET",
        "LISTEN",
        "UNLISTEN",
        "DECLARE",
        "FETCH",
        "MOVE",
        "CLOSE",
        "EXECUTE",
        "DEALLOCATE",
        "DISCARD",
        "LOCK",
        "LOAD",
    ];
    const MAINTENANCE: &[&str] = &[
        "VACUUM",
        "ANALYZE",
        "ANALYSE",
        "CLUSTER",
        "REINDEX",
        "REFRESH",
        "CHECKPOINT",
    ];
    if TRANSACTION.iter().any(|k| is(k)) {
        return Effect::Transaction;
    }
    if is("PREPARE") {
        return match words.next() {
            Some(w) if w.eq_ignore_ascii_case("TRANSACTION") => Effect::Transaction,
            _ => Effect::Session,
        };
    }
    if is("COPY") {
        return Effect::Copy;
    }
    if SESSION.iter().any(|k| is(k)) {
        return Effect::Session;
    }
    if MAINTENANCE.iter().any(|k| is(k)) {
        return Effect::Maintenance;
    }
    if is("CREATE") {
        for w in words.take(3) {
            if w.eq_ignore_ascii_case("TEMP") || w.eq_ignore_ascii_case("TEMPORARY") {
                return Effect::Session;
            }
            if w.eq_ignore_ascii_case("INDEX") {
                return Effect::Maintenance;
            }
        }
    }
    // Session-level advisory locks (`pg_advisory_lock`, `pg_try_advisory_lock_shared`, ...) outlive the
    // statement (the `_xact_` variants end with its implicit transaction and are fine), and so may a
    // setting made with `set_config(..., false)`.
    let bytes = sql.as_bytes();
    let session = (0..bytes.len()).any(|at| {
        let first = bytes[at] | 0x20;
        if first != b'a' && first != b's' {
            return false;
        }
        let tail = &bytes[at..];
        let starts =
            |word: &[u8]| tail.len() >= word.len() && tail[..word.len()].eq_ignore_ascii_case(word);
        starts(b"advisory_lock") || starts(b"advisory_unlock") || starts(b"set_config")
    });
    if session {
        Effect::Session
    } else {
        Effect::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_statements_are_recognised() {
        for sql in [
            "BEGIN",
            "  begin isolation level serializable",
            "SET search_path = x",
            "set local statement_timeout = 5",
            "LISTEN jobs",
            "DECLARE c CURSOR FOR SELECT 1",
            "COPY t FROM STDIN",
            "VACUUM ANALYZE t",
            "CREATE TEMP TABLE t (x int)",
            "create temporary table t (x int)",
            "CREATE UNIQUE INDEX i ON t (x)",
            "SELECT pg_advisory_lock(1)",
            "select pg_try_advisory_lock_shared(1)",
            "SELECT pg_advisory_unlock_all()",
            "SELECT set_config('search_path', 'x', false)",
        ] {
            assert_ne!(effect(sql), Effect::None, "{sql} needs a session");
        }
        for sql in [
            "SELECT 1",
            "select * from settings",
            "INSERT INTO t VALUES (1)",
            "UPDATE t SET x = 1",
            "WITH x AS (SELECT 1) SELECT * FROM x",
            "CREATE TABLE t (x int)",
            "SELECT pg_advisory_xact_lock(1)",
            "",
        ] {
            assert_eq!(effect(sql), Effect::None, "{sql} can be shared");
        }
    }

    #[test]
    fn each_statement_has_its_effect() {
        for (sql, want) in [
            ("BEGIN", Effect::Transaction),
            (
                "start transaction isolation level serializable",
                Effect::Transaction,
            ),
            ("COMMIT", Effect::Transaction),
            ("commit prepared 'x'", Effect::Transaction),
            ("ROLLBACK", Effect::Transaction),
            ("END", Effect::Transaction),
            ("SAVEPOINT a", Effect::Transaction),
            ("release savepoint a", Effect::Transaction),
            ("PREPARE TRANSACTION 'x'", Effect::Transaction),
            ("-- a comment\nBEGIN", Effect::Transaction),
            ("/* hidden */ begin", Effect::Transaction),
            ("PREPARE q AS SELECT 1", Effect::Session),
            ("SET search_path = x", Effect::Session),
            ("LISTEN jobs", Effect::Session),
            ("CREATE TEMP TABLE t (x int)", Effect::Session),
            ("SELECT pg_advisory_lock(1)", Effect::Session),
            ("COPY t TO STDOUT", Effect::Copy),
            ("copy t from stdin", Effect::Copy),
            ("VACUUM t", Effect::Maintenance),
            ("CREATE UNIQUE INDEX i ON t (x)", Effect::Maintenance),
            ("SELECT 1", Effect::None),
            ("INSERT INTO begin_log VALUES (1)", Effect::None),
            ("-- only a comment", Effect::None),
        ] {
            assert_eq!(effect(sql), want, "{sql}");
        }
    }
}
