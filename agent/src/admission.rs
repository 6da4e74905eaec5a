//! Which connections the socket keeps when too many are open (README, "Under abuse").
//!
//! A cap that refused new connections would let a thousand idle ones lock every controller
//! out, so the agent accepts every connection and, past `max_connections`, closes the one idle
//! longest among those that follow no job: whoever is talking now gets through, and a client
//! following a job (a `submit` or `watch` stream) is never cut off. [`evictions`] is that choice,
//! pure; [`Connections`] is the register the server keeps it with.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::job::lock;

/// What the choice needs to know of one open connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnView {
    pub id: u64,
    /// The end of its last request or reply; its connect time until `hello` completed.
    pub idle_since: Instant,
    /// Streams a job's events to its client: never closed for room.
    pub following: bool,
}

/// The connections to close so that at most `max` stay open: the longest idle first (the
/// older connection first among equals), never one following a job. When only followers are
/// left to choose from, more than `max` stay open: a job's client outranks the bound.
pub fn evictions(open: &[ConnView], max: usize) -> Vec<u64> {
    let excess = open.len().saturating_sub(max);
    let mut idle: Vec<&ConnView> = open.iter().filter(|c| !c.following).collect();
    idle.sort_by_key(|c| (c.idle_since, c.id));
    idle.into_iter().take(excess).map(|c| c.id).collect()
}

/// How often at most the agent warns that it closes connections for room; each is logged at
/// debug level, but a flood would otherwise flood the log too.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The open connections of the socket. [`Connections::admit`] registers a new one and closes
/// whatever [`evictions`] picks; a connection learns it was closed through the receiver it was
/// given (its sender is dropped).
#[derive(Debug)]
pub struct Connections {
    max: usize,
    inner: Mutex<Register>,
}

#[derive(Debug, Default)]
struct Register {
    next_id: u64,
    open: BTreeMap<u64, Entry>,
    /// Connections closed for room since the last warning, and when that was.
    evicted: usize,
    warned: Option<Instant>,
}

#[derive(Debug)]
struct Entry {
    idle_since: Instant,
    following: bool,
    /// Dropped to close the connection.
    _close: oneshot::Sender<()>,
}

impl Connections {
    pub fn new(max_connections: usize) -> Arc<Connections> {
        Arc::new(Connections {
            max: max_connections,
            inner: Mutex::new(Register::default()),
        })
    }

    /// Registers a connection accepted now and makes room past the bound (possibly by closing
    /// this very one, when every other follows a job). The receiver resolves when the agent
    /// closes the connection for room; the handle unregisters it when dropped.
    pub fn admit(self: &Arc<Self>) -> (ConnHandle, oneshot::Receiver<()>) {
        let (close, closed) = oneshot::channel();
        let now = Instant::now();
        let mut reg = lock(&self.inner);
        let id = reg.next_id;
        reg.next_id += 1;
        reg.open.insert(
            id,
            Entry {
                idle_since: now,
                following: false,
                _close: close,
            },
        );
        let views: Vec<ConnView> = reg
            .open
            .iter()
            .map(|(&id, e)| ConnView {
                id,
                idle_since: e.idle_since,
                following: e.following,
            })
            .collect();
        let victims = evictions(&views, self.max);
        for victim in &victims {
            reg.open.remove(victim);
            tracing::debug!(connection = victim, "closed for room: the longest idle");
        }
        reg.evicted += victims.len();
        if reg.evicted > 0 && reg.warned.is_none_or(|at| now - at >= WARN_EVERY) {
            tracing::warn!(
                closed = reg.evicted,
                max_connections = self.max,
                "more connections than max_connections: closed the longest idle ones"
            );
            reg.evicted = 0;
            reg.warned = Some(now);
        }
        let handle = ConnHandle {
            id,
            register: self.clone(),
        };
        (handle, closed)
    }

    /// How many connections are open.
    pub fn len(&self) -> usize {
        lock(&self.inner).open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn update(&self, id: u64, f: impl FnOnce(&mut Entry)) {
        if let Some(entry) = lock(&self.inner).open.get_mut(&id) {
            f(entry);
        }
    }
}

/// One registered connection; unregisters it when dropped.
#[derive(Debug)]
pub struct ConnHandle {
    id: u64,
    register: Arc<Connections>,
}

impl ConnHandle {
    pub fn id(&self) -> u64 {
        self.id
    }

    /// A request or reply just went through: the connection is not idle as of now.
    pub fn active(&self) {
        self.register
            .update(self.id, |e| e.idle_since = Instant::now());
    }

    /// Marks the connection as following a job until the guard drops; then it counts as idle
    /// from that moment.
    pub fn following(&self) -> FollowingGuard<'_> {
        self.register.update(self.id, |e| e.following = true);
        FollowingGuard(self)
    }
}

impl Drop for ConnHandle {
    fn drop(&mut self) {
        lock(&self.register.inner).open.remove(&self.id);
    }
}

/// See [`ConnHandle::following`].
#[derive(Debug)]
pub struct FollowingGuard<'a>(&'a ConnHandle);

impl Drop for FollowingGuard<'_> {
    fn drop(&mut self) {
        self.0.register.update(self.0.id, |e| {
            e.following = false;
            e.idle_since = Instant::now();
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_idle_that_follows_no_job_goes_first() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        /// (id, idle since (s), following)
        type Conn = (u64, u64, bool);
        let conns = |spec: &[Conn]| -> Vec<ConnView> {
            spec.iter()
                .map(|&(id, s, following)| ConnView {
                    id,
                    idle_since: at(s),
                    following,
                })
                .collect()
        };
        // (connections, max, expected evictions, why)
        let cases: &[(&[Conn], usize, &[u64], &str)] = &[
            (&[], 2, &[], "nothing open"),
            (
                &[(1, 0, false), (2, 5, false)],
                2,
                &[],
                "at the bound: nothing",
            ),
            (
                &[(1, 3, false), (2, 0, false), (3, 9, false)],
                2,
                &[2],
                "over by one: the one idle since 0 s, not the oldest id",
            ),
            (
                &[(1, 0, true), (2, 4, false), (3, 9, false)],
                2,
                &[2],
                "the longest idle follows a job: the next one",
            ),
            (
                &[(1, 0, true), (2, 1, true), (3, 9, false)],
                2,
                &[3],
                "only the newcomer follows no job: it goes",
            ),
            (
                &[(1, 0, true), (2, 1, true), (3, 2, true)],
                2,
                &[],
                "all follow jobs: the bound gives way",
            ),
            (
                &[(4, 7, false), (1, 7, false), (2, 7, false)],
                1,
                &[1, 2],
                "equal idle times: the older connections first",
            ),
            (
                &[(1, 2, false), (2, 1, false), (3, 0, false), (4, 9, true)],
                1,
                &[3, 2, 1],
                "over by three with a follower: every idle one",
            ),
        ];
        for (spec, max, expected, why) in cases {
            assert_eq!(evictions(&conns(spec), *max), *expected, "{why}");
        }
    }

    #[tokio::test]
    async fn the_register_closes_for_room_and_spares_followers() {
        let register = Connections::new(2);
        let (first, mut first_closed) = register.admit();
        let _following = first.following();
        let (second, mut second_closed) = register.admit();
        let (third, mut third_closed) = register.admit();
        // The second is the longest idle that follows no job.
        assert!(
            second_closed
                .try_recv()
                .is_err_and(|e| e == oneshot::error::TryRecvError::Closed)
        );
        assert!(
            first_closed
                .try_recv()
                .is_err_and(|e| e == oneshot::error::TryRecvError::Empty)
        );
        assert!(
            third_closed
                .try_recv()
                .is_err_and(|e| e == oneshot::error::TryRecvError::Empty)
        );
        assert_eq!(register.len(), 2);
        drop(second);
        assert_eq!(
            register.len(),
            2,
            "dropping a closed connection's handle is harmless"
        );
        drop(third);
        assert_eq!(register.len(), 1);
        drop(_following);
        drop(first);
        assert!(register.is_empty());
    }
}
