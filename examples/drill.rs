//! The resilience drill: a realistic workload through real faults, through rampart and through a bare
//! tokio-postgres client, reported side by side.
//!
//! ```text
//! cargo run --release --example drill                       # a throwaway local cluster, about a minute
//! cargo run --release --example drill -- --duration 30s --faults idle-kill,black-hole
//! cargo run --release --example drill -- --json             # the report as one JSON document
//! cargo run --release --example drill -- --failover         # and a crash failover to a promoted standby
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo run --release --example drill
//! ```
//!
//! The workload: workers signing users up (inserts with idempotency keys), reading, and moving money
//! between accounts in transactions. On a schedule, the in-process fault proxy between the workers and
//! the server makes the faults of `shared/SCENARIOS.md`: links killed silently after an idle spell (a
//! serverless compute suspending), a server restart, a network black hole, every link reset, and refused
//! connects. The same schedule then runs through a bare tokio-postgres client, the way services start out.
//!
//! At the end the drill counts rows: every write a caller was told succeeded must be in the table exactly
//! once, and the money in the accounts must add up.
//!
//! With `DATABASE_URL` (or `--database-url`) it drills your own server through the proxy: network faults
//! only (it never stops your server), loopback addresses only, in tables of its own that it drops after.
//! The URL takes libpq's TLS keywords (`sslmode`, `sslrootcert`, `sslcert`, `sslkey`): rampart's links
//! through the proxy and the drill's own setup connection use them; the bare client has no TLS and
//! connects in plain text.
//!
//! With `--failover` the drill then runs a failover: a throwaway primary and a streaming standby named in
//! one URL with `target_session_attrs=read-write`, the workers writing (`INSERT ... RETURNING`) and
//! reading; a third of the way in the primary crashes (immediate shutdown) and a second later the
//! standby is promoted. It reports failed requests by kind and the time from the promotion to the first
//! write on the new primary, for rampart and for a bare client that reconnects through the same URL.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use rampart::testing::{Cluster, Fault, FaultProxy};
use rampart::{Db, MuxConfig, PgConfig, Pool, PoolConfig, Query, RootCert, Stack};
use serde::Serialize;
use tokio_postgres::{Client, NoTls};

const USAGE: &str = "\
usage: drill [--duration 60s] [--faults LIST] [--concurrency N] [--multiplex] [--failover] [--database-url URL] [--json] [--log-format pretty|json]

  --duration       how long each stack runs (default 60s; accepts 90s, 2m, 500ms)
  --faults         comma-separated, in order: idle-kill, idle-drop, restart, black-hole, reset, refuse, slow
                   (default: all;
                   restart needs the throwaway cluster, so it is left out with --database-url)
  --concurrency    concurrent workers (default 8)
  --multiplex      run rampart's statements pipelined over one shared connection instead of the pool
                   (transfers still use the pool)
  --failover       then crash a primary and promote its standby under the workload (throwaway clusters
                   only; at most 10 s per stack)
  --database-url   drill this server instead of a throwaway cluster (loopback only; also DATABASE_URL)
  --json           print the report as one JSON document
  --log-format     also print rampart's logs to stderr, as text or JSON (default: no logs)";

/// A request the drill gives up on for both stacks; rampart's own deadline is shorter.
const HUNG_AFTER: Duration = Duration::from_secs(10);
/// Money in each account at the start.
const OPENING_BALANCE: i64 = 1_000;
const ACCOUNTS: i32 = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FaultKind {
    IdleKill,
    IdleDrop,
    Restart,
    BlackHole,
    Reset,
    Refuse,
    Slow,
}

impl FaultKind {
    const ALL: [FaultKind; 7] = [
        FaultKind::IdleKill,
        FaultKind::IdleDrop,
        FaultKind::Restart,
        FaultKind::BlackHole,
        FaultKind::Reset,
        FaultKind::Refuse,
        FaultKind::Slow,
    ];

    fn parse(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown fault `{s}`; choose from idle-kill, idle-drop, restart, black-hole, reset, refuse, slow"
                )
            })
    }

    fn name(self) -> &'static str {
        match self {
            FaultKind::IdleKill => "idle-kill",
            FaultKind::IdleDrop => "idle-drop",
            FaultKind::Restart => "restart",
            FaultKind::BlackHole => "black-hole",
            FaultKind::Reset => "reset",
            FaultKind::Refuse => "refuse",
            FaultKind::Slow => "slow",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            FaultKind::IdleKill => {
                "workers idle 1.2 s, then every link is killed silently (a serverless suspend)"
            }
            FaultKind::IdleDrop => {
                "workers idle 1.2 s, then every link is dropped silently: writes vanish, nothing answers (a front end that forgot the client)"
            }
            FaultKind::Restart => "the server restarts (fast shutdown) under load",
            FaultKind::BlackHole => "for 3 s the network drops everything, with no reset",
            FaultKind::Reset => "every open link is reset mid-workload",
            FaultKind::Refuse => "for 2 s nothing listens: links reset, connects refused",
            FaultKind::Slow => {
                "for 4 s another session holds a lock on the sign-ups table: statements slower than the attempt timeout"
            }
        }
    }
}

#[derive(Debug)]
struct Options {
    duration: Duration,
    faults: Vec<FaultKind>,
    concurrency: usize,
    database_url: Option<String>,
    json: bool,
    log_format: Option<String>,
    multiplex: bool,
    failover: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("bad duration `{s}`: use a number with ms, s or m, like 45s");
    let (number, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map(|i| s.split_at(i))
        .unwrap_or((s, "s"));
    let n: u64 = number.parse().map_err(|_| bad())?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        _ => return Err(bad()),
    };
    if d < Duration::from_secs(5) {
        return Err(format!(
            "--duration {s} is too short to fit the faults: use at least 5s"
        ));
    }
    Ok(d)
}

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Options, String> {
    let mut options = Options {
        duration: Duration::from_secs(60),
        faults: Vec::new(),
        concurrency: 8,
        database_url: std::env::var("DATABASE_URL").ok().filter(|s| !s.is_empty()),
        json: false,
        log_format: None,
        multiplex: false,
        failover: false,
    };
    let mut faults_given = false;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) => (f.to_owned(), Some(v.to_owned())),
            None => (arg.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--duration" => options.duration = parse_duration(&value()?)?,
            "--faults" => {
                faults_given = true;
                options.faults = value()?
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(FaultKind::parse)
                    .collect::<Result<_, _>>()?;
            }
            "--concurrency" => {
                let v = value()?;
                options.concurrency = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=256).contains(n))
                    .ok_or_else(|| format!("--concurrency {v}: use a number from 1 to 256"))?;
            }
            "--database-url" => options.database_url = Some(value()?),
            "--json" => options.json = true,
            "--multiplex" => options.multiplex = true,
            "--failover" => options.failover = true,
            "--log-format" => {
                let v = value()?;
                if v != "pretty" && v != "json" {
                    return Err(format!("--log-format {v}: use pretty or json"));
                }
                options.log_format = Some(v);
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    if options.failover && options.database_url.is_some() {
        return Err(
            "--failover crashes and promotes servers of its own: it needs the throwaway clusters, not --database-url"
                .into(),
        );
    }
    if !faults_given {
        options.faults = FaultKind::ALL.to_vec();
        if options.database_url.is_some() {
            options.faults.retain(|f| *f != FaultKind::Restart);
        }
    }
    if options.database_url.is_some() && options.faults.contains(&FaultKind::Restart) {
        return Err("the restart fault needs the throwaway cluster: it never stops a server you point it at".into());
    }
    Ok(options)
}

/// The target's address, which must be on this machine: the drill floods and breaks links.
fn loopback_target(url: &str) -> Result<SocketAddr, String> {
    let config =
        PgConfig::from_url(url).map_err(|e| format!("the database URL is not valid: {e}"))?;
    let config = config.pg_config();
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => return Err("the database URL must name a TCP host".into()),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("cannot resolve {host}"))?;
    if !addr.ip().is_loopback() {
        return Err(format!(
            "the drill injects faults and targets loopback addresses only; {host} is not one"
        ));
    }
    Ok(addr)
}

/// The same connection settings (user, password, database), pointed at the proxy, as key=value strings:
/// one with the URL's TLS settings (for rampart), one in plain text (for the bare client).
fn via_proxy(url: &str, proxy: SocketAddr) -> Result<(String, String), String> {
    let pg = PgConfig::from_url(url).map_err(|e| format!("the database URL is not valid: {e}"))?;
    let config = pg.pg_config();
    let quote = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
    let user = config.get_user().unwrap_or("postgres");
    let db = config.get_dbname().unwrap_or(user);
    let mut base = format!(
        "host={} port={} user={} dbname={}",
        proxy.ip(),
        proxy.port(),
        quote(user),
        quote(db)
    );
    if let Some(pw) = config.get_password() {
        base.push_str(&format!(
            " password={}",
            quote(&String::from_utf8_lossy(pw))
        ));
    }
    let mut tls = format!("{base} sslmode={}", pg.tls_mode().as_str());
    match pg.root_cert() {
        Some(RootCert::File(path)) => {
            tls.push_str(&format!(" sslrootcert={}", quote(&path.to_string_lossy())))
        }
        Some(RootCert::System) => tls.push_str(" sslrootcert=system"),
        _ => {}
    }
    if let Some((cert, key)) = pg.client_cert() {
        tls.push_str(&format!(
            " sslcert={} sslkey={}",
            quote(&cert.to_string_lossy()),
            quote(&key.to_string_lossy())
        ));
    }
    Ok((tls, format!("{base} sslmode=disable")))
}

/// A connection straight to the server (not through the proxy) with the URL's own TLS settings.
async fn direct_client(url: &str) -> Result<rampart::postgres::Client, String> {
    let pg = PgConfig::from_url(url).map_err(|e| format!("the database URL is not valid: {e}"))?;
    let pool = Pool::new(pg, PoolConfig::default()).map_err(|e| e.to_string())?;
    pool.dedicated_client()
        .await
        .map_err(|e| format!("cannot reach the database: {}", with_causes(&e)))
}

// ---------------------------------------------------------------------------------------------------------
// Measuring

#[derive(Debug, Default, Clone)]
struct PhaseStats {
    requests: u64,
    succeeded: u64,
    failures: BTreeMap<String, u64>,
    latencies_us: Vec<u64>,
}

impl PhaseStats {
    fn failed(&self) -> u64 {
        self.failures.values().sum()
    }

    fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let mut sorted = self.latencies_us.clone();
        sorted.sort_unstable();
        let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
        sorted[i] as f64 / 1000.0
    }

    fn merge(&mut self, other: &PhaseStats) {
        self.requests += other.requests;
        self.succeeded += other.succeeded;
        for (k, v) in &other.failures {
            *self.failures.entry(k.clone()).or_default() += v;
        }
        self.latencies_us.extend_from_slice(&other.latencies_us);
    }
}

/// What one stack's run measured, shared by its workers.
#[derive(Default)]
struct Recorder {
    phase: Mutex<usize>,
    phases: Mutex<Vec<PhaseStats>>,
    ok: AtomicU64,
    failed: AtomicU64,
    acknowledged: Mutex<Vec<String>>,
    paused: AtomicBool,
    /// The stack's count of lost replies looked up, taken as each phase starts and once at the end.
    resolved: Mutex<Vec<rampart::Resolved>>,
}

impl Recorder {
    fn record(&self, phase: usize, started: Instant, outcome: Result<(), String>) {
        let mut phases = self.phases.lock().unwrap();
        let stats = &mut phases[phase];
        stats.requests += 1;
        stats
            .latencies_us
            .push(started.elapsed().as_micros() as u64);
        match outcome {
            Ok(()) => {
                stats.succeeded += 1;
                self.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(class) => {
                *stats.failures.entry(class).or_default() += 1;
                self.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Lost replies of plain writes looked up on the server, by answer.
#[derive(Debug, Serialize, Clone, Copy, Default)]
struct ResolvedReport {
    committed: u64,
    not_applied: u64,
    unknown: u64,
}

impl ResolvedReport {
    fn of(r: rampart::Resolved) -> Self {
        Self {
            committed: r.committed,
            not_applied: r.not_applied,
            unknown: r.unknown,
        }
    }

    fn total(&self) -> u64 {
        self.committed + self.not_applied + self.unknown
    }

    fn add(&mut self, other: &ResolvedReport) {
        self.committed += other.committed;
        self.not_applied += other.not_applied;
        self.unknown += other.unknown;
    }

    fn describe(&self) -> String {
        format!(
            "{} committed, {} not applied, {} unknown",
            self.committed, self.not_applied, self.unknown
        )
    }
}

/// How many of `failures` said the outcome is unknown.
fn unknown_in(failures: &BTreeMap<String, u64>) -> u64 {
    failures
        .iter()
        .filter(|(k, _)| k.contains("outcome unknown"))
        .map(|(_, v)| v)
        .sum()
}

#[derive(Debug, Serialize)]
struct PhaseReport {
    phase: String,
    requests: u64,
    succeeded: u64,
    failed: u64,
    /// Failures that said the outcome is unknown.
    outcome_unknown: u64,
    /// Lost replies looked up during the phase (rampart only).
    resolved: Option<ResolvedReport>,
    failures: BTreeMap<String, u64>,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

#[derive(Debug, Serialize)]
struct StackReport {
    stack: &'static str,
    requests: u64,
    succeeded: u64,
    failed: u64,
    outcome_unknown: u64,
    resolved: Option<ResolvedReport>,
    hung: u64,
    lost: u64,
    duplicated: u64,
    balance_drift: i64,
    retries: Option<u64>,
    breaker_opened: Option<u64>,
    pool_rebuilt: Option<u64>,
    connections_opened: u64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    phases: Vec<PhaseReport>,
}

#[derive(Debug, Serialize)]
struct Report {
    duration_s: f64,
    concurrency: usize,
    /// Whether rampart ran its statements over a shared connection (`--multiplex`).
    multiplexed: bool,
    faults: Vec<&'static str>,
    #[serde(flatten)]
    rampart: StackReport,
    baseline: StackReport,
    /// The failover (`--failover`): rampart, then the bare client.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    failover: Vec<FailoverReport>,
}

// ---------------------------------------------------------------------------------------------------------
// The failover (--failover)

/// What one stack saw through a crash of the primary and the promotion of its standby.
#[derive(Debug, Default, Serialize)]
struct FailoverReport {
    stack: &'static str,
    reads_ok: u64,
    writes_ok: u64,
    /// Failed requests, by `read`/`write` and the failure's class.
    failed: BTreeMap<String, u64>,
    /// From the promotion (the standby leaving recovery) to the first write acknowledged by the new
    /// primary.
    first_write_on_new_primary_ms: Option<f64>,
}

#[derive(Default)]
struct FailoverTally {
    report: FailoverReport,
    first_on_new: Option<Instant>,
}

impl FailoverTally {
    fn read(&mut self, result: Result<(), String>) {
        match result {
            Ok(()) => self.report.reads_ok += 1,
            Err(class) => {
                *self
                    .report
                    .failed
                    .entry(format!("read {class}"))
                    .or_default() += 1
            }
        }
    }

    fn write(&mut self, result: Result<i32, String>, new_port: i32) {
        match result {
            Ok(port) => {
                self.report.writes_ok += 1;
                if port == new_port && self.first_on_new.is_none() {
                    self.first_on_new = Some(Instant::now());
                }
            }
            Err(class) => {
                *self
                    .report
                    .failed
                    .entry(format!("write {class}"))
                    .or_default() += 1
            }
        }
    }
}

const FAILOVER_TABLE: &str = "CREATE TABLE failover_drill (id bigserial PRIMARY KEY, worker int)";
const FAILOVER_WRITE: &str =
    "INSERT INTO failover_drill (worker) VALUES ($1) RETURNING inet_server_port()";
const FAILOVER_READ: &str = "SELECT count(*) FROM failover_drill WHERE worker = $1";

/// One stack's run through a failover: `rampart` through the ready-made stack, or a bare client.
async fn failover_run(
    stack: &'static str,
    options: &Options,
    bar: &ProgressBar,
) -> Result<FailoverReport, String> {
    let primary = Cluster::new().await.map_err(|e| e.to_string())?;
    direct_client(&primary.url())
        .await?
        .batch_execute(FAILOVER_TABLE)
        .await
        .map_err(|e| e.to_string())?;
    let standby = primary.standby().await.map_err(|e| e.to_string())?;
    let url = Cluster::url_of_all(&[&primary, &standby], "target_session_attrs=read-write");
    let new_port = i32::from(standby.port());
    let length = options.duration.min(Duration::from_secs(10));
    let tally = Arc::new(Mutex::new(FailoverTally::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let db = match stack {
        "rampart" => Some(Stack::server(&url).build().map_err(|e| e.to_string())?),
        _ => None,
    };
    let workers: Vec<_> = (0..options.concurrency as i32)
        .map(|worker| {
            let (tally, stop, db, url) = (tally.clone(), stop.clone(), db.clone(), url.clone());
            tokio::spawn(async move {
                let mut bare: Option<Client> = None;
                while !stop.load(Ordering::Relaxed) {
                    let (written, read) = match &db {
                        Some(db) => {
                            let class = |e: rampart::Error| {
                                if e.is_outcome_unknown() {
                                    "outcome unknown".to_owned()
                                } else {
                                    e.kind().as_str().to_owned()
                                }
                            };
                            let written = db
                                .run(Query::write(FAILOVER_WRITE).bind(worker))
                                .await
                                .and_then(|r| r.scalar::<i32>())
                                .map_err(class);
                            let read = db
                                .run(Query::read(FAILOVER_READ).bind(worker))
                                .await
                                .map(drop)
                                .map_err(class);
                            (written, read)
                        }
                        None => {
                            // What a service without rampart does: reconnect through the same URL after
                            // an error, and pass the error on.
                            if bare.as_ref().is_none_or(|c| c.is_closed()) {
                                bare = match tokio_postgres::connect(&url, NoTls).await {
                                    Ok((client, connection)) => {
                                        tokio::spawn(connection);
                                        Some(client)
                                    }
                                    Err(_) => None,
                                };
                            }
                            match &bare {
                                None => {
                                    tokio::time::sleep(Duration::from_millis(50)).await;
                                    (Err("connect".to_owned()), Err("connect".to_owned()))
                                }
                                Some(client) => {
                                    let class = |e: tokio_postgres::Error| match e.code() {
                                        Some(code) => format!("SQLSTATE {}", code.code()),
                                        None => "connection lost".to_owned(),
                                    };
                                    let written = client
                                        .query_one(FAILOVER_WRITE, &[&worker])
                                        .await
                                        .map(|row| row.get::<_, i32>(0))
                                        .map_err(class);
                                    let read = client
                                        .query_one(FAILOVER_READ, &[&worker])
                                        .await
                                        .map(drop)
                                        .map_err(class);
                                    if written.is_err() {
                                        bare = None;
                                    }
                                    (written, read)
                                }
                            }
                        }
                    };
                    let mut t = tally.lock().unwrap();
                    t.write(written, new_port);
                    t.read(read);
                }
            })
        })
        .collect();
    bar.set_message(format!("{stack}: failover"));
    let started = Instant::now();
    let tick = |bar: &ProgressBar| bar.set_position(started.elapsed().as_millis() as u64);
    tokio::time::sleep(length / 3).await;
    tick(bar);
    primary.kill().map_err(|e| e.to_string())?;
    bar.set_message(format!("{stack}: primary crashed"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    standby.promote().await.map_err(|e| e.to_string())?;
    // Within about a millisecond of the standby leaving recovery.
    let promoted = Instant::now();
    bar.set_message(format!("{stack}: standby promoted"));
    while started.elapsed() < length {
        tokio::time::sleep(Duration::from_millis(100)).await;
        tick(bar);
    }
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        let _ = worker.await;
    }
    bar.finish_and_clear();
    let mut tally = std::mem::take(&mut *tally.lock().unwrap());
    tally.report.stack = stack;
    tally.report.first_write_on_new_primary_ms = tally
        .first_on_new
        .map(|at| at.saturating_duration_since(promoted).as_secs_f64() * 1000.0);
    Ok(tally.report)
}

fn render_failover(reports: &[FailoverReport]) -> String {
    let mut out = String::from(
        "
failover: the primary crashed a third of the way in, its standby promoted 1 s later (one URL, \
         target_session_attrs=read-write)\n",
    );
    for r in reports {
        let failed = if r.failed.is_empty() {
            "none".to_owned()
        } else {
            r.failed
                .iter()
                .map(|(k, n)| format!("{n} {k}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let first = r
            .first_write_on_new_primary_ms
            .map_or("never".to_owned(), |ms| {
                format!("{ms:.1} ms after the promotion")
            });
        let _ = writeln!(
            out,
            "  {:<8} {} reads ok, {} writes ok; failed: {failed}; first write on the new primary: {first}",
            r.stack, r.reads_ok, r.writes_ok
        );
    }
    out
}

// ---------------------------------------------------------------------------------------------------------
// The two stacks

/// What a worker does, through one stack or the other.
trait Target: Send + Sync + 'static {
    /// One operation; `Err` carries the failure's class.
    fn op(
        &self,
        worker: usize,
        n: u64,
        acked: &Mutex<Vec<String>>,
    ) -> impl std::future::Future<Output = Result<(), String>> + Send;
}

struct RampartTarget {
    db: Db,
    table: String,
}

impl Target for RampartTarget {
    async fn op(&self, worker: usize, n: u64, acked: &Mutex<Vec<String>>) -> Result<(), String> {
        let class = |e: rampart::Error| {
            if e.is_outcome_unknown() {
                format!("{} (outcome unknown)", e.kind().as_str())
            } else {
                e.kind().as_str().to_owned()
            }
        };
        match n % 10 {
            3..=5 => {
                // A plain write: no key, never replayed blindly; a lost reply is looked up.
                let tag = format!("w{worker}-{n}");
                let sql = format!("INSERT INTO {}_events (tag) VALUES ($1)", self.table);
                self.db
                    .run(Query::write(sql).bind(tag.clone()))
                    .await
                    .map_err(class)?;
                acked.lock().unwrap().push(format!("ev:{tag}"));
                Ok(())
            }
            0..=2 => {
                let key = format!("w{worker}-{n}");
                let sql = format!(
                    "INSERT INTO {}_signups (request_id, email) VALUES ($1, $2) ON CONFLICT (request_id) DO NOTHING",
                    self.table
                );
                let query = Query::write(sql)
                    .bind(key.clone())
                    .bind(format!("{key}@example.com"))
                    .idempotency_key(key.clone());
                self.db.run(query).await.map_err(class)?;
                acked.lock().unwrap().push(key);
                Ok(())
            }
            6..=8 => {
                let sql = format!("SELECT count(*) FROM {}_signups", self.table);
                self.db.run(Query::read(sql)).await.map(drop).map_err(class)
            }
            _ => {
                let (from, to) = accounts_for(worker, n);
                let table = self.table.clone();
                self.db
                    .transactor()
                    .run(|tx| {
                        let table = table.clone();
                        Box::pin(async move {
                            tx.execute(&format!("UPDATE {table}_accounts SET balance = balance - 1 WHERE id = $1"), &[&from]).await?;
                            tx.execute(&format!("UPDATE {table}_accounts SET balance = balance + 1 WHERE id = $1"), &[&to]).await?;
                            Ok(())
                        })
                    })
                    .await
                    .map_err(class)
            }
        }
    }
}

/// A service as it is often written first: a client per worker, reconnected after it is seen closed,
/// no retry, no timeout of its own.
struct BareTarget {
    url: String,
    table: String,
    clients: Vec<tokio::sync::Mutex<Option<Client>>>,
    connects: AtomicU64,
}

fn bare_class(e: &tokio_postgres::Error) -> String {
    if e.is_closed() {
        return "connection closed".into();
    }
    if let Some(code) = e.code() {
        return format!("SQLSTATE {}", code.code());
    }
    let debug = format!("{e:?}");
    if debug.contains("ConnectionRefused") {
        "connection refused".into()
    } else if debug.contains("ConnectionReset")
        || debug.contains("BrokenPipe")
        || debug.contains("UnexpectedEof")
    {
        "connection reset".into()
    } else {
        "I/O error".into()
    }
}

impl Target for BareTarget {
    async fn op(&self, worker: usize, n: u64, acked: &Mutex<Vec<String>>) -> Result<(), String> {
        let mut slot = self.clients[worker].lock().await;
        if slot.as_ref().is_none_or(Client::is_closed) {
            let (client, connection) = tokio_postgres::connect(&self.url, NoTls)
                .await
                .map_err(|e| bare_class(&e))?;
            tokio::spawn(connection);
            self.connects.fetch_add(1, Ordering::Relaxed);
            *slot = Some(client);
        }
        let client = slot.as_mut().expect("connected above");
        let result = match n % 10 {
            3..=5 => {
                let tag = format!("w{worker}-{n}");
                let sql = format!("INSERT INTO {}_events (tag) VALUES ($1)", self.table);
                let r = client.execute(&sql, &[&tag]).await.map(drop);
                if r.is_ok() {
                    acked.lock().unwrap().push(format!("ev:{tag}"));
                }
                r
            }
            0..=2 => {
                let key = format!("w{worker}-{n}");
                let sql = format!(
                    "INSERT INTO {}_signups (request_id, email) VALUES ($1, $2) ON CONFLICT (request_id) DO NOTHING",
                    self.table
                );
                let r = client
                    .execute(&sql, &[&key, &format!("{key}@example.com")])
                    .await
                    .map(drop);
                if r.is_ok() {
                    acked.lock().unwrap().push(key);
                }
                r
            }
            6..=8 => client
                .query(&format!("SELECT count(*) FROM {}_signups", self.table), &[])
                .await
                .map(drop),
            _ => {
                let (from, to) = accounts_for(worker, n);
                async {
                    let tx = client.transaction().await?;
                    tx.execute(
                        &format!(
                            "UPDATE {}_accounts SET balance = balance - 1 WHERE id = $1",
                            self.table
                        ),
                        &[&from],
                    )
                    .await?;
                    tx.execute(
                        &format!(
                            "UPDATE {}_accounts SET balance = balance + 1 WHERE id = $1",
                            self.table
                        ),
                        &[&to],
                    )
                    .await?;
                    tx.commit().await
                }
                .await
            }
        };
        result.map_err(|e| bare_class(&e))
    }
}

/// An error and its causes, one after the other ("error connecting to server: Connection refused ...").
fn with_causes(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn accounts_for(worker: usize, n: u64) -> (i32, i32) {
    let from = ((worker as u64 + n) % ACCOUNTS as u64) as i32 + 1;
    let to = ((worker as u64 + 3 * n + 1) % ACCOUNTS as u64) as i32 + 1;
    if from == to {
        (from, from % ACCOUNTS + 1)
    } else {
        (from, to)
    }
}

// ---------------------------------------------------------------------------------------------------------
// Running a schedule

struct Drill {
    options: Options,
    proxy: FaultProxy,
    cluster: Option<Cluster>,
    direct_url: String,
    proxied_url: String,
    bare_url: String,
    phase_names: Vec<String>,
}

impl Drill {
    fn slot(&self) -> Duration {
        self.options.duration / (self.options.faults.len() as u32 + 2)
    }

    async fn setup_tables(&self, table: &str) -> Result<(), String> {
        let conn = direct_client(&self.direct_url).await?;
        conn.batch_execute(&format!(
                "DROP TABLE IF EXISTS {table}_signups, {table}_accounts, {table}_events;
                 CREATE TABLE {table}_signups (id bigserial PRIMARY KEY, request_id text UNIQUE NOT NULL, email text NOT NULL);
                 CREATE TABLE {table}_events (id bigserial PRIMARY KEY, tag text NOT NULL);
                 CREATE TABLE {table}_accounts (id int PRIMARY KEY, balance bigint NOT NULL);
                 INSERT INTO {table}_accounts SELECT g, {OPENING_BALANCE} FROM generate_series(1, {ACCOUNTS}) g;"
            ))
            .await
            .map_err(|e| format!("cannot create the drill's tables: {e}"))
    }

    /// Lost, duplicated, and how far the money is off, counted on the server. `acknowledged` holds the
    /// sign-ups' request ids and the plain writes' tags (prefixed `ev:`).
    async fn audit(&self, table: &str, acknowledged: &[String]) -> Result<(u64, u64, i64), String> {
        let client = direct_client(&self.direct_url).await?;
        let (events, signups): (Vec<String>, Vec<String>) = acknowledged
            .iter()
            .cloned()
            .partition(|a| a.starts_with("ev:"));
        let events: Vec<String> = events.into_iter().map(|e| e[3..].to_owned()).collect();
        let number = |sql: String, keys: Vec<String>| {
            let client = &client;
            async move {
                let row = if keys.is_empty() && !sql.contains("$1") {
                    client.query_one(&sql, &[]).await
                } else {
                    client.query_one(&sql, &[&keys]).await
                };
                row.map(|r| r.get::<_, i64>(0)).map_err(|e| e.to_string())
            }
        };
        let present = number(
            format!(
                "SELECT count(DISTINCT request_id) FROM {table}_signups WHERE request_id = ANY($1)"
            ),
            signups.clone(),
        )
        .await?;
        let present_events = number(
            format!("SELECT count(DISTINCT tag) FROM {table}_events WHERE tag = ANY($1)"),
            events.clone(),
        )
        .await?;
        let duplicated = number(
            format!(
                "SELECT (SELECT count(*) - count(DISTINCT request_id) FROM {table}_signups) \
                 + (SELECT count(*) - count(DISTINCT tag) FROM {table}_events)"
            ),
            Vec::new(),
        )
        .await?;
        let total = number(
            format!("SELECT sum(balance)::bigint FROM {table}_accounts"),
            Vec::new(),
        )
        .await?;
        if self.options.database_url.is_some() {
            let _ = client
                .batch_execute(&format!(
                    "DROP TABLE IF EXISTS {table}_signups, {table}_accounts, {table}_events"
                ))
                .await;
        }
        Ok((
            (signups.len() as u64 - present as u64) + (events.len() as u64 - present_events as u64),
            duplicated as u64,
            total - OPENING_BALANCE * ACCOUNTS as i64,
        ))
    }

    /// Holds an exclusive lock on `table`'s sign-ups for `how_long`, from a session of its own: every
    /// statement on it waits, slower than the attempt timeout.
    async fn hold_lock(&self, table: &str, how_long: Duration) -> Result<(), String> {
        let conn = direct_client(&self.direct_url).await?;
        conn.batch_execute(&format!(
            "BEGIN; LOCK TABLE {table}_signups IN ACCESS EXCLUSIVE MODE"
        ))
        .await
        .map_err(|e| format!("cannot lock {table}_signups: {e}"))?;
        tokio::time::sleep(how_long).await;
        conn.batch_execute("COMMIT")
            .await
            .map_err(|e| format!("cannot release the lock: {e}"))
    }

    /// Runs the workload for the whole duration while the fault script plays, recording by phase.
    /// Returns what was recorded and how many times the breaker (if any) was seen opening.
    async fn run<T: Target>(
        &self,
        name: &str,
        target: Arc<T>,
        progress: &ProgressBar,
        db: Option<&Db>,
    ) -> (Arc<Recorder>, u64) {
        let recorder = Arc::new(Recorder::default());
        *recorder.phases.lock().unwrap() = vec![PhaseStats::default(); self.phase_names.len()];
        let stop = Arc::new(AtomicBool::new(false));
        let mut workers = tokio::task::JoinSet::new();
        for worker in 0..self.options.concurrency {
            let (target, recorder, stop) = (target.clone(), recorder.clone(), stop.clone());
            workers.spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if recorder.paused.load(Ordering::Relaxed) {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                    n += 1;
                    let phase = *recorder.phase.lock().unwrap();
                    let started = Instant::now();
                    let outcome = match tokio::time::timeout(
                        HUNG_AFTER,
                        target.op(worker, n, &recorder.acknowledged),
                    )
                    .await
                    {
                        Ok(outcome) => outcome,
                        Err(_) => Err("hung (no answer in 10 s)".to_owned()),
                    };
                    recorder.record(phase, started, outcome);
                    // A gentle pace: a service, not a benchmark.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            });
        }

        let started = Instant::now();
        let ticker = {
            let (recorder, progress, names, name) = (
                recorder.clone(),
                progress.clone(),
                self.phase_names.clone(),
                name.to_owned(),
            );
            let breaker = db.and_then(|d| d.breaker().cloned());
            let duration = self.options.duration;
            tokio::spawn(async move {
                let mut openings = 0u64;
                let mut was_open = false;
                loop {
                    let phase = *recorder.phase.lock().unwrap();
                    let open = breaker
                        .as_ref()
                        .is_some_and(|b| b.state().as_str() == "open");
                    if open && !was_open {
                        openings += 1;
                    }
                    was_open = open;
                    progress.set_position(started.elapsed().min(duration).as_millis() as u64);
                    progress.set_message(format!(
                        "{name:<8} {:<11} ok {:>6}  failed {:>5}",
                        names[phase],
                        recorder.ok.load(Ordering::Relaxed),
                        recorder.failed.load(Ordering::Relaxed)
                    ));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    if progress.is_finished() {
                        return openings;
                    }
                }
            })
        };

        self.play_faults(&recorder, &format!("{name}_drill"), db)
            .await;
        stop.store(true, Ordering::Relaxed);
        while workers.join_next().await.is_some() {}
        progress.finish();
        let openings = ticker.await.unwrap_or(0);
        (recorder, openings)
    }

    /// The fault script: a steady slot, one slot per fault (injected a tenth in, lifted when its window
    /// ends), and a recovery slot.
    async fn play_faults(&self, recorder: &Recorder, table: &str, db: Option<&Db>) {
        let slot = self.slot();
        let snapshot = || {
            if let Some(db) = db {
                recorder.resolved.lock().unwrap().push(db.resolved());
            }
        };
        let set_phase = |i: usize| {
            snapshot();
            *recorder.phase.lock().unwrap() = i;
        };
        set_phase(0);
        tokio::time::sleep(slot).await;
        for (i, fault) in self.options.faults.iter().enumerate() {
            set_phase(i + 1);
            let slot_started = Instant::now();
            tokio::time::sleep(slot / 10).await;
            match fault {
                FaultKind::IdleKill => {
                    recorder.paused.store(true, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(1200)).await;
                    self.proxy.kill_silently();
                    recorder.paused.store(false, Ordering::Relaxed);
                }
                FaultKind::IdleDrop => {
                    recorder.paused.store(true, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(1200)).await;
                    self.proxy.drop_silently();
                    recorder.paused.store(false, Ordering::Relaxed);
                }
                FaultKind::Slow => {
                    if let Err(e) = self
                        .hold_lock(table, Duration::from_secs(4).min(slot / 2))
                        .await
                    {
                        eprintln!("drill: the slow phase failed: {e}");
                    }
                }
                FaultKind::Restart => {
                    if let Some(cluster) = &self.cluster {
                        if let Err(e) = cluster.restart().await {
                            eprintln!("drill: the restart failed: {e}");
                        }
                    }
                }
                FaultKind::BlackHole => {
                    self.proxy.set_fault(Fault::BlackHole);
                    tokio::time::sleep(Duration::from_secs(3).min(slot / 2)).await;
                    self.proxy.set_fault(Fault::PassThrough);
                }
                FaultKind::Reset => {
                    self.proxy.reset_all();
                }
                FaultKind::Refuse => {
                    self.proxy.set_fault(Fault::Refuse);
                    self.proxy.reset_all();
                    tokio::time::sleep(Duration::from_secs(2).min(slot / 2)).await;
                    self.proxy.set_fault(Fault::PassThrough);
                }
            }
            tokio::time::sleep(slot.saturating_sub(slot_started.elapsed())).await;
        }
        set_phase(self.options.faults.len() + 1);
        tokio::time::sleep(slot).await;
        snapshot();
    }
}

fn stack_report(
    stack: &'static str,
    recorder: &Recorder,
    names: &[String],
    audit: (u64, u64, i64),
    counters: (Option<u64>, Option<u64>, Option<u64>, u64),
) -> StackReport {
    let phases_stats = recorder.phases.lock().unwrap().clone();
    let snapshots = recorder.resolved.lock().unwrap().clone();
    let resolved_in = |i: usize| -> Option<ResolvedReport> {
        let (start, end) = (snapshots.get(i)?, snapshots.get(i + 1)?);
        Some(ResolvedReport::of(end.since(start)))
    };
    let mut total = PhaseStats::default();
    let mut total_resolved: Option<ResolvedReport> = None;
    let phases = phases_stats
        .iter()
        .zip(names)
        .enumerate()
        .map(|(i, (stats, name))| {
            total.merge(stats);
            let resolved = resolved_in(i);
            if let Some(r) = &resolved {
                total_resolved.get_or_insert_default().add(r);
            }
            PhaseReport {
                phase: name.clone(),
                requests: stats.requests,
                succeeded: stats.succeeded,
                failed: stats.failed(),
                outcome_unknown: unknown_in(&stats.failures),
                resolved,
                failures: stats.failures.clone(),
                p50_ms: stats.percentile_ms(0.5),
                p99_ms: stats.percentile_ms(0.99),
                max_ms: stats.percentile_ms(1.0),
            }
        })
        .collect();
    let hung = total
        .failures
        .iter()
        .filter(|(k, _)| k.starts_with("hung"))
        .map(|(_, v)| v)
        .sum();
    StackReport {
        stack,
        requests: total.requests,
        succeeded: total.succeeded,
        failed: total.failed(),
        outcome_unknown: unknown_in(&total.failures),
        resolved: total_resolved,
        hung,
        lost: audit.0,
        duplicated: audit.1,
        balance_drift: audit.2,
        retries: counters.0,
        breaker_opened: counters.1,
        pool_rebuilt: counters.2,
        connections_opened: counters.3,
        p50_ms: total.percentile_ms(0.5),
        p99_ms: total.percentile_ms(0.99),
        max_ms: total.percentile_ms(1.0),
        phases,
    }
}

fn render(report: &Report, drill: &Drill) -> String {
    let mut out = String::new();
    let opt = |v: Option<u64>| v.map_or("-".to_owned(), |v| v.to_string());
    let _ = writeln!(
        out,
        "\nrampart drill: {} s per stack, {} workers (30% sign-ups with idempotency keys, 30% plain writes without a key, 30% reads, 10% transfers){}\n",
        report.duration_s,
        report.concurrency,
        if report.multiplexed {
            "; rampart multiplexed (reads and keyed writes pipelined over a shared connection, plain writes and transfers on the pool)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        out,
        "{:<11} {:<8} {:>8} {:>8} {:>7} {:>8} {:>8} {:>8} {:>9}  {:<9} failures",
        "phase",
        "stack",
        "requests",
        "ok",
        "failed",
        "unknown",
        "p50 ms",
        "p99 ms",
        "max ms",
        "resolved"
    );
    let _ = writeln!(out, "{}", "-".repeat(130));
    for (r, b) in report.rampart.phases.iter().zip(&report.baseline.phases) {
        for (label, p) in [("rampart", r), ("bare", b)] {
            let failures = if p.failures.is_empty() {
                "-".to_owned()
            } else {
                p.failures
                    .iter()
                    .map(|(k, n)| format!("{n} {k}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let phase = if label == "rampart" {
                p.phase.as_str()
            } else {
                ""
            };
            // Lost replies looked up: committed / not applied / still unknown.
            let resolved = p.resolved.map_or("-".to_owned(), |r| {
                format!("{}/{}/{}", r.committed, r.not_applied, r.unknown)
            });
            // A bare client cannot tell a lost reply from a refused request: no count of unknowns.
            let unknown = if label == "rampart" {
                p.outcome_unknown.to_string()
            } else {
                "-".to_owned()
            };
            let _ = writeln!(
                out,
                "{phase:<11} {label:<8} {:>8} {:>8} {:>7} {unknown:>8} {:>8.1} {:>8.1} {:>9.1}  {resolved:<9} {failures}",
                p.requests, p.succeeded, p.failed, p.p50_ms, p.p99_ms, p.max_ms
            );
        }
    }
    let _ = writeln!(out, "{}", "-".repeat(130));
    let _ = writeln!(
        out,
        "unknown: failures that said the outcome is unknown; resolved: lost replies of plain writes looked up on the server (committed / not applied, retried / still unknown)"
    );
    let (r, b) = (&report.rampart, &report.baseline);
    let _ = writeln!(out, "\n{:<24} {:>12} {:>12}", "", "rampart", "bare client");
    let resolved = r.resolved.map_or("-".to_owned(), |x| x.total().to_string());
    let rows: [(&str, String, String); 14] = [
        ("requests", r.requests.to_string(), b.requests.to_string()),
        (
            "succeeded",
            r.succeeded.to_string(),
            b.succeeded.to_string(),
        ),
        ("failed", r.failed.to_string(), b.failed.to_string()),
        (
            "  of which hung (10 s)",
            r.hung.to_string(),
            b.hung.to_string(),
        ),
        (
            "  outcome unknown",
            r.outcome_unknown.to_string(),
            "-".to_owned(),
        ),
        ("lost replies resolved", resolved, "-".to_owned()),
        ("retries", opt(r.retries), opt(b.retries)),
        (
            "breaker opened",
            opt(r.breaker_opened),
            opt(b.breaker_opened),
        ),
        ("pool rebuilt", opt(r.pool_rebuilt), opt(b.pool_rebuilt)),
        (
            "connections opened",
            r.connections_opened.to_string(),
            b.connections_opened.to_string(),
        ),
        (
            "acknowledged rows lost",
            r.lost.to_string(),
            b.lost.to_string(),
        ),
        (
            "rows duplicated",
            r.duplicated.to_string(),
            b.duplicated.to_string(),
        ),
        (
            "money created or lost",
            r.balance_drift.to_string(),
            b.balance_drift.to_string(),
        ),
        (
            "p99 / max latency ms",
            format!("{:.0} / {:.0}", r.p99_ms, r.max_ms),
            format!("{:.0} / {:.0}", b.p99_ms, b.max_ms),
        ),
    ];
    for (label, rv, bv) in rows {
        let _ = writeln!(out, "{label:<24} {rv:>12} {bv:>12}");
    }
    if let Some(x) = r.resolved.filter(|x| x.total() > 0) {
        let _ = writeln!(
            out,
            "  lost replies, looked up on the server: {}",
            x.describe()
        );
    }
    let _ = writeln!(out, "\nfaults, in order:");
    for f in &drill.options.faults {
        let _ = writeln!(out, "  {:<11} {}", f.name(), f.describe());
    }
    let intact = r.lost == 0 && r.duplicated == 0 && r.balance_drift == 0;
    let verdict = if r.failed == 0 && intact {
        format!(
            "verdict: rampart answered all {} requests and lost nothing; the bare client failed {} of {} ({} hung).",
            r.requests, b.failed, b.requests, b.hung
        )
    } else {
        format!(
            "verdict: rampart failed {} of {} requests (typed errors, {}); the bare client failed {} of {} ({} hung).",
            r.failed,
            r.requests,
            if intact {
                "nothing lost"
            } else {
                "DATA LOST OR DUPLICATED"
            },
            b.failed,
            b.requests,
            b.hung
        )
    };
    let _ = writeln!(out, "\n{verdict}");
    out
}

fn init_logs(format: Option<&str>) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("rampart=info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        Some("json") => builder.json().init(),
        Some(_) => builder.init(),
        None => {}
    }
}

async fn main_inner(options: Options) -> Result<(), String> {
    init_logs(options.log_format.as_deref());
    let (cluster, direct_url, target) = match &options.database_url {
        Some(url) => (None, url.clone(), loopback_target(url)?),
        None => {
            eprintln!(
                "starting a throwaway PostgreSQL cluster (set DATABASE_URL to drill your own server) ..."
            );
            let cluster = Cluster::new().await.map_err(|e| e.to_string())?;
            let (url, addr) = (cluster.url(), cluster.addr());
            (Some(cluster), url, addr)
        }
    };
    let proxy = FaultProxy::start(target).await.map_err(|e| e.to_string())?;
    let (proxied_url, bare_url) = via_proxy(&direct_url, proxy.addr())?;
    let mut phase_names = vec!["steady".to_owned()];
    phase_names.extend(options.faults.iter().map(|f| f.name().to_owned()));
    phase_names.push("recovery".to_owned());
    let drill = Drill {
        options,
        proxy,
        cluster,
        direct_url,
        proxied_url,
        bare_url,
        phase_names,
    };

    let style = ProgressStyle::with_template("{elapsed:>4} [{bar:30}] {msg}")
        .expect("constant template")
        .progress_chars("=> ");
    let bar = |_: &str| {
        let bar =
            ProgressBar::new(drill.options.duration.as_millis() as u64).with_style(style.clone());
        if drill.options.json {
            bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        bar
    };

    // rampart first.
    drill.setup_tables("rampart_drill").await?;
    let mut stack = Stack::server(&drill.proxied_url)
        .attempt_timeout(Duration::from_secs(1))
        .deadline(Duration::from_secs(9))
        // The deadline, not a count, bounds the retries: a 2 s refusal must not exhaust them.
        .max_attempts(30)
        // A statement the server cuts at the attempt timeout (waiting for the `slow` phase's lock) is
        // tried again up to 4 times, so a 4 s lock is waited out within the 9 s deadline (the stack's
        // default is once: a slow statement is more often a bug than a lock).
        .slow_statement_retries(4);
    if drill.options.multiplex {
        stack = stack.multiplex(MuxConfig::default());
    }
    let db = stack.build().map_err(|e| e.to_string())?;
    let links_before = drill.proxy.stats().links_opened;
    let target = Arc::new(RampartTarget {
        db: db.clone(),
        table: "rampart_drill".into(),
    });
    let (recorder, openings) = drill
        .run("rampart", target, &bar("rampart"), Some(&db))
        .await;
    let acknowledged = recorder.acknowledged.lock().unwrap().clone();
    let audit = drill.audit("rampart_drill", &acknowledged).await?;
    let counters = (
        Some(db.retries()),
        Some(openings),
        Some(db.pool_rebuilds()),
        drill.proxy.stats().links_opened - links_before,
    );
    let rampart = stack_report("rampart", &recorder, &drill.phase_names, audit, counters);
    drop(db);

    // Then the identical schedule through a bare client.
    drill.setup_tables("bare_drill").await?;
    let links_before = drill.proxy.stats().links_opened;
    let target = Arc::new(BareTarget {
        url: drill.bare_url.clone(),
        table: "bare_drill".into(),
        clients: (0..drill.options.concurrency)
            .map(|_| tokio::sync::Mutex::new(None))
            .collect(),
        connects: AtomicU64::new(0),
    });
    let (recorder, _) = drill.run("bare", target, &bar("bare"), None).await;
    let acknowledged = recorder.acknowledged.lock().unwrap().clone();
    let audit = drill.audit("bare_drill", &acknowledged).await?;
    let baseline = stack_report(
        "bare",
        &recorder,
        &drill.phase_names,
        audit,
        (
            None,
            None,
            None,
            drill.proxy.stats().links_opened - links_before,
        ),
    );

    let mut failover = Vec::new();
    if drill.options.failover {
        for stack in ["rampart", "bare"] {
            failover.push(failover_run(stack, &drill.options, &bar(stack)).await?);
        }
    }

    let report = Report {
        failover,
        duration_s: drill.options.duration.as_secs_f64(),
        concurrency: drill.options.concurrency,
        multiplexed: drill.options.multiplex,
        faults: drill.options.faults.iter().map(|f| f.name()).collect(),
        rampart,
        baseline,
    };
    if drill.options.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?
        );
    } else {
        print!("{}", render(&report, &drill));
        if !report.failover.is_empty() {
            print!("{}", render_failover(&report.failover));
        }
    }
    Ok(())
}

fn main() {
    let options = match parse_args(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(message) if message.is_empty() => {
            // Through a closed pipe (`drill --help | head`) there is nobody to tell: not a reason to panic.
            let _ = writeln!(std::io::stdout(), "{USAGE}");
            return;
        }
        Err(message) => {
            eprintln!("drill: {message}\n\n{USAGE}");
            std::process::exit(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("drill: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(message) = runtime.block_on(main_inner(options)) {
        eprintln!("drill: {message}");
        std::process::exit(1);
    }
}
