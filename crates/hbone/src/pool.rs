//! The HBONE connection pool: many CONNECT streams multiplexed over few connections, one set per
//! caller-chosen key. Owns single-flight dialing, the streams-per-connection cap, idle eviction
//! and replacing dead connections; how to dial (TCP, TLS, identities) is the caller's closure.

use std::collections::HashMap;
use std::fmt::Debug;
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tracing::Instrument;

use crate::client::{ClientSettings, Connection, StreamSlot};
use crate::error::Error;
use crate::request::ConnectRequest;
use crate::stream::H2Stream;

/// How many times a CONNECT moves to another connection after the chosen one turned out to be
/// closing (GOAWAY, keepalive failure). Such a request never reached the server, so a retry is
/// safe; the bound only guards against a peer that GOAWAYs every new connection.
const MAX_CLOSED_RETRIES: usize = 3;

/// Pool limits.
#[derive(Clone, Debug)]
pub struct PoolSettings {
    /// A connection with no streams for this long is closed and forgotten.
    pub idle_timeout: Duration,
    /// Streams per connection before another connection to the same key is opened.
    pub max_streams_per_connection: usize,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            // Istio ztunnel's pool defaults: 100 streams per connection, 10 s idle.
            idle_timeout: Duration::from_secs(10),
            max_streams_per_connection: 100,
        }
    }
}

/// Multiplexes CONNECT streams over connections, one set per key.
///
/// The key is whatever makes a connection reusable for the caller; ztunnel uses (source
/// identity, source IP, expected destination identities, destination address). Callers that
/// find no usable connection for their key wait for one dial rather than each dialing; a failed
/// dial fails all of them.
pub struct Pool<K> {
    inner: Arc<Inner<K>>,
}

impl<K> Clone for Pool<K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<K> Debug for Pool<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

struct Inner<K> {
    settings: PoolSettings,
    client: ClientSettings,
    keys: Mutex<HashMap<K, Entry>>,
    next_id: AtomicU64,
}

/// The outcome of the dial in flight for a key: `None` until it finishes.
type DialOutcome = watch::Receiver<Option<Result<(), Error>>>;

#[derive(Default)]
struct Entry {
    conns: Vec<Pooled>,
    dialing: Option<(u64, DialOutcome)>,
}

struct Pooled {
    id: u64,
    conn: Connection,
}

enum Step {
    Use(Connection, StreamSlot),
    Wait(DialOutcome),
    Dial(u64, watch::Sender<Option<Result<(), Error>>>),
}

impl<K> Pool<K>
where
    K: Hash + Eq + Clone + Debug + Send + Sync + 'static,
{
    /// An empty pool.
    pub fn new(settings: PoolSettings, client: ClientSettings) -> Self {
        Self {
            inner: Arc::new(Inner {
                settings,
                client,
                keys: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(0),
            }),
        }
    }

    /// Opens a CONNECT stream on a connection for `key`, dialing with `dial` if the key has no
    /// connection with room and no dial in flight.
    pub async fn connect<D, Fut, IO>(&self, key: K, request: &ConnectRequest, dial: D) -> Result<H2Stream, Error>
    where
        D: FnOnce() -> Fut,
        Fut: Future<Output = Result<IO, Error>>,
        IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let mut dial = Some(dial);
        let mut retries = 0;
        loop {
            match self.inner.step(&key) {
                Step::Use(conn, slot) => match conn.connect_reserved(slot, request).await {
                    Err(e) if e.is_connection_closed() && retries < MAX_CLOSED_RETRIES => {
                        retries += 1;
                        self.inner.forget(&key, &conn);
                    }
                    result => return result,
                },
                Step::Wait(mut outcome) => {
                    let result = outcome.wait_for(Option::is_some).await.map(|o| o.clone());
                    if let Ok(Some(Err(e))) = result {
                        return Err(e);
                    }
                    // Dialed: look again. A dropped sender means the dialing caller was
                    // cancelled; its guard cleared the marker, so one of us dials next.
                }
                Step::Dial(id, outcome) => {
                    let guard = DialGuard {
                        pool: &self.inner,
                        key: &key,
                        id,
                        outcome,
                    };
                    // A caller dials at most once: it gets a slot on the connection it dialed.
                    let Some(dial) = dial.take() else {
                        return Err(Error::ConnectionClosed);
                    };
                    tracing::debug!(?key, "dialing new HBONE connection");
                    let dialed = match dial().await {
                        Ok(io) => Connection::handshake(io, &self.inner.client).await,
                        Err(e) => Err(e),
                    };
                    return match dialed {
                        Ok(conn) => {
                            let slot = guard.succeed(&conn);
                            conn.connect_reserved(slot, request).await
                        }
                        Err(e) => {
                            tracing::debug!(?key, error = %e, "HBONE dial failed");
                            guard.fail(e.clone());
                            Err(e)
                        }
                    };
                }
            }
        }
    }

    /// Live connections across all keys.
    pub fn connection_count(&self) -> usize {
        let keys = self.inner.lock();
        keys.values()
            .flat_map(|e| &e.conns)
            .filter(|p| !p.conn.is_closed())
            .count()
    }

    /// Closes every connection gracefully (open streams finish) and forgets them.
    pub fn close_all(&self) {
        let entries: Vec<Entry> = self.inner.lock().drain().map(|(_, e)| e).collect();
        for pooled in entries.iter().flat_map(|e| &e.conns) {
            pooled.conn.close();
        }
    }
}

impl<K> Inner<K>
where
    K: Hash + Eq + Clone + Debug + Send + Sync + 'static,
{
    fn lock(&self) -> MutexGuard<'_, HashMap<K, Entry>> {
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Decides, under the lock, whether to use a connection (reserving a stream on it), wait for
    /// the dial in flight, or dial.
    fn step(&self, key: &K) -> Step {
        let max = self.settings.max_streams_per_connection.max(1);
        let mut keys = self.lock();
        let entry = keys.entry(key.clone()).or_default();
        entry.conns.retain(|p| !p.conn.is_closed());
        if let Some(pooled) = entry.conns.iter().find(|p| p.conn.active_streams() < max) {
            return Step::Use(pooled.conn.clone(), pooled.conn.reserve());
        }
        if let Some((_, outcome)) = &entry.dialing {
            return Step::Wait(outcome.clone());
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = watch::channel(None);
        entry.dialing = Some((id, rx));
        Step::Dial(id, tx)
    }

    /// Drops `conn` from `key`'s connections.
    fn forget(&self, key: &K, conn: &Connection) {
        let mut keys = self.lock();
        if let Some(entry) = keys.get_mut(key) {
            entry.conns.retain(|p| !p.conn.same_as(conn));
            if entry.conns.is_empty() && entry.dialing.is_none() {
                keys.remove(key);
            }
        }
    }

    /// Removes connection `id` if it is still idle; true if it was removed (or is gone).
    fn evict_if_idle(&self, key: &K, id: u64) -> bool {
        let mut keys = self.lock();
        let Some(entry) = keys.get_mut(key) else {
            return true;
        };
        let Some(index) = entry.conns.iter().position(|p| p.id == id) else {
            return true;
        };
        if entry.conns[index].conn.active_streams() > 0 {
            return false;
        }
        entry.conns.swap_remove(index);
        if entry.conns.is_empty() && entry.dialing.is_none() {
            keys.remove(key);
        }
        true
    }

    fn remove(&self, key: &K, id: u64) {
        let mut keys = self.lock();
        if let Some(entry) = keys.get_mut(key) {
            entry.conns.retain(|p| p.id != id);
            if entry.conns.is_empty() && entry.dialing.is_none() {
                keys.remove(key);
            }
        }
    }
}

/// The caller dialing for a key. Publishes the outcome to waiters; if the caller is cancelled
/// mid-dial, dropping this clears the in-flight marker so a waiter dials instead.
struct DialGuard<'a, K: Hash + Eq + Clone + Debug + Send + Sync + 'static> {
    pool: &'a Arc<Inner<K>>,
    key: &'a K,
    id: u64,
    outcome: watch::Sender<Option<Result<(), Error>>>,
}

impl<K: Hash + Eq + Clone + Debug + Send + Sync + 'static> DialGuard<'_, K> {
    /// Adds the new connection with one stream reserved for the dialing caller, then wakes
    /// the waiters.
    fn succeed(self, conn: &Connection) -> StreamSlot {
        let id = self.pool.next_id.fetch_add(1, Ordering::Relaxed);
        let slot = {
            let mut keys = self.pool.lock();
            let entry = keys.entry(self.key.clone()).or_default();
            entry.conns.push(Pooled { id, conn: conn.clone() });
            // Cleared with the insert, so a woken waiter sees the connection or a free marker.
            self.clear_marker(entry);
            conn.reserve()
        };
        tokio::spawn(
            watch_connection(
                Arc::downgrade(self.pool),
                self.key.clone(),
                id,
                conn.clone(),
                self.pool.settings.idle_timeout,
            )
            .in_current_span(),
        );
        self.outcome.send_replace(Some(Ok(())));
        slot
    }

    fn fail(self, e: Error) {
        if let Some(entry) = self.pool.lock().get_mut(self.key) {
            self.clear_marker(entry);
        }
        self.outcome.send_replace(Some(Err(e)));
    }

    fn clear_marker(&self, entry: &mut Entry) {
        if entry.dialing.as_ref().is_some_and(|(id, _)| *id == self.id) {
            entry.dialing = None;
        }
    }
}

impl<K: Hash + Eq + Clone + Debug + Send + Sync + 'static> Drop for DialGuard<'_, K> {
    fn drop(&mut self) {
        let mut keys = self.pool.lock();
        if let Some(entry) = keys.get_mut(self.key) {
            self.clear_marker(entry);
            if entry.conns.is_empty() && entry.dialing.is_none() {
                keys.remove(self.key);
            }
        }
    }
}

/// Evicts a pooled connection when it closes or stays idle for `idle_timeout`.
async fn watch_connection<K>(pool: Weak<Inner<K>>, key: K, id: u64, conn: Connection, idle_timeout: Duration)
where
    K: Hash + Eq + Clone + Debug + Send + Sync + 'static,
{
    let mut active = conn.state().active.subscribe();
    let mut closed = conn.state().closed.subscribe();
    loop {
        tokio::select! {
            _ = closed.wait_for(|c| *c) => break,
            _ = active.wait_for(|n| *n == 0) => {}
        }
        // Idle: any change in stream count restarts the wait.
        tokio::select! {
            _ = closed.wait_for(|c| *c) => break,
            _ = active.changed() => {}
            () = tokio::time::sleep(idle_timeout) => {
                let evicted = pool.upgrade().is_none_or(|p| p.evict_if_idle(&key, id));
                if evicted {
                    tracing::debug!(?key, "closing idle HBONE connection");
                    conn.close();
                    return;
                }
            }
        }
    }
    tracing::debug!(?key, "HBONE connection closed; evicting");
    if let Some(pool) = pool.upgrade() {
        pool.remove(&key, id);
    }
}
