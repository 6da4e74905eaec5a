//! The replay store: the id of every order this agent accepted, on disk until the order could
//! no longer be accepted anyway, so no order is ever applied twice, restarts included; and
//! [`admit`], the agent's acceptance — proto's pure check against the store, then the id made
//! durable before the order may run.
//!
//! Ids are forgotten once their [`Accepted::remember_until`] has passed (`not_after` plus the
//! allowed skew), so the file stays small.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use deploy::durable;
use proto::accept::{AcceptPolicy, Accepted, Rejection, SeenOrders, accept, check_replay};
use proto::policy::HostFiles;
use proto::time::Timestamp;
use proto::wire::SignedOrder;
use serde::{Deserialize, Serialize};

use crate::job::lock;

/// Accepted order ids in one JSON file, rewritten through [`durable::write_atomic`] on every
/// change.
#[derive(Debug)]
pub struct ReplayStore {
    path: PathBuf,
    /// order_id → the time after which it may be forgotten.
    ids: BTreeMap<String, Timestamp>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayFile {
    version: u32,
    ids: BTreeMap<String, Timestamp>,
}

const REPLAY_FILE_VERSION: u32 = 1;

/// Acceptance as the agent performs it: [`accept`], then the accepted id remembered durably.
///
/// Verification (signature, parse, policy) needs nothing of the store and is the costly part,
/// so it runs before the store's lock is taken: a stream of hostile or slow submits cannot
/// queue anyone behind it. Under the lock only the replay check and the durable write of the
/// id run, together, so two submissions of one order cannot both pass. (A replayed order that
/// also fails a later check, say its image is no longer allowed, is refused for that reason.)
pub fn admit(
    signed: &SignedOrder,
    policy: &AcceptPolicy,
    now: Timestamp,
    store: &Mutex<ReplayStore>,
    files: &dyn HostFiles,
) -> Result<Accepted, Rejection> {
    let accepted = accept(signed, policy, now, &CheckedUnderLock, files)?;
    let mut store = lock(store);
    check_replay(&accepted.order.order_id, &*store)?;
    // Not applied twice means not applied at all unless the id is safely on disk.
    store
        .remember(&accepted.order.order_id, accepted.remember_until, now)
        .map_err(|e| Rejection::not_recorded(&accepted.order.order_id, &e))?;
    Ok(accepted)
}

/// The store as [`accept`] sees it in [`admit`]: nothing seen yet, because the replay check
/// runs afterwards, under the store's lock.
struct CheckedUnderLock;

impl SeenOrders for CheckedUnderLock {
    fn seen(&self, _order_id: &str) -> bool {
        false
    }
}

impl ReplayStore {
    /// Opens (or starts) the store at `path`, dropping ids whose time has passed at `now`. A
    /// file that cannot be parsed is an error naming the file: silently starting empty would
    /// reopen the door to replays.
    pub fn open(path: &Path, now: Timestamp) -> io::Result<Self> {
        let ids = match std::fs::read(path) {
            Ok(bytes) => parse(path, &bytes)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot read replay store {}: {e}", path.display()),
                ));
            }
        };
        let mut store = ReplayStore {
            path: path.to_owned(),
            ids,
        };
        store.forget_expired(now);
        Ok(store)
    }

    /// Ids currently remembered.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Remembers `order_id` until `until`, durably when it returns `Ok`; on error the store is
    /// as it was, in memory and on disk.
    pub fn remember(&mut self, order_id: &str, until: Timestamp, now: Timestamp) -> io::Result<()> {
        let before = self.ids.clone();
        self.forget_expired(now);
        self.ids.insert(order_id.to_string(), until);
        self.save().inspect_err(|_| self.ids = before).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot save replay store {}: {e}", self.path.display()),
            )
        })
    }

    fn forget_expired(&mut self, now: Timestamp) {
        self.ids.retain(|_, until| *until >= now);
    }

    fn save(&self) -> io::Result<()> {
        let file = ReplayFile {
            version: REPLAY_FILE_VERSION,
            ids: self.ids.clone(),
        };
        let bytes = serde_json::to_vec_pretty(&file).map_err(io::Error::other)?;
        durable::write_atomic(&self.path, &bytes)
    }
}

impl SeenOrders for ReplayStore {
    fn seen(&self, order_id: &str) -> bool {
        self.ids.contains_key(order_id)
    }
}

fn parse(path: &Path, bytes: &[u8]) -> io::Result<BTreeMap<String, Timestamp>> {
    let file: ReplayFile = serde_json::from_slice(bytes).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "replay store {} is corrupt ({e}); it protects against replayed orders, so it is not reset \
                 automatically: restore it, or remove it once every order issued so far has expired",
                path.display()
            ),
        )
    })?;
    if file.version != REPLAY_FILE_VERSION {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "replay store {} has version {}, expected {REPLAY_FILE_VERSION}",
                path.display(),
                file.version
            ),
        ));
    }
    Ok(file.ids)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proto::sign::{AllowedSigners, PrivateKey};
    use proto::wire::RefusalKind;

    use super::*;
    use crate::host_files::Filesystem;
    use crate::journal::tests::order;

    fn key() -> PrivateKey {
        proto::sign::ed25519_key(&[1; 32], "ci")
    }

    fn policy() -> AcceptPolicy {
        let line = proto::sign::allowed_signers_line("ci", key().public_key()).unwrap();
        let signers = AllowedSigners::parse(&line, "as").unwrap();
        AcceptPolicy::new(
            "h1",
            "staging",
            signers,
            vec!["127.0.0.1:5000/acme/*".into()],
        )
    }

    /// A signed order valid at the returned time.
    fn signed(id: &str) -> (SignedOrder, Timestamp) {
        let order = order(id, 'a');
        let now = order.issued_at;
        (proto::sign::sign_order(&key(), &order).unwrap(), now)
    }

    #[test]
    fn ids_survive_a_reopen_and_are_forgotten_after_their_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/replay.json");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let now = Timestamp::from_unix_secs(1_800_000_000);
        {
            let mut store = ReplayStore::open(&path, now).unwrap();
            assert!(store.is_empty());
            store
                .remember("live", now.plus(Duration::from_secs(600)), now)
                .unwrap();
            store
                .remember("stale", now.plus(Duration::from_secs(60)), now)
                .unwrap();
            assert!(store.seen("live") && store.seen("stale"));
        }
        let store = ReplayStore::open(&path, now.plus(Duration::from_secs(61))).unwrap();
        assert!(store.seen("live"), "a remembered id survives a restart");
        assert!(!store.seen("stale"), "an id past its time is forgotten");
        assert_eq!(store.len(), 1);
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, ["replay.json"], "no temp file left behind");
    }

    #[test]
    fn a_corrupt_store_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("replay.json");
        for garbage in [
            &b"{\"version\":1,\"ids\":{\"a\":"[..],
            b"\x00\xff",
            b"[]",
            b"{\"version\":9,\"ids\":{}}",
        ] {
            std::fs::write(&path, garbage).unwrap();
            let err = ReplayStore::open(&path, Timestamp::now()).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData);
            assert!(
                err.to_string().contains(&path.display().to_string()),
                "{err}"
            );
        }
    }

    #[test]
    fn an_admitted_order_is_refused_as_replayed_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("replay.json");
        let (order, now) = signed("o1");
        let store = Mutex::new(ReplayStore::open(&path, now).unwrap());
        let accepted = admit(&order, &policy(), now, &store, &Filesystem::new()).unwrap();
        assert_eq!(accepted.order.order_id, "o1");
        assert_eq!(
            admit(&order, &policy(), now, &store, &Filesystem::new())
                .unwrap_err()
                .kind,
            RefusalKind::Replayed
        );
        let reopened = Mutex::new(ReplayStore::open(&path, now).unwrap());
        assert_eq!(
            admit(&order, &policy(), now, &reopened, &Filesystem::new())
                .unwrap_err()
                .kind,
            RefusalKind::Replayed
        );
    }

    #[test]
    fn a_refused_order_keeps_its_id_unburnt() {
        let dir = tempfile::tempdir().unwrap();
        let store = Mutex::new(
            ReplayStore::open(&dir.path().join("replay.json"), Timestamp::now()).unwrap(),
        );
        let mut wrong_host = order("o2", 'a');
        wrong_host.host = "elsewhere".into();
        let now = wrong_host.issued_at;
        let signed = proto::sign::sign_order(&key(), &wrong_host).unwrap();
        let r = admit(&signed, &policy(), now, &store, &Filesystem::new()).unwrap_err();
        assert_eq!(r.kind, RefusalKind::HostMismatch);
        assert!(
            !lock(&store).seen("o2"),
            "a refused order must not be remembered"
        );
        assert!(!dir.path().join("replay.json").exists());
    }

    #[test]
    fn an_unwritable_store_refuses_the_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gone/replay.json");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let (order, now) = signed("o3");
        let store = Mutex::new(ReplayStore::open(&path, now).unwrap());
        std::fs::remove_dir(path.parent().unwrap()).unwrap();
        let r = admit(&order, &policy(), now, &store, &Filesystem::new()).unwrap_err();
        assert_eq!(r.kind, RefusalKind::Internal, "{r}");
        assert!(
            r.message
                .starts_with("cannot record order o3 against replay, so it is not applied: cannot save replay store"),
            "{r}"
        );
        assert!(!lock(&store).seen("o3"));
    }

    #[test]
    fn verification_does_not_wait_for_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let (good, now) = signed("o4");
        let store = Mutex::new(ReplayStore::open(&dir.path().join("replay.json"), now).unwrap());
        let forged = SignedOrder {
            payload: good.payload.replace("o4", "o5"),
            ..good.clone()
        };
        let held = lock(&store);
        // With the store's lock held elsewhere (a slow durable write, say), a forged order is
        // still refused: its signature check never queues behind that lock.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::scope(|s| {
            s.spawn(|| {
                let _ = tx.send(
                    admit(&forged, &policy(), now, &store, &Filesystem::new()).map(|a| a.order),
                );
            });
            let refused = rx
                .recv_timeout(Duration::from_secs(20))
                .expect("refused while the store is locked");
            assert_eq!(refused.unwrap_err().kind, RefusalKind::BadSignature);
            drop(held);
        });
        admit(&good, &policy(), now, &store, &Filesystem::new())
            .expect("the good order is admitted once");
    }
}
