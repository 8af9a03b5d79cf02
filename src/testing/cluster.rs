//! A throwaway PostgreSQL cluster: `initdb` into a temporary directory, `postgres` on a free loopback port.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::HarnessError;
use super::TestCerts;
use super::process::{self, Process};

const INSTALL_HINT: &str = "install the PostgreSQL server (Debian/Ubuntu: `apt-get install -y postgresql`; \
     macOS: `brew install postgresql`) or set PG_BIN to the directory holding `initdb` and `postgres`";

/// How long a start may take before the harness gives up and shows the server's log.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Finds the directory holding the PostgreSQL server binaries (`initdb`, `postgres`, `pg_ctl`).
///
/// Looks at `PG_BIN`, then the newest `/usr/lib/postgresql/*/bin`, then `pg_config --bindir`.
/// The error says how to install the server.
pub fn find_bin_dir() -> Result<PathBuf, HarnessError> {
    find_bin_dir_from(
        std::env::var_os("PG_BIN"),
        Path::new("/usr/lib/postgresql"),
        "pg_config",
    )
}

fn find_bin_dir_from(
    pg_bin: Option<std::ffi::OsString>,
    lib_root: &Path,
    pg_config: &str,
) -> Result<PathBuf, HarnessError> {
    let has_server = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    if let Some(dir) = pg_bin {
        let dir = PathBuf::from(dir);
        return if has_server(&dir) {
            Ok(dir)
        } else {
            Err(HarnessError::new(format!(
                "PG_BIN is set to {} but `initdb` and `postgres` are not there; {INSTALL_HINT}",
                dir.display()
            )))
        };
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(lib_root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            has_server(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    if let Ok(out) = Command::new(pg_config).arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_server(&dir) {
            return Ok(dir);
        }
    }
    Err(HarnessError::new(format!(
        "no PostgreSQL server binaries found (looked at PG_BIN, /usr/lib/postgresql/*/bin, `pg_config --bindir`); \
         this test needs a real server: {INSTALL_HINT}"
    )))
}

/// The uid and gid to run the server as: the `postgres` user when we are root (PostgreSQL refuses to run
/// as root), nobody else otherwise.
pub(crate) fn run_as() -> Result<Option<(u32, u32)>, HarnessError> {
    let euid = std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(u32::MAX);
    if euid != 0 {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd")
        .map_err(|e| HarnessError::io("reading /etc/passwd", e))?;
    passwd
        .lines()
        .find_map(|line| {
            let mut fields = line.split(':');
            (fields.next()? == "postgres").then_some(())?;
            let _password = fields.next()?;
            Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
        })
        .map(Some)
        .ok_or_else(|| {
            HarnessError::new(
                "running as root, and PostgreSQL refuses to run as root, but there is no `postgres` user to run it as; \
                 create one (`useradd --system postgres`) or install the server package, which creates it",
            )
        })
}

pub(crate) fn command(program: &Path, user: Option<(u32, u32)>) -> Command {
    let mut cmd = Command::new(program);
    if let Some((uid, gid)) = user {
        cmd.uid(uid).gid(gid);
    }
    cmd.env_remove("PGDATA").env("LC_ALL", "C");
    cmd
}

fn run(mut cmd: Command, what: &str) -> Result<(), HarnessError> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| HarnessError::io(format!("running {what}"), e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(HarnessError::new(format!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        )))
    }
}

/// A data directory made by `initdb` once per machine (per server version) and copied by every cluster:
/// a copy takes a tenth of the time of an `initdb`. Test processes race to create it safely: each builds
/// its own and renames it into place; the loser removes its copy. It trusts every connection; a cluster
/// that wants a password sets one after its first start (so passwords never multiply templates).
fn template(bin: &Path, user: Option<(u32, u32)>) -> Result<PathBuf, HarnessError> {
    let key = fnv1a(bin.display().to_string().as_bytes());
    let root = std::env::temp_dir().join("rampart-pg-templates");
    let path = root.join(format!("{key:016x}"));
    if path.join("PG_VERSION").is_file() {
        return Ok(path);
    }
    std::fs::create_dir_all(&root)
        .map_err(|e| HarnessError::io("creating the template directory", e))?;
    let staging = tempfile::Builder::new()
        .prefix(".staging-")
        .tempdir_in(&root)
        .map_err(|e| HarnessError::io("creating a staging directory", e))?;
    chown(staging.path(), user)?;
    let data = staging.path().join("data");
    let mut cmd = command(&bin.join("initdb"), user);
    cmd.args([
        "--no-sync",
        "--no-instructions",
        "-U",
        "postgres",
        "--encoding=UTF8",
        "--locale=C",
        "--auth=trust",
        "-D",
    ])
    .arg(&data);
    run(cmd, "initdb")?;
    // Another process may have won the race; its template is as good as ours.
    if std::fs::rename(&data, &path).is_err() && !path.join("PG_VERSION").is_file() {
        return Err(HarnessError::new(format!(
            "could not move the template cluster into {}",
            path.display()
        )));
    }
    Ok(path)
}

/// Stops and removes clusters whose test process died without dropping them (killed by a timeout, say):
/// each cluster directory records its owner's pid, and a server whose owner is gone is nobody's.
fn reap_orphans(bin: &Path, user: Option<(u32, u32)>) {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        let is_cluster = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with("rampart-pg-"));
        let Ok(owner) = std::fs::read_to_string(dir.join("owner.pid")) else {
            continue;
        };
        // An owner that does not read as a pid is one still being written: not an orphan.
        let alive = owner
            .trim()
            .parse::<u32>()
            .map_or(true, |pid| Path::new(&format!("/proc/{pid}")).exists());
        if !is_cluster || alive {
            continue;
        }
        if dir.join("data").join("postmaster.pid").is_file() {
            let mut cmd = command(&bin.join("pg_ctl"), user);
            cmd.args(["stop", "-w", "-t", "10", "-m", "immediate", "-D"])
                .arg(dir.join("data"));
            let _ = cmd
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Records this process as the owner of the cluster directory `dir`, atomically (written aside, then
/// renamed): another test process reaping orphans must never read a half-written owner, take it for a
/// dead one and remove a cluster being made.
fn record_owner(dir: &Path) -> Result<(), HarnessError> {
    let aside = dir.join("owner.pid.new");
    std::fs::write(&aside, std::process::id().to_string())
        .and_then(|()| std::fs::rename(&aside, dir.join("owner.pid")))
        .map_err(|e| HarnessError::io("recording the cluster's owner", e))
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

pub(crate) fn chown(path: &Path, user: Option<(u32, u32)>) -> Result<(), HarnessError> {
    if let Some((uid, gid)) = user {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .map_err(|e| HarnessError::io(format!("chown {}", path.display()), e))?;
    }
    Ok(())
}

pub(crate) fn owned_temp_dir(user: Option<(u32, u32)>) -> Result<tempfile::TempDir, HarnessError> {
    let dir = tempfile::Builder::new()
        .prefix("rampart-pg-")
        .tempdir()
        .map_err(|e| HarnessError::io("creating a temporary directory", e))?;
    chown(dir.path(), user)?;
    Ok(dir)
}

pub(crate) fn free_port() -> Result<u16, HarnessError> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| HarnessError::io("finding a free loopback port", e))
}

/// Settings for a throwaway cluster; see [`Cluster::builder`].
#[derive(Clone, Default)]
pub struct ClusterBuilder {
    settings: Vec<(String, String)>,
    password: Option<String>,
    /// The server's certificate, its key and the CA it trusts for client certificates.
    tls: Option<(PathBuf, PathBuf, PathBuf)>,
    hba: Vec<String>,
}

impl fmt::Debug for ClusterBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterBuilder")
            .field("settings", &self.settings)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls.is_some())
            .field("hba", &self.hba)
            .finish()
    }
}

impl ClusterBuilder {
    /// Passes `-c name=value` to the server, for example `("max_connections", "10")` or
    /// `("idle_session_timeout", "2s")`. Later settings win.
    pub fn setting(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.push((name.into(), value.into()));
        self
    }

    /// Requires this password (SCRAM) for the `postgres` user over TCP. Without it, the cluster trusts
    /// every local connection.
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// Turns TLS on (`ssl=on`) with `certs`' server certificate (for `localhost` and `127.0.0.1`), and
    /// trusts client certificates signed by `certs`' CA (`ssl_ca_file`), which `clientcert=verify-full`
    /// in a [`hba`](Self::hba) line then requires.
    pub fn tls(mut self, certs: &TestCerts) -> Self {
        self.tls = Some((certs.server_cert(), certs.server_key(), certs.ca()));
        self
    }

    /// Like [`tls`](Self::tls), with a server certificate that has expired.
    pub fn tls_expired(mut self, certs: &TestCerts) -> Self {
        self.tls = Some((
            certs.expired_server_cert(),
            certs.expired_server_key(),
            certs.ca(),
        ));
        self
    }

    /// Adds a `pg_hba.conf` line for TCP connections, such as
    /// `hostssl all all 127.0.0.1/32 scram-sha-256 clientcert=verify-full` or
    /// `hostnossl all all 127.0.0.1/32 trust`. With any such line, these lines are the whole of the TCP
    /// rules (Unix-socket connections stay trusted, for the harness itself).
    pub fn hba(mut self, line: impl Into<String>) -> Self {
        self.hba.push(line.into());
        self
    }

    /// Creates the cluster and starts it, waiting until it accepts connections.
    pub async fn start(self) -> Result<Cluster, HarnessError> {
        let bin = find_bin_dir()?;
        let user = run_as()?;
        reap_orphans(&bin, user);
        let template = template(&bin, user)?;
        let dir = owned_temp_dir(user)?;
        record_owner(dir.path())?;
        let data = dir.path().join("data");
        let mut cp = command(Path::new("cp"), user);
        cp.arg("-a").arg(&template).arg(&data);
        run(cp, "copying the template cluster")?;
        if !self.hba.is_empty() {
            let mut hba = String::from("local all all trust\nlocal replication all trust\n");
            for line in &self.hba {
                hba.push_str(line);
                hba.push('\n');
            }
            std::fs::write(data.join("pg_hba.conf"), hba)
                .map_err(|e| HarnessError::io("writing pg_hba.conf", e))?;
        } else if self.password.is_some() {
            // Local (socket) connections stay trusted, for the harness itself; TCP needs the password.
            let hba = "local all all trust\nlocal replication all trust\nhost all all 127.0.0.1/32 scram-sha-256\nhost all all ::1/128 scram-sha-256\n";
            std::fs::write(data.join("pg_hba.conf"), hba)
                .map_err(|e| HarnessError::io("writing pg_hba.conf", e))?;
        }
        let mut settings = Vec::new();
        if let Some((cert, key, ca)) = &self.tls {
            // The server reads these as its own user, and refuses a key that others may read.
            for (from, name) in [
                (cert, "server.crt"),
                (key, "server.key"),
                (ca, "client-ca.crt"),
            ] {
                let to = data.join(name);
                std::fs::copy(from, &to).map_err(|e| {
                    HarnessError::io(format!("copying {} into the cluster", from.display()), e)
                })?;
                chown(&to, user)?;
                std::fs::set_permissions(&to, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                    .map_err(|e| HarnessError::io(format!("chmod {}", to.display()), e))?;
            }
            for (name, value) in [
                ("ssl", "on"),
                ("ssl_cert_file", "server.crt"),
                ("ssl_key_file", "server.key"),
                ("ssl_ca_file", "client-ca.crt"),
            ] {
                settings.push((name.to_owned(), value.to_owned()));
            }
        }
        settings.extend(self.settings);
        let cluster = Cluster {
            bin,
            user,
            port: free_port()?,
            settings,
            password: self.password,
            data,
            process: Process::default(),
            dir,
        };
        cluster.start().await?;
        if let Some(password) = &cluster.password {
            let admin = cluster.socket_client().await?;
            let literal = password.replace('\'', "''");
            admin
                .batch_execute(&format!(
                    "SET password_encryption = 'scram-sha-256'; ALTER ROLE postgres PASSWORD '{literal}'"
                ))
                .await
                .map_err(|e| HarnessError::new(format!("setting the cluster's password failed: {e}")))?;
        }
        Ok(cluster)
    }
}

/// A PostgreSQL server of its own for one test: its own data directory and loopback port.
///
/// Stop, kill and restart it to make the faults a real server has. It keeps its port and data across
/// restarts, so clients configured with [`url`](Cluster::url) reconnect to the same place. Dropping it
/// stops the server and removes its files.
pub struct Cluster {
    bin: PathBuf,
    user: Option<(u32, u32)>,
    port: u16,
    settings: Vec<(String, String)>,
    password: Option<String>,
    data: PathBuf,
    process: Process,
    // Last, so it is removed after the server has stopped (see Drop).
    dir: tempfile::TempDir,
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster")
            .field("port", &self.port)
            .field("data", &self.data)
            .field("running", &self.is_running())
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// A builder for a cluster with server settings of your choice.
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::default()
    }

    /// Starts a cluster with default settings.
    pub async fn new() -> Result<Cluster, HarnessError> {
        Self::builder().start().await
    }

    /// The server's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// A connection URL for the `postgres` database as the `postgres` user, including the password if
    /// the cluster has one.
    pub fn url(&self) -> String {
        self.url_for(self.addr())
    }

    /// The same URL, pointed at another address (a [`FaultProxy`](super::FaultProxy) in front of this cluster).
    pub fn url_for(&self, addr: SocketAddr) -> String {
        match &self.password {
            Some(pw) => format!("postgres://postgres:{pw}@{addr}/postgres"),
            None => format!("postgres://postgres@{addr}/postgres"),
        }
    }

    /// One URL naming every cluster of `clusters` as a host, in order, with `params` as its query (such
    /// as `target_session_attrs=read-write`): what an application is given for a primary and its
    /// standbys. The password is the first cluster's (a standby has its primary's).
    pub fn url_of_all(clusters: &[&Cluster], params: &str) -> String {
        let hosts = clusters
            .iter()
            .map(|c| c.addr().to_string())
            .collect::<Vec<_>>()
            .join(",");
        let auth = match clusters.first().and_then(|c| c.password.as_deref()) {
            Some(pw) => format!("postgres:{pw}"),
            None => "postgres".to_owned(),
        };
        let query = if params.is_empty() {
            String::new()
        } else {
            format!("?{params}")
        };
        format!("postgres://{auth}@{hosts}/postgres{query}")
    }

    /// The same URL with another host name in it, for TLS tests: `postgres://postgres@{host}:{port}/postgres`.
    /// With `hostaddr=127.0.0.1` in the query, a client connects here and verifies the certificate
    /// against `host`.
    pub fn url_with_host(&self, host: &str) -> String {
        let port = self.port;
        match &self.password {
            Some(pw) => format!("postgres://postgres:{pw}@{host}:{port}/postgres"),
            None => format!("postgres://postgres@{host}:{port}/postgres"),
        }
    }

    pub(crate) fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// The data directory (for reading the server log, `server.log` beside it).
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// Whether the server process is running.
    pub fn is_running(&self) -> bool {
        self.process.is_running()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// The last lines of the server log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        process::log_tail(&self.log_path(), lines)
    }

    /// Starts the server (again) on the same port and data, and waits until it accepts connections.
    /// Starting a running cluster does nothing.
    pub async fn start(&self) -> Result<(), HarnessError> {
        if self.is_running() {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| HarnessError::io("opening the server log", e))?;
        chown(&self.log_path(), self.user)?;
        let log2 = log
            .try_clone()
            .map_err(|e| HarnessError::io("opening the server log", e))?;
        let mut cmd = command(&self.bin.join("postgres"), self.user);
        cmd.arg("-D")
            .arg(&self.data)
            .arg("-p")
            .arg(self.port.to_string());
        let socket_dir = self.dir.path().to_string_lossy().into_owned();
        let defaults = [
            ("listen_addresses", "127.0.0.1"),
            ("unix_socket_directories", socket_dir.as_str()),
            ("fsync", "off"),
            ("synchronous_commit", "off"),
            ("full_page_writes", "off"),
            ("shared_buffers", "16MB"),
            ("max_connections", "100"),
        ];
        let settings = defaults
            .iter()
            .map(|(k, v)| (*k, *v))
            .chain(self.settings.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        for (name, value) in settings {
            cmd.arg("-c").arg(format!("{name}={value}"));
        }
        cmd.stdin(Stdio::null()).stdout(log).stderr(log2);
        let child = cmd
            .spawn()
            .map_err(|e| HarnessError::io("starting postgres", e))?;
        self.process.set(child);
        self.wait_ready().await
    }

    /// Connection settings for the server's Unix socket, which trusts the `postgres` user whatever the
    /// TCP rules say.
    fn socket_config(&self) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(self.dir.path())
            .port(self.port)
            .user("postgres")
            .dbname("postgres");
        config
    }

    async fn socket_client(&self) -> Result<tokio_postgres::Client, HarnessError> {
        let (client, connection) = self
            .socket_config()
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| {
                HarnessError::new(format!("connecting to the cluster's socket failed: {e}"))
            })?;
        tokio::spawn(connection);
        Ok(client)
    }

    async fn wait_ready(&self) -> Result<(), HarnessError> {
        let log = self.log_path();
        process::wait_until_answering(
            "postgres",
            &self.socket_config(),
            &self.process,
            &log,
            START_TIMEOUT,
        )
        .await
    }

    fn pg_ctl_stop(&self, mode: &str) -> Result<(), HarnessError> {
        let Some(mut process) = self.process.take() else {
            return Ok(());
        };
        if matches!(process.try_wait(), Ok(Some(_))) {
            return Ok(());
        }
        let mut cmd = command(&self.bin.join("pg_ctl"), self.user);
        cmd.args(["stop", "-w", "-t", "30", "-m", mode, "-D"])
            .arg(&self.data);
        let result = run(cmd, &format!("pg_ctl stop -m {mode}"));
        if result.is_err() {
            let _ = process.kill();
        }
        let _ = process.wait();
        result
    }

    /// Fast shutdown (`pg_ctl stop -m fast`): backends are terminated and clients see their connections
    /// closed, as in a managed restart. Blocks until the server has exited.
    pub fn stop(&self) -> Result<(), HarnessError> {
        self.pg_ctl_stop("fast")
    }

    /// Immediate shutdown (`pg_ctl stop -m immediate`), like a crash: no clean shutdown, recovery on the
    /// next start.
    pub fn kill(&self) -> Result<(), HarnessError> {
        self.pg_ctl_stop("immediate")
    }

    /// Fast stop followed by start on the same port and data.
    pub async fn restart(&self) -> Result<(), HarnessError> {
        self.stop()?;
        self.start().await
    }

    /// A hot standby of this cluster, streaming from it: a base backup (`pg_basebackup -R`, through
    /// the primary's Unix socket, so it works whatever the TCP rules say) started on a port of its own
    /// with the same settings and password. It answers reads and refuses writes (`25006`) until
    /// [`promote`](Self::promote)d; if the primary is [kill](Self::kill)ed, it keeps its data up to the
    /// last record it received.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), rampart::testing::HarnessError> {
    /// let primary = rampart::testing::Cluster::new().await?;
    /// let standby = primary.standby().await?;
    /// let url = format!(
    ///     "host=127.0.0.1,127.0.0.1 port={},{} user=postgres dbname=postgres target_session_attrs=read-write",
    ///     primary.port(),
    ///     standby.port()
    /// );
    /// primary.kill()?; // a crash
    /// standby.promote().await?; // the failover
    /// # let _ = url; Ok(()) }
    /// ```
    pub async fn standby(&self) -> Result<Cluster, HarnessError> {
        if !self.is_running() {
            return Err(HarnessError::new(
                "a standby needs a running primary to take its base backup from",
            ));
        }
        let dir = owned_temp_dir(self.user)?;
        record_owner(dir.path())?;
        let data = dir.path().join("data");
        let mut backup = command(&self.bin.join("pg_basebackup"), self.user);
        backup
            .arg("-h")
            .arg(self.dir.path())
            .arg("-p")
            .arg(self.port.to_string())
            .args([
                "-U",
                "postgres",
                "--no-sync",
                "--checkpoint=fast",
                "--wal-method=stream",
                "--write-recovery-conf",
                "-D",
            ])
            .arg(&data);
        run(backup, "pg_basebackup")?;
        let standby = Cluster {
            bin: self.bin.clone(),
            user: self.user,
            port: free_port()?,
            settings: self.settings.clone(),
            password: self.password.clone(),
            data,
            process: Process::default(),
            dir,
        };
        standby.start().await?;
        Ok(standby)
    }

    /// Promotes a standby to a primary (`pg_promote`), and returns within about a millisecond of its
    /// leaving recovery (it takes writes from then): the moment to time a failover from. (`pg_ctl
    /// promote -w` and `pg_promote(true)` notice only at their next 100 ms poll.)
    pub async fn promote(&self) -> Result<(), HarnessError> {
        let admin = self.socket_client().await?;
        let failed = |e: tokio_postgres::Error| {
            let cause = e
                .as_db_error()
                .map_or(e.to_string(), |db| db.message().to_owned());
            HarnessError::new(format!("promoting the standby failed: {cause}"))
        };
        admin
            .execute("SELECT pg_promote(false)", &[])
            .await
            .map_err(failed)?;
        let started = std::time::Instant::now();
        loop {
            let row = admin
                .query_one("SELECT pg_is_in_recovery()", &[])
                .await
                .map_err(failed)?;
            if !row.get::<_, bool>(0) {
                return Ok(());
            }
            if started.elapsed() > START_TIMEOUT {
                return Err(HarnessError::new(format!(
                    "the standby did not leave recovery within {START_TIMEOUT:?}; its log ends with:\n{}",
                    self.log_tail(20)
                )));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Whether the server is a standby (`pg_is_in_recovery()`).
    pub async fn is_in_recovery(&self) -> Result<bool, HarnessError> {
        let admin = self.socket_client().await?;
        admin
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .map(|row| row.get(0))
            .map_err(|e| HarnessError::new(format!("asking whether the server is a standby: {e}")))
    }

    /// Makes the server refuse writes while it goes on answering reads, as a demoted writer does
    /// (Aurora's old writer after a failover): `default_transaction_read_only` is set for the whole
    /// server and the configuration reloaded, so every session, the open ones included from their next
    /// statement, fails a write with `25006` (read-only transaction) and tells a `target_session_attrs`
    /// check it is read-only. `false` undoes it.
    pub async fn set_read_only(&self, read_only: bool) -> Result<(), HarnessError> {
        let admin = self.socket_client().await?;
        let value = if read_only { "on" } else { "off" };
        // Two statements: ALTER SYSTEM may not run inside the implicit transaction of a batch.
        for sql in [
            format!("ALTER SYSTEM SET default_transaction_read_only = {value}"),
            "SELECT pg_reload_conf()".to_owned(),
        ] {
            admin.batch_execute(&sql).await.map_err(|e| {
                let cause = e
                    .as_db_error()
                    .map_or(e.to_string(), |db| db.message().to_owned());
                HarnessError::new(format!("`{sql}` failed: {cause}"))
            })?;
        }
        // The reload reaches the backends asynchronously: wait until a new session sees it.
        super::until_async("the server's read-only setting takes effect", || async {
            match self.socket_client().await {
                Ok(client) => client
                    .query_one("SHOW default_transaction_read_only", &[])
                    .await
                    .is_ok_and(|row| row.get::<_, String>(0) == value),
                Err(_) => false,
            }
        })
        .await;
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // On failure pg_ctl_stop has killed the process itself.
        let _ = self.pg_ctl_stop("immediate");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_binaries_fail_with_install_instructions() {
        let empty = tempfile::tempdir().unwrap();
        let err = find_bin_dir_from(None, empty.path(), "/nonexistent/pg_config").unwrap_err();
        assert!(
            err.message().contains("apt-get install -y postgresql"),
            "{err}"
        );
        assert!(err.message().contains("PG_BIN"), "{err}");

        let err = find_bin_dir_from(
            Some(empty.path().into()),
            empty.path(),
            "/nonexistent/pg_config",
        )
        .unwrap_err();
        assert!(err.message().contains("PG_BIN is set"), "{err}");
    }

    #[test]
    fn newest_installed_version_wins() {
        let root = tempfile::tempdir().unwrap();
        for version in ["9", "15", "13"] {
            let bin = root.path().join(version).join("bin");
            std::fs::create_dir_all(&bin).unwrap();
            std::fs::write(bin.join("initdb"), "").unwrap();
            std::fs::write(bin.join("postgres"), "").unwrap();
        }
        let found = find_bin_dir_from(None, root.path(), "/nonexistent/pg_config").unwrap();
        assert_eq!(found, root.path().join("15").join("bin"));
    }
}
