//! The open connections of a stream source (TCP, Unix), shown at `/stats`: id, peer, connected
//! since, events, bytes and last activity of each.
//!
//! Kept off the hot path: a connection registers once when it opens (one lock), updates its own
//! atomics once per socket read (not per event), and unregisters when its guard drops. `/stats`
//! lists at most [`MAX_LISTED`] connections (the oldest first: long-lived producers are the ones
//! worth watching) and says how many it left out.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::Serialize;

/// The most connections one component lists at `/stats`.
pub const MAX_LISTED: usize = 256;

/// Every open connection of one component.
#[derive(Default)]
pub struct ConnectionRegistry {
    /// Set by sources that have connections; others show no `connections` at `/stats`.
    tracked: AtomicBool,
    next_id: AtomicU64,
    open: Arc<Mutex<BTreeMap<u64, Arc<Connection>>>>,
}

/// One open connection's counters.
pub struct Connection {
    pub id: u64,
    pub peer: String,
    connected_at: SystemTime,
    events: AtomicU64,
    bytes: AtomicU64,
    /// Milliseconds since the Unix epoch.
    last_activity_ms: AtomicU64,
}

impl Connection {
    /// One socket read: `bytes` read, `events` decoded from it.
    pub fn record(&self, bytes: u64, events: u64) {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        if events > 0 {
            self.events.fetch_add(events, Ordering::Relaxed);
        }
        self.last_activity_ms.store(now_ms(), Ordering::Relaxed);
    }
}

/// Unregisters its connection when dropped.
pub struct ConnectionGuard {
    connection: Arc<Connection>,
    open: Arc<Mutex<BTreeMap<u64, Arc<Connection>>>>,
}

impl std::ops::Deref for ConnectionGuard {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.connection
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.open.lock().remove(&self.connection.id);
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

impl ConnectionRegistry {
    /// Shows this component's connections at `/stats` (an empty list until one opens).
    pub fn track(&self) {
        self.tracked.store(true, Ordering::Relaxed);
    }

    /// Registers a new connection from `peer`.
    pub fn open(&self, peer: String) -> ConnectionGuard {
        let now = SystemTime::now();
        let connection = Arc::new(Connection {
            id: self.next_id.fetch_add(1, Ordering::Relaxed) + 1,
            peer,
            connected_at: now,
            events: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            last_activity_ms: AtomicU64::new(now_ms()),
        });
        self.open.lock().insert(connection.id, connection.clone());
        ConnectionGuard {
            connection,
            open: self.open.clone(),
        }
    }

    pub fn len(&self) -> usize {
        self.open.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What `/stats` shows, or `None` for components without connections.
    pub fn snapshot(&self) -> Option<ConnectionsSnapshot> {
        if !self.tracked.load(Ordering::Relaxed) {
            return None;
        }
        let listed: Vec<Arc<Connection>>;
        let open;
        {
            let map = self.open.lock();
            open = map.len();
            listed = map.values().take(MAX_LISTED).cloned().collect();
        }
        let list = listed
            .iter()
            .map(|c| {
                let last =
                    UNIX_EPOCH + Duration::from_millis(c.last_activity_ms.load(Ordering::Relaxed));
                ConnectionInfo {
                    id: c.id,
                    peer: c.peer.clone(),
                    connected_since: rfc3339(c.connected_at),
                    events: c.events.load(Ordering::Relaxed),
                    bytes: c.bytes.load(Ordering::Relaxed),
                    last_activity: rfc3339(last),
                }
            })
            .collect::<Vec<_>>();
        Some(ConnectionsSnapshot {
            open,
            not_listed: open.saturating_sub(list.len()),
            list,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ConnectionsSnapshot {
    /// Connections open now.
    pub open: usize,
    /// Open connections left out of `list` (beyond [`MAX_LISTED`]).
    pub not_listed: usize,
    pub list: Vec<ConnectionInfo>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ConnectionInfo {
    pub id: u64,
    pub peer: String,
    pub connected_since: String,
    pub events: u64,
    pub bytes: u64,
    pub last_activity: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_register_count_and_leave() {
        let registry = ConnectionRegistry::default();
        assert_eq!(
            registry.snapshot(),
            None,
            "untracked components show nothing"
        );
        registry.track();
        let a = registry.open("127.0.0.1:1".into());
        let b = registry.open("127.0.0.1:2".into());
        a.record(100, 3);
        a.record(50, 0);
        let snapshot = registry.snapshot().expect("tracked");
        assert_eq!(snapshot.open, 2);
        assert_eq!((snapshot.list[0].events, snapshot.list[0].bytes), (3, 150));
        drop(b);
        drop(a);
        assert_eq!(registry.snapshot().map(|s| s.open), Some(0));
    }
}
