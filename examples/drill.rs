//! The resilience drill: a workload through real faults, with a report of what the client saw.
//!
//! ```text
//! cargo run --release --example drill
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo run --release --example drill
//! ```
//!
//! By default it starts a throwaway PostgreSQL cluster (only the server's binaries are needed) and puts the
//! in-process fault proxy in front of it. With `DATABASE_URL` it drills that server instead (loopback
//! addresses only, and without the restart phase, which needs a server of its own).
//!
//! This first drill runs the workload through a bare tokio-postgres client, the way most services start
//! out, and shows each fault reaching the caller. Each phase makes one fault from `shared/SCENARIOS.md`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rampart::testing::{Cluster, Fault, FaultProxy};
use tokio_postgres::{Client, NoTls};

/// How long the drill waits for one request before it calls it hung. A bare client has no such limit:
/// without this, a black-holed query would hang the drill for as long as TCP retransmits (minutes).
const HUNG_AFTER: Duration = Duration::from_secs(2);
/// The workload's pace: one request every 50 ms (20 per second), sequentially.
const PACE: Duration = Duration::from_millis(50);
/// How long each phase runs.
const PHASE: Duration = Duration::from_secs(3);

#[derive(Default)]
struct Tally {
    sent: usize,
    ok: usize,
    errors: BTreeMap<&'static str, usize>,
}

impl Tally {
    fn failed(&self) -> usize {
        self.errors.values().sum()
    }
}

/// A service as it is often written first: one client, reconnected after it is seen closed.
struct BareApp {
    url: String,
    client: Option<Client>,
    reconnects: usize,
}

impl BareApp {
    async fn client(&mut self) -> Result<&Client, &'static str> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            let connect = tokio_postgres::connect(&self.url, NoTls);
            let (client, connection) = match tokio::time::timeout(HUNG_AFTER, connect).await {
                Ok(Ok(pair)) => pair,
                Ok(Err(e)) => return Err(kind_of(&e)),
                Err(_) => return Err("connect hung"),
            };
            tokio::spawn(connection);
            self.client = Some(client);
            self.reconnects += 1;
        }
        Ok(self.client.as_ref().expect("set above"))
    }

    async fn request(&mut self, n: usize) -> Result<(), &'static str> {
        let client = self.client().await?;
        let work = async {
            if n % 2 == 0 {
                let email = format!("user{n}-{}@example.com", std::process::id());
                client
                    .execute("INSERT INTO signups (email) VALUES ($1)", &[&email])
                    .await
                    .map(drop)
            } else {
                client
                    .query("SELECT count(*) FROM signups", &[])
                    .await
                    .map(drop)
            }
        };
        match tokio::time::timeout(HUNG_AFTER, work).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(kind_of(&e)),
            Err(_) => {
                // The caller gave up; the connection is stuck, so drop it as a real service would have to.
                self.client = None;
                Err("hung (no answer)")
            }
        }
    }
}

fn kind_of(err: &tokio_postgres::Error) -> &'static str {
    if err.is_closed() {
        return "connection closed";
    }
    if let Some(code) = err.code() {
        return match code.code() {
            "57P01" => "admin shutdown (57P01)",
            "57P03" => "server starting up (57P03)",
            "53300" => "too many connections (53300)",
            _ => "other SQL error",
        };
    }
    let debug = format!("{err:?}");
    if debug.contains("ConnectionRefused") {
        "connection refused"
    } else if debug.contains("ConnectionReset") || debug.contains("BrokenPipe") {
        "connection reset"
    } else {
        "other I/O error"
    }
}

struct Phase {
    name: &'static str,
    what: &'static str,
    tally: Tally,
    elapsed: Duration,
}

/// Runs the workload for [`PHASE`] while `fault` does its work (starting, then lifting a fault).
async fn run_phase(
    app: &mut BareApp,
    name: &'static str,
    what: &'static str,
    fault: impl std::future::Future<Output = ()>,
) -> Phase {
    let started = Instant::now();
    let workload = async {
        let mut tally = Tally::default();
        let mut pace = tokio::time::interval(PACE);
        pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while started.elapsed() < PHASE {
            pace.tick().await;
            tally.sent += 1;
            match app.request(tally.sent).await {
                Ok(()) => tally.ok += 1,
                Err(kind) => *tally.errors.entry(kind).or_default() += 1,
            }
        }
        tally
    };
    let (tally, ()) = tokio::join!(workload, fault);
    Phase {
        name,
        what,
        tally,
        elapsed: started.elapsed(),
    }
}

/// Lifts the proxy's fault after `after`.
async fn lift_after(proxy: &FaultProxy, after: Duration) {
    tokio::time::sleep(after).await;
    proxy.set_fault(Fault::PassThrough);
}

fn loopback_target(url: &str) -> Result<SocketAddr, String> {
    let config: tokio_postgres::Config = url
        .parse()
        .map_err(|e| format!("DATABASE_URL is not a valid URL: {e}"))?;
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => return Err("DATABASE_URL must name a TCP host".into()),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("cannot resolve {host}"))?;
    if !addr.ip().is_loopback() {
        return Err(format!(
            "the drill injects faults and only targets loopback addresses; {host} is not one"
        ));
    }
    Ok(addr)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let from_env = std::env::var("DATABASE_URL").ok();
    let cluster = match &from_env {
        Some(_) => None,
        None => {
            eprintln!(
                "starting a throwaway PostgreSQL cluster (set DATABASE_URL to drill your own server) ..."
            );
            Some(Cluster::new().await?)
        }
    };
    let (target, direct_url) = match (&from_env, &cluster) {
        (Some(url), _) => (loopback_target(url)?, url.clone()),
        (None, Some(c)) => (c.addr(), c.url()),
        (None, None) => unreachable!("a cluster is started when DATABASE_URL is absent"),
    };
    let proxy = FaultProxy::start(target).await?;
    let proxied_url = proxied(&direct_url.parse()?, proxy.addr());
    drill(proxied_url, &proxy, cluster.as_ref()).await
}

/// The same connection settings (user, password, database), pointed at the proxy.
fn proxied(config: &tokio_postgres::Config, proxy: SocketAddr) -> String {
    let user = config.get_user().unwrap_or("postgres");
    let db = config.get_dbname().unwrap_or(user);
    match config.get_password() {
        Some(pw) => format!(
            "postgres://{user}:{}@{proxy}/{db}",
            String::from_utf8_lossy(pw)
        ),
        None => format!("postgres://{user}@{proxy}/{db}"),
    }
}

async fn drill(
    url: String,
    proxy: &FaultProxy,
    cluster: Option<&Cluster>,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut app = BareApp {
        url,
        client: None,
        reconnects: 0,
    };
    let setup = app
        .client()
        .await
        .map_err(|k| format!("cannot reach the database: {k}"))?;
    setup
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS signups (id bigserial PRIMARY KEY, email text NOT NULL)",
        )
        .await?;

    let mut phases = Vec::new();
    phases.push(run_phase(&mut app, "steady", "no fault", async {}).await);

    // Idle first, as a suspended compute is, then kill every link without telling the client.
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.kill_silently();
    phases.push(
        run_phase(
            &mut app,
            "idle kill",
            "links killed silently after idling, as a suspending serverless host does",
            async {},
        )
        .await,
    );

    if let Some(cluster) = cluster {
        cluster.restart().await?;
        phases.push(
            run_phase(
                &mut app,
                "restart",
                "server restarted (fast) while the app was idle",
                async {},
            )
            .await,
        );
    }

    proxy.set_fault(Fault::BlackHole);
    let lift = lift_after(proxy, Duration::from_secs(2));
    phases.push(
        run_phase(
            &mut app,
            "black hole",
            "for 2 s the network drops everything, with no reset",
            lift,
        )
        .await,
    );

    let reset = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        proxy.reset_all();
    };
    phases.push(
        run_phase(
            &mut app,
            "reset",
            "every link reset once, mid-workload",
            reset,
        )
        .await,
    );

    proxy.set_fault(Fault::Refuse);
    proxy.reset_all();
    let lift = lift_after(proxy, Duration::from_secs(1));
    phases.push(
        run_phase(
            &mut app,
            "refused",
            "for 1 s nothing listens (links reset, connects refused)",
            lift,
        )
        .await,
    );

    report(&phases, &app, proxy);
    Ok(())
}

fn report(phases: &[Phase], app: &BareApp, proxy: &FaultProxy) {
    println!();
    println!(
        "rampart drill: a bare tokio-postgres client, {:.0} s per phase, a request every {} ms (sign-ups and reads)",
        PHASE.as_secs_f64(),
        PACE.as_millis()
    );
    println!();
    println!(
        "{:<11} {:>5} {:>5} {:>7} {:>8}  errors seen by the caller",
        "phase", "sent", "ok", "failed", "time"
    );
    println!("{}", "-".repeat(96));
    let mut total = Tally::default();
    for p in phases {
        let errors = if p.tally.errors.is_empty() {
            "-".to_owned()
        } else {
            p.tally
                .errors
                .iter()
                .map(|(k, n)| format!("{n} x {k}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "{:<11} {:>5} {:>5} {:>7} {:>7.1}s  {errors}",
            p.name,
            p.tally.sent,
            p.tally.ok,
            p.tally.failed(),
            p.elapsed.as_secs_f64()
        );
        total.sent += p.tally.sent;
        total.ok += p.tally.ok;
        for (k, n) in &p.tally.errors {
            *total.errors.entry(k).or_default() += n;
        }
    }
    println!("{}", "-".repeat(96));
    println!(
        "{:<11} {:>5} {:>5} {:>7}",
        "total",
        total.sent,
        total.ok,
        total.failed()
    );
    println!();
    for p in phases {
        println!("  {:<11} {}", p.name, p.what);
    }
    let stats = proxy.stats();
    println!();
    println!(
        "connections opened: {} (the app reconnected {} times); every failure above reached a caller.",
        stats.links_opened, app.reconnects
    );
    println!(
        "A request counts as hung after {} s without an answer; the bare client itself would wait for minutes.",
        HUNG_AFTER.as_secs()
    );
}
