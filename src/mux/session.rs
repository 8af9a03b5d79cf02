//! Which statements need a session of their own.

/// Whether a statement changes or depends on session state, or is maintenance that should not hold up
/// a shared connection. Looks at the first keyword (and, for `CREATE`, the next), case-insensitively,
/// and at session-level advisory lock functions anywhere.
pub(super) fn needs_session(sql: &str) -> bool {
    let mut words = sql
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty());
    let Some(first) = words.next() else {
        return false;
    };
    const SESSION: &[&str] = &[
        "BEGIN",
        "START",
        "COMMIT",
        "END",
        "ROLLBACK",
        "ABORT",
        "SAVEPOINT",
        "RELEASE",
        "SET",
        "RESET",
        "LISTEN",
        "UNLISTEN",
        "DECLARE",
        "FETCH",
        "MOVE",
        "CLOSE",
        "PREPARE",
        "EXECUTE",
        "DEALLOCATE",
        "DISCARD",
        "LOCK",
        "COPY",
        "VACUUM",
        "ANALYZE",
        "ANALYSE",
        "CLUSTER",
        "REINDEX",
        "REFRESH",
        "CHECKPOINT",
        "LOAD",
    ];
    if SESSION.iter().any(|k| first.eq_ignore_ascii_case(k)) {
        return true;
    }
    if first.eq_ignore_ascii_case("CREATE") {
        let rest: Vec<&str> = words.take(3).collect();
        if rest.iter().any(|w| {
            w.eq_ignore_ascii_case("TEMP")
                || w.eq_ignore_ascii_case("TEMPORARY")
                || w.eq_ignore_ascii_case("INDEX")
        }) {
            return true;
        }
    }
    // Session-level advisory locks (`pg_advisory_lock`, `pg_try_advisory_lock_shared`, ...) outlive the
    // statement (the `_xact_` variants end with its implicit transaction and are fine), and so may a
    // setting made with `set_config(..., false)`. Scanned without allocating: this runs for every request.
    let bytes = sql.as_bytes();
    (0..bytes.len()).any(|at| {
        let first = bytes[at] | 0x20;
        if first != b'a' && first != b's' {
            return false;
        }
        let tail = &bytes[at..];
        let starts =
            |word: &[u8]| tail.len() >= word.len() && tail[..word.len()].eq_ignore_ascii_case(word);
        starts(b"advisory_lock") || starts(b"advisory_unlock") || starts(b"set_config")
    })
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
            assert!(needs_session(sql), "{sql} needs a session");
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
            assert!(!needs_session(sql), "{sql} can be shared");
        }
    }
}
