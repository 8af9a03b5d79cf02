//! TLS against real servers, with libpq (`psql`) as the oracle: every cell of (sslmode × server × client
//! roots, host name and certificate) is connected to by both, with the same keywords, and must end the
//! same way (TLS, plain text, or a failure); each failure is a permanent connect error naming its cause.
//! Plus, each against psql where psql can say: channel binding against SCRAM, the `PGSSL*` variables,
//! the second attempts of `allow` and `prefer` (links counted at a proxy), client key permissions, and
//! the one deliberate difference (a named file that is missing). Without an oracle:
//! `sslnegotiation=direct` against a server older than 17 (psql 15 does not know the keyword), a cancel
//! request over verified TLS, and a certificate failure through the stack (not retried, not counted by
//! the breaker). Run with `--nocapture` to see the tables.
//!
//! `psql` comes from the PostgreSQL client package (Debian/Ubuntu: `apt-get install -y
//! postgresql-client`, which the server package pulls in); a test that cannot find it fails.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rampart::layers::Classification;
use rampart::testing::{Cluster, ClusterBuilder, FaultProxy, TestCerts, find_bin_dir};
use rampart::{ErrorKind, MuxConfig, PgConfig, PgService, Pool, PoolConfig, Preset, Query, Stack};
use tower::ServiceExt;

const PASSWORD: &str = "s3cret-pw";
const WHICH_TLS: &str = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";
const TCP: &str = "127.0.0.1/32";

/// How a connection attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Tls,
    Plain,
    Fail(String),
}

impl Outcome {
    fn same_as(&self, other: &Outcome) -> bool {
        matches!(
            (self, other),
            (Outcome::Tls, Outcome::Tls)
                | (Outcome::Plain, Outcome::Plain)
                | (Outcome::Fail(_), Outcome::Fail(_))
        )
    }

    fn short(&self) -> String {
        match self {
            Outcome::Tls => "tls".into(),
            Outcome::Plain => "plain".into(),
            Outcome::Fail(why) => {
                // The cause, without the address both name.
                let why = why
                    .split_once("failed: ")
                    .or_else(|| why.split_once("/postgres?sslmode="))
                    .map_or(why.as_str(), |(_, rest)| rest);
                let why = why
                    .split_once(": ")
                    .filter(|(mode, _)| !mode.contains(' '))
                    .map_or(why, |(_, rest)| rest);
                why.chars().take(150).collect()
            }
        }
    }
}

fn psql() -> PathBuf {
    let beside_server = find_bin_dir().ok().map(|dir| dir.join("psql"));
    beside_server
        .into_iter()
        .chain([PathBuf::from("/usr/bin/psql")])
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "these tests compare rampart with libpq and need `psql`: install the PostgreSQL client \
                 (Debian/Ubuntu: `apt-get install -y postgresql-client`; macOS: `brew install libpq`)"
            )
        })
}

/// libpq's verdict: `psql` with `url` and only the variables in `env` (HOME points at an empty
/// directory, so no `~/.postgresql` file takes part).
fn libpq(url: &str, env: &[(&str, String)], home: &Path) -> Outcome {
    let out = Command::new(psql())
        .env_clear()
        .env("HOME", home)
        .env("LC_ALL", "C")
        .env("PGCONNECT_TIMEOUT", "10")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .args(["-X", "-A", "-t", "-w", "-c", WHICH_TLS])
        .arg(url)
        .output()
        .expect("running psql");
    if !out.status.success() {
        return Outcome::Fail(
            String::from_utf8_lossy(&out.stderr)
                .trim()
                .replace('\n', " "),
        );
    }
    match String::from_utf8_lossy(&out.stdout).trim() {
        "t" => Outcome::Tls,
        "f" => Outcome::Plain,
        other => panic!("psql printed {other:?}"),
    }
}

/// rampart's verdict, through a pool (one checkout: no retry layer takes part). A failure must be a
/// permanent connect error (or a configuration error) that names the server and not the password.
async fn rampart(url: &str, env: &[(&str, String)]) -> Outcome {
    let lookup = |name: &str| env.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone());
    let pg = match PgConfig::with_env(url, Preset::Server, lookup) {
        Ok(pg) => pg.connect_timeout(Duration::from_secs(10)),
        Err(e) => return Outcome::Fail(format!("ConfigError: {e}")),
    };
    let pool = match Pool::new(pg, PoolConfig::default()) {
        Ok(pool) => pool,
        Err(e) => return Outcome::Fail(format!("ConfigError: {e}")),
    };
    match PgService::new(pool).oneshot(Query::read(WHICH_TLS)).await {
        Ok(answer) => {
            if answer.first().unwrap().get::<_, bool>(0) {
                Outcome::Tls
            } else {
                Outcome::Plain
            }
        }
        Err(e) => {
            let shown = e.to_string();
            assert_eq!(e.kind(), ErrorKind::Connect, "{shown}");
            assert_eq!(e.classification(), Classification::Permanent, "{shown}");
            assert!(!shown.contains(PASSWORD), "{shown}");
            assert!(!format!("{e:?}").contains(PASSWORD), "{e:?}");
            assert!(
                shown.contains("could not connect to postgres://postgres:***@"),
                "{shown}"
            );
            Outcome::Fail(shown)
        }
    }
}

/// Environment variables for one cell: given to psql as its whole environment, to rampart as its lookup.
type Env = Vec<(&'static str, String)>;

struct Server {
    name: &'static str,
    cluster: Cluster,
}

async fn start(name: &'static str, builder: ClusterBuilder) -> Server {
    let cluster = builder
        .password(PASSWORD)
        .setting("password_encryption", "scram-sha-256")
        .start()
        .await
        .unwrap_or_else(|e| panic!("starting the {name:?} server: {e}"));
    Server { name, cluster }
}

/// The servers of the matrix: without TLS; with TLS and both kinds of link allowed; TLS required
/// (`hostssl`); TLS and a client certificate required (`clientcert=verify-full`); plain text required
/// (`hostnossl`) on a server that offers TLS; TLS with an expired certificate.
async fn servers(certs: &TestCerts) -> Vec<Server> {
    let scram = |kind: &str| format!("{kind} all all {TCP} scram-sha-256");
    vec![
        start("no TLS", Cluster::builder().hba(scram("host"))).await,
        start("TLS", Cluster::builder().tls(certs).hba(scram("host"))).await,
        start(
            "TLS required",
            Cluster::builder().tls(certs).hba(scram("hostssl")),
        )
        .await,
        start(
            "client cert required",
            Cluster::builder()
                .tls(certs)
                .hba(format!("{} clientcert=verify-full", scram("hostssl"))),
        )
        .await,
        start(
            "plain required",
            Cluster::builder().tls(certs).hba(scram("hostnossl")),
        )
        .await,
        start(
            "TLS, expired cert",
            Cluster::builder().tls_expired(certs).hba(scram("host")),
        )
        .await,
    ]
}

/// What the client brings: which roots, whether it names the host the certificate is for, whether it
/// presents the client certificate.
#[derive(Clone, Copy)]
struct ClientSide {
    name: &'static str,
    roots: Roots,
    /// The host name to verify against (connecting to `hostaddr=127.0.0.1`), if not 127.0.0.1.
    host: Option<&'static str>,
    client_cert: bool,
}

#[derive(Clone, Copy)]
enum Roots {
    Right,
    Wrong,
    None,
}

const CLIENTS: [ClientSide; 6] = [
    ClientSide {
        name: "right CA",
        roots: Roots::Right,
        host: None,
        client_cert: true,
    },
    ClientSide {
        name: "wrong CA",
        roots: Roots::Wrong,
        host: None,
        client_cert: true,
    },
    ClientSide {
        name: "wrong host name",
        roots: Roots::Right,
        host: Some("wrong.invalid"),
        client_cert: true,
    },
    ClientSide {
        name: "host name localhost",
        roots: Roots::Right,
        host: Some("localhost"),
        client_cert: true,
    },
    ClientSide {
        name: "no sslrootcert",
        roots: Roots::None,
        host: None,
        client_cert: true,
    },
    ClientSide {
        name: "right CA, no client cert",
        roots: Roots::Right,
        host: None,
        client_cert: false,
    },
];

const MODES: [&str; 6] = [
    "disable",
    "allow",
    "prefer",
    "require",
    "verify-ca",
    "verify-full",
];

/// The URL both clients get. A host name (`wrong.invalid`, `localhost`) comes with
/// `hostaddr=127.0.0.1`: both clients connect to the server and verify the certificate against the name.
fn url(cluster: &Cluster, certs: &TestCerts, mode: &str, client: ClientSide) -> String {
    let mut url = match client.host {
        Some(host) => format!("{}?hostaddr=127.0.0.1&", cluster.url_with_host(host)),
        None => format!("{}?", cluster.url()),
    };
    url.push_str(&format!("sslmode={mode}"));
    match client.roots {
        Roots::Right => url.push_str(&format!("&sslrootcert={}", certs.ca().display())),
        Roots::Wrong => url.push_str(&format!("&sslrootcert={}", certs.other_ca().display())),
        Roots::None => {}
    }
    if client.client_cert {
        url.push_str(&format!(
            "&sslcert={}&sslkey={}",
            certs.client_cert().display(),
            certs.client_key().display()
        ));
    }
    url
}

struct Cell {
    name: String,
    libpq: Outcome,
    rampart: Outcome,
}

fn print_and_check(title: &str, cells: &[Cell]) {
    println!("\n{title}");
    println!(
        "{:<62} | {:<5} | {:<5} | libpq / rampart",
        "cell", "libpq", "ours"
    );
    let mut disagree = Vec::new();
    for cell in cells {
        let agree = cell.libpq.same_as(&cell.rampart);
        let tag = |o: &Outcome| match o {
            Outcome::Tls => "tls",
            Outcome::Plain => "plain",
            Outcome::Fail(_) => "fail",
        };
        println!(
            "{:<62} | {:<5} | {:<5} | {}",
            cell.name,
            tag(&cell.libpq),
            tag(&cell.rampart),
            if agree { "agree" } else { "DISAGREE" }
        );
        if let (Outcome::Fail(_), _) | (_, Outcome::Fail(_)) = (&cell.libpq, &cell.rampart) {
            println!("    libpq:   {}", cell.libpq.short());
            println!("    rampart: {}", cell.rampart.short());
        }
        if !agree {
            disagree.push(cell.name.clone());
        }
    }
    assert!(
        disagree.is_empty(),
        "rampart and libpq disagree in {} cells: {disagree:#?}",
        disagree.len()
    );
}

fn find<'a>(cells: &'a [Cell], name: &str) -> &'a Outcome {
    &cells
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no cell {name}"))
        .rampart
}

fn assert_fails_with(cells: &[Cell], name: &str, cause: &str) {
    match find(cells, name) {
        Outcome::Fail(why) => assert!(why.contains(cause), "{name}: {why}"),
        other => panic!("{name}: expected a failure naming {cause:?}, got {other:?}"),
    }
}

#[tokio::test]
async fn every_sslmode_against_every_server_agrees_with_libpq() {
    let certs = TestCerts::generate().unwrap();
    let home = tempfile::tempdir().unwrap();
    let servers = servers(&certs).await;
    let mut cells = Vec::new();
    for server in &servers {
        for client in CLIENTS {
            for mode in MODES {
                let url = url(&server.cluster, &certs, mode, client);
                let libpq = libpq(&url, &[], home.path());
                let rampart = rampart(&url, &[]).await;
                cells.push(Cell {
                    name: format!("{} / {} / {mode}", server.name, client.name),
                    libpq,
                    rampart,
                });
            }
        }
    }
    print_and_check("sslmode matrix (server / client / sslmode)", &cells);
    // Each failure names its cause.
    assert_fails_with(&cells, "TLS / wrong CA / verify-full", "unknown issuer");
    assert_fails_with(&cells, "TLS / wrong CA / require", "unknown issuer");
    assert_fails_with(
        &cells,
        "TLS / wrong host name / verify-full",
        "does not name this host",
    );
    assert_fails_with(&cells, "TLS / no sslrootcert / verify-ca", "unknown issuer");
    assert_fails_with(
        &cells,
        "TLS, expired cert / right CA / verify-full",
        "expired",
    );
    assert_fails_with(
        &cells,
        "no TLS / right CA / require",
        "does not support TLS",
    );
    assert_fails_with(
        &cells,
        "TLS required / right CA / disable",
        "no pg_hba.conf entry",
    );
    assert_fails_with(
        &cells,
        "client cert required / right CA, no client cert / verify-full",
        "certificate",
    );
    // prefer falls back to plain text after a failed verification, as libpq does.
    assert_eq!(find(&cells, "TLS / wrong CA / prefer"), &Outcome::Plain);
    assert_eq!(
        find(&cells, "TLS / host name localhost / verify-full"),
        &Outcome::Tls
    );
    assert_eq!(
        find(&cells, "TLS required / right CA / allow"),
        &Outcome::Tls
    );
    assert_eq!(
        find(&cells, "plain required / right CA / prefer"),
        &Outcome::Plain
    );
}

#[tokio::test]
async fn channel_binding_agrees_with_libpq() {
    let certs = TestCerts::generate().unwrap();
    let home = tempfile::tempdir().unwrap();
    let scram_tls = start(
        "TLS, SCRAM",
        Cluster::builder()
            .tls(&certs)
            .hba(format!("host all all {TCP} scram-sha-256")),
    )
    .await;
    let trust_tls = start(
        "TLS, trust",
        Cluster::builder()
            .tls(&certs)
            .hba(format!("host all all {TCP} trust")),
    )
    .await;
    let scram_plain = start(
        "no TLS, SCRAM",
        Cluster::builder().hba(format!("host all all {TCP} scram-sha-256")),
    )
    .await;
    let ca = certs.ca().display().to_string();
    let mut cells = Vec::new();
    for server in [&scram_tls, &trust_tls, &scram_plain] {
        for (mode, binding) in [
            ("verify-full", "require"),
            ("require", "require"),
            ("prefer", "require"),
            ("disable", "require"),
            ("verify-full", "prefer"),
            ("verify-full", "disable"),
        ] {
            let url = format!(
                "{}?sslmode={mode}&sslrootcert={ca}&channel_binding={binding}",
                server.cluster.url()
            );
            cells.push(Cell {
                name: format!(
                    "{} / sslmode={mode} / channel_binding={binding}",
                    server.name
                ),
                libpq: libpq(&url, &[], home.path()),
                rampart: rampart(&url, &[]).await,
            });
        }
    }
    print_and_check(
        "channel binding (server / sslmode / channel_binding)",
        &cells,
    );
    assert_eq!(
        find(
            &cells,
            "TLS, SCRAM / sslmode=verify-full / channel_binding=require"
        ),
        &Outcome::Tls
    );
    assert_fails_with(
        &cells,
        "TLS, trust / sslmode=verify-full / channel_binding=require",
        "channel binding",
    );
    // rampart refuses this one when the configuration is built; libpq when it authenticates.
    assert_fails_with(
        &cells,
        "TLS, SCRAM / sslmode=disable / channel_binding=require",
        "ConfigError",
    );
}

#[tokio::test]
async fn pgssl_variables_agree_with_libpq() {
    let certs = TestCerts::generate().unwrap();
    let home = tempfile::tempdir().unwrap();
    let server = start(
        "client cert required",
        Cluster::builder().tls(&certs).hba(format!(
            "hostssl all all {TCP} scram-sha-256 clientcert=verify-full"
        )),
    )
    .await;
    let path = |p: PathBuf| p.display().to_string();
    let full = || {
        vec![
            ("PGSSLMODE", "verify-full".to_owned()),
            ("PGSSLROOTCERT", path(certs.ca())),
            ("PGSSLCERT", path(certs.client_cert())),
            ("PGSSLKEY", path(certs.client_key())),
        ]
    };
    let without = |name: &str| {
        full()
            .into_iter()
            .filter(|(k, _)| *k != name)
            .collect::<Vec<_>>()
    };
    let with = |name: &'static str, value: String| {
        let mut env = without(name);
        env.push((name, value));
        env
    };
    let base = server.cluster.url();
    let cases: Vec<(&str, String, Env)> = vec![
        ("all four variables", base.clone(), full()),
        (
            "PGSSLMODE=disable",
            base.clone(),
            with("PGSSLMODE", "disable".into()),
        ),
        (
            "PGSSLMODE=disable, URL sslmode=verify-full",
            format!("{base}?sslmode=verify-full"),
            with("PGSSLMODE", "disable".into()),
        ),
        (
            "PGSSLROOTCERT=other CA",
            base.clone(),
            with("PGSSLROOTCERT", path(certs.other_ca())),
        ),
        (
            "PGSSLROOTCERT=other CA, URL sslrootcert=CA",
            format!("{base}?sslrootcert={}", certs.ca().display()),
            with("PGSSLROOTCERT", path(certs.other_ca())),
        ),
        ("no PGSSLCERT/PGSSLKEY", base.clone(), {
            let mut env = without("PGSSLCERT");
            env.retain(|(k, _)| *k != "PGSSLKEY");
            env
        }),
        ("PGSSLMODE=require without PGSSLROOTCERT", base.clone(), {
            let mut env = with("PGSSLMODE", "require".into());
            env.retain(|(k, _)| *k != "PGSSLROOTCERT");
            env
        }),
    ];
    let mut cells = Vec::new();
    for (name, url, env) in cases {
        cells.push(Cell {
            name: name.to_owned(),
            libpq: libpq(&url, &env, home.path()),
            rampart: rampart(&url, &env).await,
        });
    }
    print_and_check("PGSSL* variables (client cert required server)", &cells);
    assert_eq!(find(&cells, "all four variables"), &Outcome::Tls);
}

#[tokio::test]
async fn direct_negotiation_against_a_server_older_than_17_fails_cleanly() {
    let certs = TestCerts::generate().unwrap();
    let server = start(
        "TLS",
        Cluster::builder()
            .tls(&certs)
            .hba(format!("host all all {TCP} scram-sha-256")),
    )
    .await;
    // psql 15 does not know `sslnegotiation`, so rampart is on its own here: the local server is 15,
    // which reads a TLS ClientHello as a malformed startup packet and hangs up.
    let url = format!(
        "{}?sslmode=verify-full&sslrootcert={}&sslnegotiation=direct",
        server.cluster.url(),
        certs.ca().display()
    );
    let outcome = rampart(&url, &[]).await;
    println!(
        "sslnegotiation=direct against PostgreSQL 15: {}",
        outcome.short()
    );
    match outcome {
        Outcome::Fail(why) => assert!(why.contains("TLS"), "{why}"),
        other => panic!("a direct TLS handshake with PostgreSQL 15 succeeded: {other:?}"),
    }
}

#[tokio::test]
async fn a_query_abandoned_over_verified_tls_is_cancelled_over_the_same_tls() {
    let certs = TestCerts::generate().unwrap();
    let server = start(
        "TLS required",
        Cluster::builder()
            .tls(&certs)
            .hba(format!("hostssl all all {TCP} scram-sha-256")),
    )
    .await;
    // Only our CA verifies this server, so a cancel request sent with other settings (the public
    // roots, or plain text where TLS is required) would not reach it or not be sent at all.
    let url = format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        server.cluster.url(),
        certs.ca().display()
    );
    let db = PgService::new(
        Pool::new(PgConfig::from_url(&url).unwrap(), PoolConfig::default()).unwrap(),
    );
    let admin = PgService::new(
        Pool::new(PgConfig::from_url(&url).unwrap(), PoolConfig::default()).unwrap(),
    );
    let sleeping = "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(60)%' AND state = 'active'";
    let count = || async {
        let rows = admin.clone().oneshot(Query::read(sleeping)).await.unwrap();
        rows.first().unwrap().get::<_, i64>(0)
    };
    let bound = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut query = Box::pin(db.clone().oneshot(Query::read("SELECT pg_sleep(60)")));
    loop {
        tokio::select! {
            _ = &mut query => panic!("pg_sleep(60) returned"),
            n = count() => if n == 1 { break },
        }
        assert!(
            tokio::time::Instant::now() < bound,
            "the query never started"
        );
    }
    drop(query);
    while count().await != 0 {
        assert!(
            tokio::time::Instant::now() < bound,
            "the abandoned query still runs: the cancel request did not reach the server"
        );
        tokio::task::yield_now().await;
    }
    assert_eq!(db.pool().stats().discarded, 1);
}

// Two workers: psql blocks one while the proxy, on the other, forwards its links.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_attempts_are_made_when_libpq_makes_them() {
    // libpq's `prefer` tries plain text again only after a failed handshake or a server error on a TLS
    // link, and `allow` tries TLS after a server error on a plain one: counted in links at a proxy.
    let certs = TestCerts::generate().unwrap();
    let home = tempfile::tempdir().unwrap();
    let scram = |kind: &str| format!("{kind} all all {TCP} scram-sha-256");
    let plain = start("no TLS", Cluster::builder().hba(scram("host"))).await;
    let tls = start("TLS", Cluster::builder().tls(&certs).hba(scram("host"))).await;
    let tls_only = start(
        "TLS required",
        Cluster::builder().tls(&certs).hba(scram("hostssl")),
    )
    .await;
    let plain_only = start(
        "plain required",
        Cluster::builder().tls(&certs).hba(scram("hostnossl")),
    )
    .await;
    let ca = certs.ca().display().to_string();
    let other = certs.other_ca().display().to_string();
    let cases = [
        (
            &plain,
            "prefer, wrong password",
            "sslmode=prefer".to_owned(),
            true,
        ),
        (
            &tls,
            "prefer, wrong password",
            format!("sslmode=prefer&sslrootcert={ca}"),
            true,
        ),
        (
            &tls,
            "prefer, right CA",
            format!("sslmode=prefer&sslrootcert={ca}"),
            false,
        ),
        (
            &tls,
            "prefer, wrong CA",
            format!("sslmode=prefer&sslrootcert={other}"),
            false,
        ),
        (&plain_only, "prefer", "sslmode=prefer".to_owned(), false),
        (&tls_only, "allow", "sslmode=allow".to_owned(), false),
        (
            &tls_only,
            "allow, wrong password",
            "sslmode=allow".to_owned(),
            true,
        ),
        (
            &plain,
            "allow, wrong password",
            "sslmode=allow".to_owned(),
            true,
        ),
    ];
    let mut lines = Vec::new();
    for (server, name, query, wrong_password) in cases {
        let proxy = FaultProxy::start(server.cluster.addr()).await.unwrap();
        let mut url = format!("{}?{query}", server.cluster.url_for(proxy.addr()));
        if wrong_password {
            url = url.replace(PASSWORD, "wrong-pw");
        }
        let before = proxy.stats().links_accepted;
        let libpq = libpq(&url, &[], home.path());
        let libpq_links = proxy.stats().links_accepted - before;
        let ours = rampart(&url, &[]).await;
        let our_links = proxy.stats().links_accepted - before - libpq_links;
        lines.push((
            format!("{} / {name}", server.name),
            libpq,
            libpq_links,
            ours,
            our_links,
        ));
    }
    println!("\nattempts (cell | libpq outcome, links | rampart outcome, links)");
    for (name, libpq, libpq_links, ours, our_links) in &lines {
        println!(
            "{name:<40} | {:<5} {libpq_links} | {:<5} {our_links}",
            if let Outcome::Fail(_) = libpq {
                "fail"
            } else if *libpq == Outcome::Tls {
                "tls"
            } else {
                "plain"
            },
            if let Outcome::Fail(_) = ours {
                "fail"
            } else if *ours == Outcome::Tls {
                "tls"
            } else {
                "plain"
            },
        );
    }
    for (name, libpq, libpq_links, ours, our_links) in &lines {
        assert!(
            libpq.same_as(ours),
            "{name}: libpq {libpq:?}, rampart {ours:?}"
        );
        assert_eq!(libpq_links, our_links, "{name}: links opened");
    }
}

#[tokio::test]
async fn certificate_failures_are_neither_retried_nor_counted_by_the_breaker() {
    let certs = TestCerts::generate().unwrap();
    let server = start(
        "TLS",
        Cluster::builder()
            .tls(&certs)
            .hba(format!("host all all {TCP} scram-sha-256")),
    )
    .await;
    for multiplexed in [false, true] {
        let proxy = FaultProxy::start(server.cluster.addr()).await.unwrap();
        let url = format!(
            "{}?sslmode=verify-full&sslrootcert={}",
            server.cluster.url_for(proxy.addr()),
            certs.other_ca().display()
        );
        let mut stack = Stack::server(&url);
        if multiplexed {
            stack = stack.multiplex(MuxConfig::default());
        }
        let db = stack.build().unwrap();
        let requests = 5;
        for _ in 0..requests {
            let err = db.run(Query::read("SELECT 1")).await.unwrap_err();
            let shown = err.to_string();
            assert_eq!(err.classification(), Classification::Permanent, "{shown}");
            assert!(shown.contains("unknown issuer"), "{shown}");
            assert!(!shown.contains(PASSWORD), "{shown}");
        }
        assert_eq!(db.retries(), 0, "multiplexed: {multiplexed}");
        let breaker = db.breaker().expect("the stack has a breaker").metrics();
        assert_eq!(
            breaker.failures, 0,
            "multiplexed: {multiplexed}: {breaker:?}"
        );
        if !multiplexed {
            // One link per request: nothing was tried twice.
            assert_eq!(proxy.stats().links_accepted, requests, "links");
        }
    }
}

#[tokio::test]
async fn a_client_key_others_may_read_is_refused_as_libpq_does() {
    use std::os::unix::fs::PermissionsExt;
    let certs = TestCerts::generate().unwrap();
    let home = tempfile::tempdir().unwrap();
    let server = start(
        "client cert required",
        Cluster::builder().tls(&certs).hba(format!(
            "hostssl all all {TCP} scram-sha-256 clientcert=verify-full"
        )),
    )
    .await;
    let mut cells = Vec::new();
    for mode in [0o600, 0o640, 0o644] {
        let key = home.path().join(format!("client-{mode:o}.key"));
        std::fs::copy(certs.client_key(), &key).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
        let url = format!(
            "{}?sslmode=verify-full&sslrootcert={}&sslcert={}&sslkey={}",
            server.cluster.url(),
            certs.ca().display(),
            certs.client_cert().display(),
            key.display()
        );
        cells.push(Cell {
            name: format!("sslkey mode {mode:o}"),
            libpq: libpq(&url, &[], home.path()),
            rampart: rampart(&url, &[]).await,
        });
    }
    print_and_check(
        "client key permissions (the key's owner is this process's user)",
        &cells,
    );
    assert_eq!(find(&cells, "sslkey mode 600"), &Outcome::Tls);
    assert_fails_with(&cells, "sslkey mode 644", "group or world");
}

#[tokio::test]
async fn a_named_file_that_is_missing_is_an_error_where_libpq_goes_on_without_it() {
    // The one place rampart is stricter than libpq on purpose: libpq skips a missing `sslcert`, and a
    // missing `sslrootcert` under `prefer`/`require` (so a typo silently turns verification off).
    let certs = TestCerts::generate().unwrap();
    let home = tempfile::tempdir().unwrap();
    let server = start(
        "TLS",
        Cluster::builder()
            .tls(&certs)
            .hba(format!("host all all {TCP} scram-sha-256")),
    )
    .await;
    let base = server.cluster.url();
    let key = certs.client_key().display().to_string();
    let cases = [
        (
            "require, sslrootcert missing",
            format!("{base}?sslmode=require&sslrootcert=/nonexistent/root.crt"),
            "sslrootcert",
        ),
        (
            "require, sslcert missing",
            format!("{base}?sslmode=require&sslcert=/nonexistent/client.crt&sslkey={key}"),
            "sslcert",
        ),
    ];
    println!("\ndeliberate differences (cell | libpq | rampart)");
    for (name, url, field) in cases {
        let libpq = libpq(&url, &[], home.path());
        let ours = rampart(&url, &[]).await;
        println!("{name:<40} | {} | {}", libpq.short(), ours.short());
        assert_eq!(libpq, Outcome::Tls, "{name}: libpq changed its mind");
        match ours {
            Outcome::Fail(why) => assert!(why.contains(&format!("invalid `{field}`")), "{why}"),
            other => panic!("{name}: {other:?}"),
        }
    }
}
