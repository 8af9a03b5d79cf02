//! Tests of the test harness itself: the throwaway cluster and the fault proxy, observed from a real
//! tokio-postgres client.

use std::time::Duration;

use rampart::testing::{Cluster, Fault, FaultProxy};
use tokio_postgres::{Client, NoTls};

/// A bound for waits that should end quickly; generous, because CI machines are loaded. Tests never assert
/// that something took less than this, only that it happened before it.
const BOUND: Duration = Duration::from_secs(10);

async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.expect("connect");
    tokio::spawn(connection);
    client
}

async fn select_one(client: &Client) -> Result<i32, tokio_postgres::Error> {
    client
        .query_one("SELECT 1", &[])
        .await
        .map(|row| row.get(0))
}

use rampart::testing::until as eventually;

async fn backend_count(cluster: &Cluster) -> i64 {
    let admin = connect(&cluster.url()).await;
    admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn cluster_starts_answers_and_restarts_on_the_same_port() {
    let cluster = Cluster::builder()
        .setting("max_connections", "17")
        .start()
        .await
        .unwrap();
    let before = connect(&cluster.url()).await;
    assert_eq!(select_one(&before).await.unwrap(), 1);
    let max: String = before
        .query_one("SHOW max_connections", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(max, "17", "settings are passed on the command line");
    let port = cluster.port();

    cluster.restart().await.unwrap();
    assert_eq!(cluster.port(), port);
    // The server closed the old connection openly, so the idle client notices without sending anything.
    eventually("the pre-restart connection is closed", || {
        before.is_closed()
    })
    .await;
    assert!(select_one(&before).await.is_err());

    let after = connect(&cluster.url()).await;
    assert_eq!(select_one(&after).await.unwrap(), 1);
}

#[tokio::test]
async fn stopped_cluster_refuses_and_starts_again_with_its_data() {
    let cluster = Cluster::new().await.unwrap();
    let client = connect(&cluster.url()).await;
    client
        .batch_execute("CREATE TABLE kept (v int); INSERT INTO kept VALUES (42)")
        .await
        .unwrap();

    cluster.stop().unwrap();
    assert!(!cluster.is_running());
    let refused = tokio_postgres::connect(&cluster.url(), NoTls)
        .await
        .err()
        .expect("nothing listens");
    assert!(
        format!("{refused:?}").contains("ConnectionRefused"),
        "{refused:?}"
    );

    cluster.start().await.unwrap();
    let client = connect(&cluster.url()).await;
    let v: i32 = client
        .query_one("SELECT v FROM kept", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 42);

    cluster.kill().unwrap();
    assert!(!cluster.is_running());
    cluster.start().await.unwrap();
    let client = connect(&cluster.url()).await;
    assert_eq!(
        select_one(&client).await.unwrap(),
        1,
        "recovers after an immediate shutdown"
    );
}

#[tokio::test]
async fn password_clusters_require_the_password() {
    let cluster = Cluster::builder()
        .password("s3cret-pw")
        .start()
        .await
        .unwrap();
    let client = connect(&cluster.url()).await;
    assert_eq!(select_one(&client).await.unwrap(), 1);
    let wrong = format!("postgres://postgres:wrong@{}/postgres", cluster.addr());
    let err = tokio_postgres::connect(&wrong, NoTls)
        .await
        .err()
        .expect("wrong password is refused");
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::INVALID_PASSWORD)
    );
    assert!(
        !format!("{cluster:?}").contains("s3cret-pw"),
        "Debug must not show the password"
    );
}

#[tokio::test]
async fn pass_through_counts_links_and_bytes() {
    let cluster = Cluster::new().await.unwrap();
    let proxy = FaultProxy::start(cluster.addr()).await.unwrap();
    let a = connect(&proxy.url(&cluster)).await;
    let b = connect(&proxy.url(&cluster)).await;
    assert_eq!(select_one(&a).await.unwrap(), 1);
    assert_eq!(select_one(&b).await.unwrap(), 1);
    let stats = proxy.stats();
    assert_eq!(stats.links_opened, 2);
    assert_eq!(stats.links_open, 2);
    assert!(
        stats.bytes_to_server > 0 && stats.bytes_to_client > 0,
        "{stats:?}"
    );
    drop(a);
    eventually("the closed link is forgotten", || {
        proxy.stats().links_open == 1
    })
    .await;
}

#[tokio::test]
async fn black_hole_holds_queries_until_lifted() {
    let cluster = Cluster::new().await.unwrap();
    let proxy = FaultProxy::start(cluster.addr()).await.unwrap();
    let client = connect(&proxy.url(&cluster)).await;
    assert_eq!(select_one(&client).await.unwrap(), 1);

    proxy.set_fault(Fault::BlackHole);
    let query = select_one(&client);
    tokio::pin!(query);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut query)
            .await
            .is_err(),
        "a black-holed query must not complete"
    );
    assert!(!client.is_closed(), "a black hole sends no reset");

    proxy.set_fault(Fault::PassThrough);
    let answer = tokio::time::timeout(BOUND, query)
        .await
        .expect("held bytes are delivered once lifted");
    assert_eq!(answer.unwrap(), 1);
}

#[tokio::test]
async fn latency_delays_every_round_trip() {
    let cluster = Cluster::new().await.unwrap();
    let proxy = FaultProxy::start(cluster.addr()).await.unwrap();
    let client = connect(&proxy.url(&cluster)).await;
    proxy.set_fault(Fault::Latency(Duration::from_millis(150)));
    let started = std::time::Instant::now();
    assert_eq!(select_one(&client).await.unwrap(), 1);
    // A lower bound only: the delay is added on the way there and back, so it cannot take less.
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn reset_all_closes_open_links_with_an_error() {
    let cluster = Cluster::new().await.unwrap();
    let proxy = FaultProxy::start(cluster.addr()).await.unwrap();
    let client = connect(&proxy.url(&cluster)).await;
    assert_eq!(select_one(&client).await.unwrap(), 1);

    assert_eq!(proxy.reset_all(), 1);
    eventually("the reset link is seen as closed", || client.is_closed()).await;
    let err = select_one(&client).await.unwrap_err();
    assert!(
        err.is_closed() || err.to_string().contains("connection"),
        "{err}"
    );
    assert_eq!(proxy.stats().links_killed, 1);

    let again = connect(&proxy.url(&cluster)).await;
    assert_eq!(
        select_one(&again).await.unwrap(),
        1,
        "new links pass once the reset is done"
    );
}

#[tokio::test]
async fn refuse_refuses_new_links_and_listens_again_when_lifted() {
    let cluster = Cluster::new().await.unwrap();
    let proxy = FaultProxy::start(cluster.addr()).await.unwrap();
    let open = connect(&proxy.url(&cluster)).await;

    proxy.set_fault(Fault::Refuse);
    // The listener closes asynchronously; wait (bounded) until the kernel refuses.
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        match tokio::net::TcpStream::connect(proxy.addr()).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
            _ => assert!(
                tokio::time::Instant::now() < deadline,
                "proxy still accepts connections"
            ),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let err = tokio_postgres::connect(&proxy.url(&cluster), NoTls)
        .await
        .err()
        .expect("refused");
    assert!(format!("{err:?}").contains("ConnectionRefused"), "{err:?}");
    assert_eq!(
        select_one(&open).await.unwrap(),
        1,
        "open links are untouched"
    );

    proxy.set_fault(Fault::ResetNew);
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        // Re-listening is asynchronous too; a reset (not a refusal) shows it is listening again.
        match tokio_postgres::connect(&proxy.url(&cluster), NoTls).await {
            Err(e) if !format!("{e:?}").contains("ConnectionRefused") => break,
            Err(_) => assert!(
                tokio::time::Instant::now() < deadline,
                "proxy never listened again"
            ),
            Ok(_) => panic!("ResetNew must not let a connection through"),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    proxy.set_fault(Fault::PassThrough);
    let client = connect(&proxy.url(&cluster)).await;
    assert_eq!(select_one(&client).await.unwrap(), 1);
}

#[tokio::test]
async fn silent_kill_is_noticed_only_on_the_next_write() {
    let cluster = Cluster::new().await.unwrap();
    let proxy = FaultProxy::start(cluster.addr()).await.unwrap();
    let client = connect(&proxy.url(&cluster)).await;
    assert_eq!(select_one(&client).await.unwrap(), 1);
    assert_eq!(backend_count(&cluster).await, 1);

    assert_eq!(proxy.kill_silently(), 1);
    // The server side is closed: its backend goes away.
    let deadline = tokio::time::Instant::now() + BOUND;
    while backend_count(&cluster).await != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the backend behind a killed link did not exit"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The client was told nothing: this is the "connection already closed" trap.
    assert!(
        !client.is_closed(),
        "a silent kill must not be visible to an idle client"
    );
    let err = select_one(&client)
        .await
        .expect_err("the next query meets the reset");
    assert!(
        client.is_closed(),
        "after the failed write the client knows: {err}"
    );
}

#[tokio::test]
async fn idle_cut_kills_only_links_idle_longer_than_the_limit() {
    let cluster = Cluster::new().await.unwrap();
    let proxy = FaultProxy::start(cluster.addr()).await.unwrap();
    let idle = connect(&proxy.url(&cluster)).await;
    let busy = connect(&proxy.url(&cluster)).await;
    proxy.set_idle_cut(Some(Duration::from_millis(300)));

    // Keep one link busy until the idle one has been cut.
    let deadline = tokio::time::Instant::now() + BOUND;
    while proxy.stats().links_killed == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the idle link was never cut"
        );
        assert_eq!(select_one(&busy).await.unwrap(), 1);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.set_idle_cut(None);
    assert_eq!(proxy.stats().links_killed, 1, "only the idle link is cut");
    assert_eq!(select_one(&busy).await.unwrap(), 1);
    assert!(!idle.is_closed(), "cut silently");
    assert!(select_one(&idle).await.is_err());
}

#[tokio::test]
async fn clusters_left_by_a_dead_test_process_are_reaped() {
    // A cluster directory whose owner has exited (a process killed by a timeout never drops its cluster).
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = gone.id();
    gone.wait().unwrap();
    let orphan = std::env::temp_dir().join(format!("rampart-pg-orphan-test-{dead_pid}"));
    std::fs::create_dir_all(&orphan).unwrap();
    std::fs::write(orphan.join("owner.pid"), dead_pid.to_string()).unwrap();
    // One whose owner is alive (this process) is left alone.
    let ours = std::env::temp_dir().join(format!("rampart-pg-live-test-{}", std::process::id()));
    std::fs::create_dir_all(&ours).unwrap();
    std::fs::write(ours.join("owner.pid"), std::process::id().to_string()).unwrap();

    let _cluster = Cluster::new().await.unwrap();
    assert!(!orphan.exists(), "the orphan was removed");
    assert!(ours.exists(), "a live owner's cluster is kept");
    std::fs::remove_dir_all(&ours).unwrap();
}

#[tokio::test]
async fn a_standby_streams_from_its_primary_and_takes_writes_once_promoted() {
    let primary = Cluster::new().await.expect("primary");
    let admin = connect(&primary.url()).await;
    admin
        .batch_execute("CREATE TABLE t (n int); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let standby = primary.standby().await.expect("standby");
    assert_ne!(standby.port(), primary.port());
    assert!(standby.is_in_recovery().await.unwrap());
    assert!(!primary.is_in_recovery().await.unwrap());
    admin
        .execute("INSERT INTO t VALUES (2)", &[])
        .await
        .unwrap();
    let replica = connect(&standby.url()).await;
    let count = || async {
        replica
            .query_one("SELECT count(*) FROM t", &[])
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    rampart::testing::until_async("the standby has both rows", || async { count().await == 2 })
        .await;
    let refused = replica.execute("INSERT INTO t VALUES (3)", &[]).await;
    assert_eq!(
        refused.unwrap_err().code().map(|c| c.code()),
        Some("25006"),
        "a standby refuses writes"
    );

    // A multi-host URL with target_session_attrs finds the writer, whichever host comes first.
    let url = Cluster::url_of_all(&[&standby, &primary], "target_session_attrs=read-write");
    let writer = connect(&url).await;
    writer
        .execute("INSERT INTO t VALUES (3)", &[])
        .await
        .unwrap();

    primary.kill().unwrap();
    standby.promote().await.unwrap();
    assert!(!standby.is_in_recovery().await.unwrap());
    replica
        .execute("INSERT INTO t VALUES (4)", &[])
        .await
        .unwrap();
}

#[tokio::test]
async fn a_read_only_server_answers_reads_and_refuses_writes_on_open_sessions() {
    let cluster = Cluster::new().await.expect("cluster");
    let client = connect(&cluster.url()).await;
    client
        .batch_execute("CREATE TABLE t (n int)")
        .await
        .unwrap();
    cluster.set_read_only(true).await.unwrap();
    // The open session sees the reload from its next statement.
    rampart::testing::until_async("the open session refuses writes", || async {
        client
            .execute("INSERT INTO t VALUES (1)", &[])
            .await
            .is_err_and(|e| e.code().is_some_and(|c| c.code() == "25006"))
    })
    .await;
    select_one(&client).await.expect("reads still work");
    let url = format!("{}?target_session_attrs=read-write", cluster.url());
    let rejected = tokio_postgres::connect(&url, NoTls).await;
    assert!(rejected.is_err(), "a read-write session is refused");
    cluster.set_read_only(false).await.unwrap();
    let (writer, connection) = tokio_postgres::connect(&url, NoTls)
        .await
        .expect("writable again");
    tokio::spawn(connection);
    writer
        .execute("INSERT INTO t VALUES (1)", &[])
        .await
        .unwrap();
}
