//! The last few errors the gateway answered or met, for the admin page: a
//! small ring behind a lock taken only when something went wrong.

use std::collections::VecDeque;
use std::sync::Mutex;

/// How many are kept.
pub const KEPT: usize = 50;

/// One error, as the admin page shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RecentError {
    /// When, RFC 3339 UTC.
    pub time: String,
    /// `request` or `reload`.
    pub source: &'static str,
    /// The request's id, for a request.
    pub request_id: Option<String>,
    /// The route, when one matched.
    pub route: Option<String>,
    /// The status answered, for a request.
    pub status: Option<u16>,
    /// The gateway's error code (`plugin_failed`, `upstream_timeout`, ...).
    pub code: String,
    /// What the client was told, or the reload's first error.
    pub message: String,
}

/// The ring.
#[derive(Debug, Default)]
pub struct RecentErrors {
    ring: Mutex<VecDeque<RecentError>>,
}

impl RecentErrors {
    /// Keep `e`, forgetting the oldest past [`KEPT`].
    pub fn push(&self, e: RecentError) {
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        if ring.len() == KEPT {
            ring.pop_front();
        }
        ring.push_back(e);
    }

    /// Newest first.
    pub fn list(&self) -> Vec<RecentError> {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        ring.iter().rev().cloned().collect()
    }
}
