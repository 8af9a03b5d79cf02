//! The ready-made stack through a real PgBouncer in transaction mode, in front of a throwaway cluster.
//!
//! With `Stack::pooler` (statements unnamed, the deadline pushed down with `SET LOCAL`) the query,
//! transaction-retry, deadline and restart scenarios pass; with the plain `Stack::server` the failures
//! the pooler mode prevents are shown, so the docs' warning rests on evidence.

use std::time::{Duration, Instant};

use rampart::IsolationLevel;
use rampart::layers::Classification;
use rampart::testing::{Accounts, Cluster, FaultProxy, PgBouncer};
use rampart::{Db, ErrorKind, PgConfig, PgService, Pool, PoolConfig, Query, Stack};
use tower::ServiceExt;

const BOUND: Duration = Duration::from_secs(30);

/// A plain client (through PgBouncer or straight to the cluster).
async fn raw(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

/// A raw client through a PgBouncer whose `max_client_conn` may still count a client that just left
/// (the harness's readiness probe, say): PgBouncer frees its slot when it processes the disconnect, a
/// moment later. Waits (bounded) until admitted, so a test that fills the slots knows they are all its own.
async fn raw_when_admitted(url: &str) -> tokio_postgres::Client {
    let deadline = tokio::time::Instant::now() + rampart::testing::WAIT_BOUND;
    loop {
        match tokio_postgres::connect(url, tokio_postgres::NoTls).await {
            Ok((client, conn)) => {
                tokio::spawn(conn);
                return client;
            }
            Err(e) if e.to_string().contains("max_client_conn") => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "never admitted: {e}"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(e) => panic!("connect through PgBouncer: {e}"),
        }
    }
}

async fn text(client: &tokio_postgres::Client, sql: &str) -> String {
    let rows = client.simple_query(sql).await.unwrap();
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .unwrap()
}

async fn one_i64(db: &Db, query: Query) -> i64 {
    db.run(query).await.unwrap().first().unwrap().get(0)
}

#[tokio::test]
async fn queries_pass_through_pgbouncer() {
    let cluster = Cluster::new().await.unwrap();
    let bouncer = PgBouncer::builder()
        .setting("default_pool_size", "2")
        .start(&cluster)
        .await
        .unwrap();
    let db = Stack::pooler(&bouncer.url()).build().unwrap();
    db.run(Query::write(
        "CREATE TABLE users (id bigserial PRIMARY KEY, email text UNIQUE, request_id text UNIQUE)",
    ))
    .await
    .unwrap();

    // Many callers, more connections than PgBouncer has server sessions: each statement may run on
    // any of them, so none may rely on a statement prepared in the session.
    let mut tasks = Vec::new();
    for i in 0..16i64 {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            for j in 0..10i64 {
                let key = format!("req-{i}-{j}");
                let insert = Query::write(
                    "INSERT INTO users (email, request_id) VALUES ($1, $2) ON CONFLICT (request_id) DO NOTHING",
                )
                .bind(format!("u{i}-{j}@example.com"))
                .bind(key.clone())
                .idempotency_key(key);
                assert_eq!(db.run(insert).await.unwrap().rows_affected(), 1);
                let n = one_i64(&db, Query::read("SELECT $1::bigint * 2").bind(i * j)).await;
                assert_eq!(n, i * j * 2);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(
        one_i64(&db, Query::read("SELECT count(*) FROM users")).await,
        160
    );

    // A mistake comes back once with its SQLSTATE, and leaves no aborted transaction behind.
    let err = db.run(Query::read("SELEC 1")).await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("42601"), "{err}");
    assert_eq!(err.attempts(), None);
    let err = db
        .run(Query::write("INSERT INTO users (email) VALUES ($1)").bind("u0-0@example.com"))
        .await
        .unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("23505"), "{err}");
    assert_eq!(one_i64(&db, Query::read("SELECT 7::bigint")).await, 7);

    // Without a deadline the service sends one unnamed statement, no transaction around it.
    let service = db.service();
    let answer = tower::ServiceExt::oneshot(service, Query::read("SELECT $1::int + 1").bind(1i32))
        .await
        .unwrap();
    assert_eq!(answer.first().unwrap().get::<_, i32>(0), 2);

    let health = db.health(Some(Duration::from_secs(2))).await;
    assert_eq!(health.status, rampart::Status::Up, "{health:?}");
}

#[tokio::test]
async fn the_deadline_is_pushed_down_with_set_local_and_leaks_nowhere() {
    let cluster = Cluster::new().await.unwrap();
    // One server session, so every client of PgBouncer shares it: a leaked setting would show.
    let bouncer = PgBouncer::builder()
        .setting("default_pool_size", "1")
        .start(&cluster)
        .await
        .unwrap();
    let db = Stack::pooler(&bouncer.url()).build().unwrap();
    let inside = db
        .run(
            Query::read("SELECT current_setting('statement_timeout')")
                .timeout(Duration::from_secs(2)),
        )
        .await
        .unwrap();
    let inside: String = inside.first().unwrap().get(0);
    assert_ne!(inside, "0", "the deadline reached the server");
    let other = raw(&bouncer.url()).await;
    assert_eq!(
        text(&other, "SHOW statement_timeout").await,
        "0",
        "and left nothing in the shared session"
    );

    // A statement slower than its deadline: a timeout at the deadline, the server-side query gone.
    let started = Instant::now();
    let err = tokio::time::timeout(
        BOUND,
        db.run(Query::read("SELECT pg_sleep(5)").timeout(Duration::from_millis(400))),
    )
    .await
    .unwrap()
    .unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.classification(), Classification::Transient, "{err}");
    assert!(took < Duration::from_millis(1500), "{took:?}: {err}");
    let direct = raw(&cluster.url()).await;
    let mut left = String::new();
    for _ in 0..100 {
        left = text(
            &direct,
            "SELECT count(*)::text FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep%' AND state = 'active'",
        )
        .await;
        if left == "0" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(left, "0", "the server-side query was cancelled");
    assert_eq!(one_i64(&db, Query::read("SELECT 1::bigint")).await, 1);
}

#[tokio::test]
async fn transactions_are_rerun_whole_through_pgbouncer() {
    let cluster = Cluster::new().await.unwrap();
    let bouncer = PgBouncer::builder()
        .setting("default_pool_size", "3")
        .start(&cluster)
        .await
        .unwrap();
    let db = Stack::pooler(&bouncer.url()).build().unwrap();
    let bank = Accounts::new(4, 1000);
    bank.create(db.clone()).await.unwrap();
    let transfers = db
        .transactor()
        .isolation(IsolationLevel::Serializable)
        .max_attempts(20);
    for outcome in bank.run_transfers(&transfers, 8, 5, 10).await {
        outcome.expect("every transfer commits through the pooler");
    }
    let (total, logged) = Accounts::audit(&cluster.url()).await;
    assert_eq!(total, bank.total(), "no money created or lost");
    assert_eq!(logged, 40, "each transfer applied exactly once");
    println!(
        "PGBOUNCER transactions: 40 transfers committed, {} runs in all",
        transfers.runs()
    );
    // The transaction's statement_timeout was its own, set with SET LOCAL.
    let other = raw(&bouncer.url()).await;
    assert_eq!(text(&other, "SHOW statement_timeout").await, "0");
}

#[tokio::test]
async fn a_postgres_restart_behind_pgbouncer_is_survived() {
    let cluster = Cluster::new().await.unwrap();
    let bouncer = PgBouncer::start(&cluster).await.unwrap();
    let db = Stack::pooler(&bouncer.url()).build().unwrap();
    db.run(Query::write("CREATE TABLE events (key text PRIMARY KEY)"))
        .await
        .unwrap();
    for _ in 0..4 {
        db.run(Query::read("SELECT 1")).await.unwrap();
    }
    let before = db.pool().stats();

    cluster.restart().await.unwrap();
    for i in 0..10 {
        db.run(Query::read("SELECT 1"))
            .await
            .expect("no error reaches the caller after a restart");
        let key = format!("k{i}");
        db.run(
            Query::write("INSERT INTO events VALUES ($1) ON CONFLICT DO NOTHING")
                .bind(key.clone())
                .idempotency_key(key),
        )
        .await
        .expect("keyed writes go through after a restart");
    }
    assert_eq!(
        one_i64(&db, Query::read("SELECT count(*) FROM events")).await,
        10
    );
    let after = db.pool().stats();
    println!(
        "PGBOUNCER restart: 20/20 ok after a Postgres restart; rampart connections to PgBouncer created {} -> {}, \
         evicted by validation {} -> {}, retries {}",
        before.created,
        after.created,
        before.evicted_validation,
        after.evicted_validation,
        db.retries()
    );
}

#[tokio::test]
async fn validation_proves_pgbouncer_answers_not_that_the_session_is_kept() {
    let cluster = Cluster::new().await.unwrap();
    let bouncer = PgBouncer::builder()
        .setting("default_pool_size", "2")
        .start(&cluster)
        .await
        .unwrap();
    // One rampart connection, validated at every checkout.
    let pool = Pool::new(
        PgConfig::pooler(&bouncer.url()).unwrap(),
        PoolConfig::builder()
            .max_size(1)
            .validation(
                rampart::layers::validate::ValidationPolicy::builder()
                    .bypass_window(Duration::ZERO)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap(),
    )
    .unwrap();
    let db = rampart::PgService::new(pool.clone());
    let pid = |db: rampart::PgService| async move {
        let answer = tower::ServiceExt::oneshot(db, Query::read("SELECT pg_backend_pid()"))
            .await
            .unwrap();
        answer.first().unwrap().get::<_, i32>(0)
    };
    let first = pid(db.clone()).await;
    // Another client holds that server session in a transaction: the same rampart connection, validated
    // again, is served by another one.
    let other = raw(&bouncer.url()).await;
    other.batch_execute("BEGIN").await.unwrap();
    assert_eq!(
        text(&other, "SELECT pg_backend_pid()::text").await,
        first.to_string()
    );
    let second = pid(db.clone()).await;
    assert_ne!(first, second, "one client connection, two server sessions");
    other.batch_execute("COMMIT").await.unwrap();
    let stats = pool.stats();
    assert_eq!(stats.created, 1, "{stats:?}");
    assert!(stats.validated >= 1, "{stats:?}");
}

#[tokio::test]
async fn without_the_pooler_setting_statements_and_settings_go_astray() {
    let cluster = Cluster::new().await.unwrap();
    let bouncer = PgBouncer::builder()
        .setting("default_pool_size", "2")
        .start(&cluster)
        .await
        .unwrap();
    // The plain server stack through PgBouncer, one connection.
    let plain = Stack::server(&bouncer.url())
        .pool(PoolConfig::builder().max_size(1).build().unwrap())
        .build()
        .unwrap();
    let pooled = Stack::pooler(&bouncer.url())
        .pool(PoolConfig::builder().max_size(1).build().unwrap())
        .build()
        .unwrap();
    let sql = "SELECT 1::bigint";
    plain.run(Query::read(sql)).await.unwrap();
    pooled.run(Query::read(sql)).await.unwrap();

    // Another client takes the one server session there is now, in a transaction...
    let other = raw(&bouncer.url()).await;
    other.batch_execute("BEGIN").await.unwrap();
    // ...and finds the plain stack's statement_timeout left in it.
    let leaked = text(&other, "SHOW statement_timeout").await;
    assert_ne!(
        leaked, "0",
        "the plain stack's session SET leaked to another client"
    );

    // The plain stack's statement was prepared in that session; the next request runs in another.
    let err = plain.run(Query::read(sql)).await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("26000"), "{err}");
    assert!(err.to_string().contains("does not exist"), "{err}");
    // The pooler stack, in the same position, does not care which session it gets.
    assert_eq!(one_i64(&pooled, Query::read(sql)).await, 1);
    other.batch_execute("COMMIT").await.unwrap();
    println!("PGBOUNCER without the pooler setting: leaked statement_timeout = {leaked}; {err}");
}

#[tokio::test]
async fn pgbouncer_errors_are_classified() {
    let cluster = Cluster::new().await.unwrap();

    // Client limit reached: a transient connect error.
    let bouncer = PgBouncer::builder()
        .setting("max_client_conn", "2")
        .start(&cluster)
        .await
        .unwrap();
    // Both slots held by this test's own clients, whatever PgBouncer still counted at the start.
    let _a = raw_when_admitted(&bouncer.url()).await;
    let _b = raw_when_admitted(&bouncer.url()).await;
    let pool = Pool::new(
        PgConfig::pooler(&bouncer.url()).unwrap(),
        PoolConfig::default(),
    )
    .unwrap();
    let err = PgService::new(pool.clone())
        .oneshot(Query::read("SELECT 1"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connect, "{err}");
    assert_eq!(err.classification(), Classification::Transient, "{err}");
    assert!(err.to_string().contains("max_client_conn"), "{err}");
    drop((_a, _b, pool, bouncer));

    // No server session free within query_wait_timeout: transient, nothing reached Postgres.
    let bouncer = PgBouncer::builder()
        .setting("default_pool_size", "1")
        .setting("query_wait_timeout", "1")
        .start(&cluster)
        .await
        .unwrap();
    let holder = raw(&bouncer.url()).await;
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let once = Stack::pooler(&bouncer.url())
        .max_attempts(1)
        .build()
        .unwrap();
    let err = once.run(Query::write("SELECT 1")).await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("08P01"), "{err}");
    assert!(err.to_string().contains("query_wait_timeout"), "{err}");
    assert_eq!(err.classification(), Classification::Transient, "{err}");
    drop((holder, once, bouncer));

    // The server connection lost under a statement: the outcome is unknown, and said so (with lost
    // replies not resolved; `tests/scenarios/resolved.rs` has them resolved behind PgBouncer).
    let proxy = FaultProxy::start(cluster.addr()).await.unwrap();
    let bouncer = PgBouncer::builder()
        .server_addr(proxy.addr())
        .start(&cluster)
        .await
        .unwrap();
    let once = Stack::pooler(&bouncer.url())
        .max_attempts(1)
        .resolve_outcomes(false)
        .build()
        .unwrap();
    let write = tokio::spawn({
        let once = once.clone();
        async move { once.run(Query::write("SELECT pg_sleep(2)")).await }
    });
    // Reset once the statement is running on the server (bounded wait), not after a guessed delay: a
    // reset before it is sent would be a different failure.
    let direct = raw(&cluster.url()).await;
    let started = Instant::now();
    while text(
        &direct,
        "SELECT count(*)::text FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(2)' AND state = 'active'",
    )
    .await
        != "1"
    {
        assert!(started.elapsed() < BOUND, "the statement never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    proxy.reset_all();
    let err = write.await.unwrap().unwrap_err();
    println!("PGBOUNCER server link lost: {err}");
    assert!(err.is_outcome_unknown(), "{err}");

    // Postgres down behind PgBouncer: transient, whether PgBouncer says so or keeps the client waiting.
    cluster.stop().unwrap();
    let once = Stack::pooler(&bouncer.url())
        .max_attempts(1)
        .attempt_timeout(Duration::from_millis(1500))
        .build()
        .unwrap();
    let mut said = Vec::new();
    for _ in 0..3 {
        let err = once.run(Query::read("SELECT 1")).await.unwrap_err();
        println!("PGBOUNCER postgres down: {err}");
        assert_eq!(err.classification(), Classification::Transient, "{err}");
        said.push(err.to_string());
    }
    assert!(
        said.iter().any(|e| e.contains("server_login_retry")),
        "{said:?}"
    );
}
