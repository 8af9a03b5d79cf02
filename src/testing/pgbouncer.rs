//! A throwaway PgBouncer in transaction mode, in front of a [`Cluster`].

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use super::HarnessError;
use super::cluster::{Cluster, command, free_port, owned_temp_dir, run_as};
use super::process::{self, Process};

const INSTALL_HINT: &str = "install PgBouncer (Debian/Ubuntu: `apt-get install -y pgbouncer`; macOS: \
     `brew install pgbouncer`) or set PGBOUNCER_BIN to the `pgbouncer` binary";

/// How long a start may take before the harness gives up and shows PgBouncer's log.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Finds the `pgbouncer` binary: `PGBOUNCER_BIN`, then `PATH`, then `/usr/sbin` (where Debian puts it,
/// outside an ordinary user's `PATH`). The error says how to install it.
pub fn find_pgbouncer() -> Result<PathBuf, HarnessError> {
    find_pgbouncer_from(
        std::env::var_os("PGBOUNCER_BIN"),
        std::env::var_os("PATH").unwrap_or_default(),
        &["/usr/sbin", "/usr/local/sbin"],
    )
}

fn find_pgbouncer_from(
    pgbouncer_bin: Option<std::ffi::OsString>,
    path: std::ffi::OsString,
    extra_dirs: &[&str],
) -> Result<PathBuf, HarnessError> {
    if let Some(bin) = pgbouncer_bin {
        let bin = PathBuf::from(bin);
        return if bin.is_file() {
            Ok(bin)
        } else {
            Err(HarnessError::new(format!(
                "PGBOUNCER_BIN is set to {} but there is no file there; {INSTALL_HINT}",
                bin.display()
            )))
        };
    }
    std::env::split_paths(&path)
        .chain(extra_dirs.iter().map(PathBuf::from))
        .map(|dir| dir.join("pgbouncer"))
        .find(|bin| bin.is_file())
        .ok_or_else(|| {
            HarnessError::new(format!(
                "no `pgbouncer` binary found (looked at PGBOUNCER_BIN, PATH, {}); \
                 this test needs a real PgBouncer: {INSTALL_HINT}",
                extra_dirs.join(", ")
            ))
        })
}

/// Settings for a throwaway PgBouncer; see [`PgBouncer::builder`].
#[derive(Debug, Clone)]
pub struct PgBouncerBuilder {
    settings: Vec<(String, String)>,
    server: Option<SocketAddr>,
}

impl Default for PgBouncerBuilder {
    fn default() -> Self {
        let settings = [
            ("pool_mode", "transaction"),
            ("max_client_conn", "200"),
            ("default_pool_size", "4"),
            // PgBouncer's default (15 s) would refuse every client for 15 s after one failed server
            // login, longer than a test's deadline.
            ("server_login_retry", "1"),
            ("ignore_startup_parameters", "extra_float_digits"),
        ];
        Self {
            settings: settings
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            server: None,
        }
    }
}

impl PgBouncerBuilder {
    /// Sets `name = value` in the `[pgbouncer]` section, for example `("default_pool_size", "2")` or
    /// `("max_client_conn", "3")`. Later settings win. The defaults: `pool_mode = transaction`,
    /// `max_client_conn = 200`, `default_pool_size = 4`, `server_login_retry = 1`.
    pub fn setting(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        let name = name.into();
        self.settings.retain(|(k, _)| *k != name);
        self.settings.push((name, value.into()));
        self
    }

    /// Connects PgBouncer to `addr` (a [`FaultProxy`](super::FaultProxy) in front of the cluster, to make
    /// faults between PgBouncer and Postgres) instead of the cluster's own address.
    pub fn server_addr(mut self, addr: SocketAddr) -> Self {
        self.server = Some(addr);
        self
    }

    /// Writes the configuration into a temporary directory and starts PgBouncer in front of `cluster`,
    /// waiting until a query passes through it.
    pub async fn start(self, cluster: &Cluster) -> Result<PgBouncer, HarnessError> {
        let bin = find_pgbouncer()?;
        let user = run_as()?;
        let dir = owned_temp_dir(user)?;
        let port = free_port()?;
        let target = self.server.unwrap_or_else(|| cluster.addr());
        let server = match cluster.password() {
            Some(pw) => format!(
                "host={} port={} user=postgres password={pw}",
                target.ip(),
                target.port()
            ),
            None => format!("host={} port={}", target.ip(), target.port()),
        };
        let mut ini = format!("[databases]\n* = {server}\n\n[pgbouncer]\n");
        let fixed = [
            ("listen_addr", "127.0.0.1".to_owned()),
            ("listen_port", port.to_string()),
            ("unix_socket_dir", String::new()),
            ("auth_type", "trust".to_owned()),
            ("auth_file", path_str(&dir.path().join("userlist.txt"))),
            ("logfile", path_str(&dir.path().join("pgbouncer.log"))),
            ("pidfile", path_str(&dir.path().join("pgbouncer.pid"))),
            ("admin_users", "postgres".to_owned()),
        ];
        for (name, value) in fixed
            .iter()
            .map(|(k, v)| (*k, v.as_str()))
            .chain(self.settings.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        {
            ini.push_str(&format!("{name} = {value}\n"));
        }
        let ini_path = dir.path().join("pgbouncer.ini");
        for (path, text) in [
            (&ini_path, ini),
            (
                &dir.path().join("userlist.txt"),
                "\"postgres\" \"\"\n".to_owned(),
            ),
        ] {
            std::fs::write(path, text)
                .map_err(|e| HarnessError::io(format!("writing {}", path.display()), e))?;
            super::cluster::chown(path, user)?;
        }
        let mut cmd = command(&bin, user);
        cmd.arg(&ini_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd
            .spawn()
            .map_err(|e| HarnessError::io(format!("starting {}", bin.display()), e))?;
        let bouncer = PgBouncer {
            port,
            process: Process::default(),
            dir,
        };
        bouncer.process.set(child);
        bouncer.wait_ready().await?;
        Ok(bouncer)
    }
}

fn path_str(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// A PgBouncer of its own for one test, in transaction mode on a free loopback port, in front of a
/// [`Cluster`]: what Neon's `-pooler` endpoints, Supabase's pooler and most managed hosts put between
/// an application and Postgres.
///
/// Run as root, it runs as the `postgres` user (PgBouncer refuses to run as root). Its configuration and
/// log are in a temporary directory; dropping it stops it and removes them.
///
/// ```no_run
/// use rampart::testing::{Cluster, PgBouncer};
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let cluster = Cluster::new().await?;
/// let bouncer = PgBouncer::builder().setting("default_pool_size", "2").start(&cluster).await?;
/// let db = rampart::Stack::pooler(&bouncer.url()).build()?;
/// # Ok(()) }
/// ```
pub struct PgBouncer {
    port: u16,
    process: Process,
    // Last, so it is removed after PgBouncer has stopped.
    dir: tempfile::TempDir,
}

impl fmt::Debug for PgBouncer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgBouncer")
            .field("port", &self.port)
            .field("running", &self.is_running())
            .finish_non_exhaustive()
    }
}

impl PgBouncer {
    /// A builder for a PgBouncer with settings of your choice.
    pub fn builder() -> PgBouncerBuilder {
        PgBouncerBuilder::default()
    }

    /// Starts a PgBouncer with the default settings in front of `cluster`.
    pub async fn start(cluster: &Cluster) -> Result<PgBouncer, HarnessError> {
        Self::builder().start(cluster).await
    }

    /// PgBouncer's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// PgBouncer's address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// A connection URL for the `postgres` database as the `postgres` user, through PgBouncer.
    pub fn url(&self) -> String {
        format!("postgres://postgres@{}/postgres", self.addr())
    }

    /// The last lines of PgBouncer's log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        process::log_tail(&self.dir.path().join("pgbouncer.log"), lines)
    }

    /// Whether the PgBouncer process is running.
    pub fn is_running(&self) -> bool {
        self.process.is_running()
    }

    /// Kills PgBouncer: every client connection through it is cut.
    pub fn stop(&self) {
        if let Some(mut child) = self.process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn wait_ready(&self) -> Result<(), HarnessError> {
        let config: tokio_postgres::Config = self
            .url()
            .parse()
            .map_err(|e| HarnessError::new(format!("bad PgBouncer URL: {e}")))?;
        let log = self.dir.path().join("pgbouncer.log");
        process::wait_until_answering("pgbouncer", &config, &self.process, &log, START_TIMEOUT)
            .await
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_binary_fails_with_install_instructions() {
        let empty = tempfile::tempdir().unwrap();
        let err = find_pgbouncer_from(None, empty.path().into(), &[]).unwrap_err();
        assert!(
            err.message().contains("apt-get install -y pgbouncer"),
            "{err}"
        );
        let err = find_pgbouncer_from(
            Some("/nonexistent/pgbouncer".into()),
            empty.path().into(),
            &[],
        )
        .unwrap_err();
        assert!(err.message().contains("PGBOUNCER_BIN is set"), "{err}");

        std::fs::write(empty.path().join("pgbouncer"), "").unwrap();
        let found = find_pgbouncer_from(None, empty.path().into(), &[]).unwrap();
        assert_eq!(found, empty.path().join("pgbouncer"));
    }
}
