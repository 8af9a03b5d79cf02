//! What one dead connection says about the others.
//!
//! A middlebox that forgets one idle flow has usually forgotten every flow idle as long (a NAT table
//! flushed, a load balancer's idle limit, a serverless compute suspended), and a silent kill is visible
//! only to a write. So when a connection is found dead, every connection whose last successful use was
//! no later than about the dead one's (within a bypass window of it: connections that went quiet together
//! are not returned to the pool in the same microsecond) becomes *suspect*: checked before hand-out even
//! inside the bypass window. When a check *times out* (writes vanish, nothing comes back: a black hole),
//! connections as old are *doomed*: dropped at checkout without a check, since each check of a
//! black-holed link would cost the whole check timeout, one after another.
//!
//! A connection that was used successfully after the thresholds is trusted again; a new one always is.
//!
//! A request that meets `25006` (read-only transaction) says something of another kind: its *server* no
//! longer takes writes (a failover demoted it, or left it a standby). Every connection to that host made
//! before then is on it, and no check at checkout would find out (it answers reads), so each is
//! *retired*: dropped at checkout, and at once if idle. New connections go through `target_session_attrs` (or the
//! DNS name a managed writer endpoint moves) to the server that takes writes now.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::sync::lock;

/// What the pool believes about an idle connection, from its last successful use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Nothing against it: the validation policy decides (bypass window or check).
    Trusted,
    /// Idle as long as one found dead: check it whatever the bypass window says.
    Suspect,
    /// Idle as long as one whose check timed out: drop it unchecked.
    Doomed,
}

/// The thresholds, as nanoseconds since `origin` plus one (zero: none).
#[derive(Debug)]
pub(super) struct Suspicion {
    origin: Instant,
    /// How close to a dead connection's last use another's must be to count as "as old".
    margin: Duration,
    suspect_until: AtomicU64,
    doomed_until: AtomicU64,
    /// Hosts that refused a write, each with the moment: connections to it made no later are retired.
    retired: Mutex<Vec<(Arc<str>, u64)>>,
}

impl Suspicion {
    pub(super) fn new(margin: Duration) -> Self {
        Self {
            origin: Instant::now(),
            margin,
            suspect_until: AtomicU64::new(0),
            doomed_until: AtomicU64::new(0),
            retired: Mutex::new(Vec::new()),
        }
    }

    fn encode(&self, at: Instant) -> u64 {
        (at.saturating_duration_since(self.origin).as_nanos() as u64).saturating_add(1)
    }

    /// The threshold a connection last used at `last_ok` and found dead now sets: its last use plus the
    /// margin, but never past now (a connection used since is proven alive).
    fn threshold(&self, last_ok: Option<Instant>) -> u64 {
        let now = Instant::now();
        let until = last_ok
            .and_then(|at| at.checked_add(self.margin))
            .map_or(now, |at| at.min(now));
        self.encode(until)
    }

    /// A connection last used successfully at `last_ok` was found dead (closed, reset, a failed check, a
    /// link lost under a request): those as old are suspect.
    pub(super) fn found_dead(&self, last_ok: Option<Instant>) {
        self.suspect_until
            .fetch_max(self.threshold(last_ok), Ordering::Relaxed);
    }

    /// A connection last used successfully at `last_ok` did not answer its check in time: those as old
    /// are doomed (and suspect).
    pub(super) fn found_black_holed(&self, last_ok: Option<Instant>) {
        let at = self.threshold(last_ok);
        self.suspect_until.fetch_max(at, Ordering::Relaxed);
        self.doomed_until.fetch_max(at, Ordering::Relaxed);
    }

    /// A request on a connection to `host` met `25006` now: every connection to it made until now is
    /// retired.
    pub(super) fn found_read_only(&self, host: &Arc<str>) {
        let now = self.encode(Instant::now());
        let mut retired = lock(&self.retired);
        match retired.iter_mut().find(|(h, _)| h == host) {
            Some((_, at)) => *at = (*at).max(now),
            None => retired.push((host.clone(), now)),
        }
    }

    /// The host that refused a write last.
    pub(super) fn last_read_only(&self) -> Option<Arc<str>> {
        let retired = lock(&self.retired);
        retired
            .iter()
            .max_by_key(|(_, at)| *at)
            .map(|(h, _)| h.clone())
    }

    /// Whether a connection to `host` made at `created_at` is retired (see
    /// [`found_read_only`](Self::found_read_only)).
    pub(super) fn retired(&self, host: &str, created_at: Instant) -> bool {
        let made = self.encode(created_at);
        lock(&self.retired)
            .iter()
            .any(|(h, at)| &**h == host && made <= *at)
    }

    /// What to do with an idle connection last used successfully at `last_ok` (`None`: never).
    pub(super) fn verdict(&self, last_ok: Option<Instant>) -> Verdict {
        let Some(at) = last_ok else {
            return Verdict::Suspect;
        };
        let at = self.encode(at);
        if at <= self.doomed_until.load(Ordering::Relaxed) {
            Verdict::Doomed
        } else if at <= self.suspect_until.load(Ordering::Relaxed) {
            Verdict::Suspect
        } else {
            Verdict::Trusted
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn connections_as_old_as_a_dead_one_are_suspect_and_newer_ones_trusted() {
        let s = Suspicion::new(Duration::from_millis(500));
        let old = Instant::now();
        tokio::time::advance(Duration::from_millis(300)).await;
        let younger = Instant::now();
        tokio::time::advance(Duration::from_secs(2)).await;
        let fresh = Instant::now();
        assert_eq!(s.verdict(Some(old)), Verdict::Trusted);
        s.found_dead(Some(old));
        assert_eq!(s.verdict(Some(old)), Verdict::Suspect);
        assert_eq!(
            s.verdict(Some(younger)),
            Verdict::Suspect,
            "within the margin"
        );
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(s.verdict(Some(fresh)), Verdict::Trusted);
        s.found_black_holed(Some(old));
        assert_eq!(s.verdict(Some(younger)), Verdict::Doomed);
        assert_eq!(s.verdict(Some(fresh)), Verdict::Trusted);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_write_retires_every_connection_to_its_host_made_until_then() {
        let s = Suspicion::new(Duration::from_millis(500));
        let old = Instant::now();
        let demoted: Arc<str> = "a:5432".into();
        assert!(!s.retired("a:5432", old));
        tokio::time::advance(Duration::from_millis(10)).await;
        s.found_read_only(&demoted);
        assert!(s.retired("a:5432", old));
        assert!(!s.retired("b:5432", old), "another host's connections stay");
        assert_eq!(
            s.verdict(Some(old)),
            Verdict::Trusted,
            "retirement is not suspicion"
        );
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(
            !s.retired("a:5432", Instant::now()),
            "a connection made since is trusted"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_threshold_never_passes_the_moment_of_finding() {
        let s = Suspicion::new(Duration::from_secs(60));
        let last = Instant::now();
        tokio::time::advance(Duration::from_millis(10)).await;
        s.found_dead(Some(last));
        tokio::time::advance(Duration::from_millis(10)).await;
        assert_eq!(s.verdict(Some(Instant::now())), Verdict::Trusted);
    }
}
