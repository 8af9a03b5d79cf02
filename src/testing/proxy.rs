//! An in-process TCP proxy with switchable network faults.

use std::collections::HashMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::{Cluster, HarnessError};

/// The fault a [`FaultProxy`] applies to traffic. Switching takes effect on open links as well as new ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Fault {
    /// Forward everything as it comes.
    #[default]
    PassThrough,
    /// Delay every chunk of data, in both directions, by this much.
    Latency(Duration),
    /// Accept bytes and forward nothing, in both directions, with no reset: a dead network path, or a peer
    /// whose kernel still acknowledges but which never answers. Held bytes are delivered when the fault is
    /// lifted, as TCP would retransmit them.
    BlackHole,
    /// Stop listening: new connections are refused by the kernel (`ECONNREFUSED`), as when nothing listens
    /// on the port. Open links are untouched.
    Refuse,
    /// Accept new connections and reset them at once. Open links are untouched.
    ResetNew,
}

/// Counters of what went through a [`FaultProxy`]; see [`FaultProxy::stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ProxyStats {
    /// Links accepted from clients (including those reset at once by [`Fault::ResetNew`]).
    pub links_accepted: u64,
    /// Links connected through to the server.
    pub links_opened: u64,
    /// Links open right now.
    pub links_open: u64,
    /// Bytes forwarded from clients to the server.
    pub bytes_to_server: u64,
    /// Bytes forwarded from the server to clients.
    pub bytes_to_client: u64,
    /// Links closed by [`FaultProxy::reset_all`], [`FaultProxy::kill_silently`],
    /// [`FaultProxy::drop_silently`] or the idle cut.
    pub links_killed: u64,
}

/// What happens to an open link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Alive,
    /// Reset both sides now.
    Reset,
    /// Close the server side; tell the client nothing until it writes, then reset it.
    SilentKill,
    /// Close both sides in order (a FIN each way), as a server or a middlebox that hangs up politely.
    Close,
    /// Close the server side; swallow whatever the client writes and answer nothing, ever.
    SilentDrop,
}

struct LinkEntry {
    fate: watch::Sender<Fate>,
    last_active: Arc<AtomicU64>,
}

struct Shared {
    upstream: SocketAddr,
    fault: watch::Sender<Fault>,
    idle_cut: Mutex<Option<Duration>>,
    links: Mutex<HashMap<u64, LinkEntry>>,
    epoch: Instant,
    next_id: AtomicU64,
    links_accepted: AtomicU64,
    links_opened: AtomicU64,
    bytes_to_server: AtomicU64,
    bytes_to_client: AtomicU64,
    links_killed: AtomicU64,
}

impl Shared {
    fn now_millis(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn doom(&self, fate: Fate, filter: impl Fn(&LinkEntry) -> bool) -> usize {
        let links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        let mut n = 0;
        for entry in links.values().filter(|e| filter(e)) {
            if *entry.fate.borrow() == Fate::Alive {
                entry.fate.send_replace(fate);
                n += 1;
            }
        }
        self.links_killed.fetch_add(n as u64, Ordering::Relaxed);
        n
    }
}

/// A TCP proxy on its own loopback port, in this process, between clients and a server.
///
/// Put it between a client and a [`Cluster`] to give the network the faults real ones have: latency,
/// black holes, resets, refused connections, and the silent kill of idle links that NAT gateways, load
/// balancers and serverless front ends do. It counts links and bytes so tests can assert how many
/// connections a client opened. Dropping it stops the proxy and closes every link.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    tasks: tokio::task::JoinSet<()>,
}

impl fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultProxy")
            .field("addr", &self.addr)
            .field("upstream", &self.shared.upstream)
            .field("fault", &self.fault())
            .field("stats", &self.stats())
            .finish()
    }
}

impl FaultProxy {
    /// Starts a proxy on a free loopback port, forwarding to `upstream`. Must be called within a Tokio
    /// runtime; the proxy's tasks run on it.
    pub async fn start(upstream: SocketAddr) -> Result<FaultProxy, HarnessError> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .map_err(|e| HarnessError::io("binding the fault proxy", e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| HarnessError::io("binding the fault proxy", e))?;
        let shared = Arc::new(Shared {
            upstream,
            fault: watch::Sender::new(Fault::PassThrough),
            idle_cut: Mutex::new(None),
            links: Mutex::new(HashMap::new()),
            epoch: Instant::now(),
            next_id: AtomicU64::new(0),
            links_accepted: AtomicU64::new(0),
            links_opened: AtomicU64::new(0),
            bytes_to_server: AtomicU64::new(0),
            bytes_to_client: AtomicU64::new(0),
            links_killed: AtomicU64::new(0),
        });
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(accept_loop(listener, addr, shared.clone()));
        tasks.spawn(idle_reaper(shared.clone()));
        Ok(FaultProxy {
            addr,
            shared,
            tasks,
        })
    }

    /// The proxy's address: point clients here.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The cluster's connection URL, pointed at this proxy.
    pub fn url(&self, cluster: &Cluster) -> String {
        cluster.url_for(self.addr)
    }

    /// Switches the fault. It applies to open links at once and to every new one.
    pub fn set_fault(&self, fault: Fault) {
        self.shared.fault.send_replace(fault);
    }

    /// The fault in force.
    pub fn fault(&self) -> Fault {
        *self.shared.fault.borrow()
    }

    /// Resets every open link now, on both sides (the client sees `ECONNRESET`). Returns how many.
    pub fn reset_all(&self) -> usize {
        self.shared.doom(Fate::Reset, |_| true)
    }

    /// Closes every open link on both sides with a FIN (an orderly close, no reset). Returns how many.
    pub fn close_all(&self) -> usize {
        self.shared.doom(Fate::Close, |_| true)
    }

    /// Closes the server side of every open link and tells the client nothing: the client learns only
    /// when its next write meets a reset. This is what a NAT gateway, load balancer or suspending serverless
    /// host does to idle connections, and the only way to reproduce "connection already closed": a server
    /// that closes openly is noticed by an idle client at once. Returns how many links were killed.
    pub fn kill_silently(&self) -> usize {
        self.shared.doom(Fate::SilentKill, |_| true)
    }

    /// Forgets every open link without a word, as a front end that black-holes flows it no longer knows
    /// (a Neon-like proxy after a suspend, a firewall that drops instead of resetting): the server side is
    /// closed, and whatever the client writes vanishes with no answer and no reset. New links are not
    /// affected. Returns how many links were dropped.
    pub fn drop_silently(&self) -> usize {
        self.shared.doom(Fate::SilentDrop, |_| true)
    }

    /// From now on, silently kills (as [`kill_silently`](Self::kill_silently)) every link that has carried
    /// no bytes for longer than `idle`; `None` turns this off.
    pub fn set_idle_cut(&self, idle: Option<Duration>) {
        *self
            .shared
            .idle_cut
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = idle;
    }

    /// What has gone through the proxy so far.
    pub fn stats(&self) -> ProxyStats {
        let s = &self.shared;
        ProxyStats {
            links_accepted: s.links_accepted.load(Ordering::Relaxed),
            links_opened: s.links_opened.load(Ordering::Relaxed),
            links_open: s.links.lock().unwrap_or_else(|p| p.into_inner()).len() as u64,
            bytes_to_server: s.bytes_to_server.load(Ordering::Relaxed),
            bytes_to_client: s.bytes_to_client.load(Ordering::Relaxed),
            links_killed: s.links_killed.load(Ordering::Relaxed),
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.doom(Fate::Reset, |_| true);
        self.tasks.abort_all();
    }
}

async fn accept_loop(listener: TcpListener, addr: SocketAddr, shared: Arc<Shared>) {
    let mut faults = shared.fault.subscribe();
    let mut listener = Some(listener);
    loop {
        let Some(l) = listener.as_ref() else {
            // Refusing: nothing listens until the fault changes; then listen again on the same port.
            let _ = faults.wait_for(|f| *f != Fault::Refuse).await;
            match TcpListener::bind(addr).await {
                Ok(l) => listener = Some(l),
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
            continue;
        };
        tokio::select! {
            accepted = l.accept() => {
                let Ok((client, _)) = accepted else { continue };
                shared.links_accepted.fetch_add(1, Ordering::Relaxed);
                match *shared.fault.borrow() {
                    Fault::ResetNew | Fault::Refuse => {
                        reset(client);
                        continue;
                    }
                    _ => {}
                }
                tokio::spawn(run_link(client, shared.clone()));
            }
            _ = faults.wait_for(|f| *f == Fault::Refuse) => {
                listener = None;
            }
        }
    }
}

async fn idle_reaper(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    loop {
        tick.tick().await;
        let idle = *shared.idle_cut.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(idle) = idle {
            let now = shared.now_millis();
            let limit = idle.as_millis() as u64;
            shared.doom(Fate::SilentKill, |e| {
                now.saturating_sub(e.last_active.load(Ordering::Relaxed)) > limit
            });
        }
    }
}

/// Closes a socket with a reset (RST) instead of an orderly FIN.
fn reset(stream: TcpStream) {
    #[allow(deprecated)]
    // set_linger blocks on close only for a non-zero linger; zero means reset at once.
    let _ = stream.set_linger(Some(Duration::ZERO));
    drop(stream);
}

async fn run_link(mut client: TcpStream, shared: Arc<Shared>) {
    let mut server = match TcpStream::connect(shared.upstream).await {
        Ok(s) => s,
        Err(_) => {
            // Nothing behind us: the client sees its connection reset, as through any TCP proxy.
            reset(client);
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    shared.links_opened.fetch_add(1, Ordering::Relaxed);
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let (fate_tx, mut fate) = watch::channel(Fate::Alive);
    let last_active = Arc::new(AtomicU64::new(shared.now_millis()));
    shared
        .links
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(
            id,
            LinkEntry {
                fate: fate_tx,
                last_active: last_active.clone(),
            },
        );

    let ending = {
        let (mut cr, mut cw) = client.split();
        let (mut sr, mut sw) = server.split();
        let up = pump(
            &mut cr,
            &mut sw,
            &shared,
            &last_active,
            &shared.bytes_to_server,
        );
        let down = pump(
            &mut sr,
            &mut cw,
            &shared,
            &last_active,
            &shared.bytes_to_client,
        );
        tokio::select! {
            _ = async { tokio::join!(up, down) } => Fate::Alive,
            fate = fate.wait_for(|f| *f != Fate::Alive) => fate.map(|f| *f).unwrap_or(Fate::Reset),
        }
    };
    shared
        .links
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&id);
    match ending {
        Fate::Alive => {}
        Fate::Reset => {
            reset(client);
            reset(server);
        }
        Fate::Close => {
            let (mut client, mut server) = (client, server);
            let _ = client.shutdown().await;
            let _ = server.shutdown().await;
        }
        Fate::SilentKill => {
            // The server sees its client go away; the client hears nothing until it sends something.
            drop(server);
            let mut buf = [0u8; 1];
            let _ = client.read(&mut buf).await;
            reset(client);
        }
        Fate::SilentDrop => {
            drop(server);
            let mut buf = vec![0u8; 16 * 1024];
            while let Ok(n) = client.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        }
    }
}

/// Copies one direction, applying the fault in force to every chunk. Ends on EOF or error, after
/// passing the EOF on.
async fn pump<R, W>(
    from: &mut R,
    to: &mut W,
    shared: &Shared,
    last_active: &AtomicU64,
    bytes: &AtomicU64,
) where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut faults = shared.fault.subscribe();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        last_active.store(shared.now_millis(), Ordering::Relaxed);
        // Hold the bytes while the path is a black hole.
        let fault = faults
            .wait_for(|f| *f != Fault::BlackHole)
            .await
            .map(|f| *f)
            .unwrap_or_default();
        if let Fault::Latency(delay) = fault {
            tokio::time::sleep(delay).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
        bytes.fetch_add(n as u64, Ordering::Relaxed);
        last_active.store(shared.now_millis(), Ordering::Relaxed);
    }
}
