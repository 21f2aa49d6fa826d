//! Connection handles: a pooled connection held for one caller across requests, for work
//! that needs a session (an explicit transaction: `BEGIN`/`COMMIT` are the caller's).
//!
//! A handle belongs to the token that opened it; it counts against its tenant's pool and
//! against `pools.max_handles_per_tenant`; it expires when unused for its TTL (the caller's
//! `ttl_seconds`, default `pools.handle_ttl`, at most `pools.max_handle_ttl`). Closing or
//! expiring a handle drops its connection through the normal reset (`ROLLBACK`,
//! `DISCARD ALL`), so an open transaction is rolled back and nothing leaks to the next borrower.

/// The owner of handles opened with the admin token; the admin may also close any handle.
pub const ADMIN_OWNER: &str = "admin";

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;

use crate::pools::Lent;
use crate::shutdown::Shutdown;

/// Why a handle cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HandleError {
    /// No such handle (never was, closed, or expired).
    #[error("no such handle (closed or expired)")]
    NotFound,
    /// The handle belongs to another token.
    #[error("this handle was opened with another token")]
    Forbidden,
    /// The tenant has its maximum of open handles.
    #[error("tenant {slug:?} already has {max} open handles; close one first")]
    TooMany {
        /// Tenant.
        slug: String,
        /// Maximum.
        max: usize,
    },
}

/// One open handle.
pub struct Handle {
    /// Tenant slug.
    pub slug: String,
    owner: String,
    ttl: Duration,
    deadline: Mutex<Instant>,
    /// The connection; locked while a request uses it (requests on one handle run in turn).
    pub connection: tokio::sync::Mutex<Lent>,
}

impl Handle {
    /// Pushes the expiry one TTL into the future; returns the new expiry time.
    pub fn touch(&self) -> DateTime<Utc> {
        *self.deadline.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now() + self.ttl;
        Utc::now() + chrono::Duration::from_std(self.ttl).unwrap_or_default()
    }

    fn expired(&self) -> bool {
        Instant::now() >= *self.deadline.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Every open handle of one daemon.
#[derive(Default)]
pub struct Handles {
    open: Mutex<HashMap<String, Arc<Handle>>>,
}

impl std::fmt::Debug for Handles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handles").field("open", &self.open.lock().map(|m| m.len()).unwrap_or(0)).finish()
    }
}

impl Handles {
    /// Open handles of a tenant.
    pub fn count(&self, slug: &str) -> usize {
        self.open.lock().unwrap_or_else(PoisonError::into_inner).values().filter(|h| h.slug == slug).count()
    }

    /// Registers a connection as a handle owned by `owner` (a token hash); returns its id and
    /// expiry. Fails when the tenant has `max` handles already (the connection then goes back).
    pub fn open(
        &self,
        slug: &str,
        owner: &str,
        max: usize,
        ttl: Duration,
        connection: Lent,
    ) -> Result<(String, DateTime<Utc>), HandleError> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if open.values().filter(|h| h.slug == slug).count() >= max {
            return Err(HandleError::TooMany { slug: slug.to_owned(), max });
        }
        let id = format!("h_{}", crate::crypto::random_secret(24).expose_secret());
        let handle = Arc::new(Handle {
            slug: slug.to_owned(),
            owner: owner.to_owned(),
            ttl,
            deadline: Mutex::new(Instant::now() + ttl),
            connection: tokio::sync::Mutex::new(connection),
        });
        let expires_at = handle.touch();
        open.insert(id.clone(), handle);
        metrics::gauge!("tenantd_handles_open").set(open.len() as f64);
        Ok((id, expires_at))
    }

    /// The handle `id` if `owner` opened it: a handle's session is its opener's alone.
    pub fn get(&self, id: &str, owner: &str) -> Result<Arc<Handle>, HandleError> {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let handle = open.get(id).filter(|h| !h.expired()).ok_or(HandleError::NotFound)?;
        if handle.owner != owner {
            return Err(HandleError::Forbidden);
        }
        Ok(handle.clone())
    }

    /// Closes a handle (its opener's, or any for the admin): its connection is rolled back, reset and returned to the pool once
    /// no request uses it any more.
    pub fn close(&self, id: &str, owner: &str) -> Result<(), HandleError> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        match open.get(id) {
            None => Err(HandleError::NotFound),
            Some(h) if h.owner != owner && owner != ADMIN_OWNER => Err(HandleError::Forbidden),
            Some(_) => {
                open.remove(id);
                metrics::gauge!("tenantd_handles_open").set(open.len() as f64);
                Ok(())
            }
        }
    }

    /// Closes the handles of a tenant that were opened with a token it no longer has (its
    /// token was replaced): they must not outlive the token, nor hold its handle quota.
    pub fn close_stale(&self, slug: &str, current_token_hash: Option<&str>) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.retain(|_, h| {
            h.slug != slug || h.owner == ADMIN_OWNER || Some(h.owner.as_str()) == current_token_hash
        });
        metrics::gauge!("tenantd_handles_open").set(open.len() as f64);
    }

    /// Closes every handle of a tenant (suspended, deleted, moved).
    pub fn close_tenant(&self, slug: &str) {
        self.open.lock().unwrap_or_else(PoisonError::into_inner).retain(|_, h| h.slug != slug);
    }

    /// Closes expired handles; returns how many.
    pub fn expire(&self) -> usize {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let before = open.len();
        open.retain(|_, h| !h.expired());
        let expired = before - open.len();
        if expired > 0 {
            metrics::counter!("tenantd_handles_expired_total").increment(expired as u64);
            metrics::gauge!("tenantd_handles_open").set(open.len() as f64);
        }
        expired
    }

    /// Starts the expiry task on the daemon's tracker.
    pub fn spawn_reaper(self: &Arc<Self>, shutdown: &Shutdown) {
        let handles = self.clone();
        let token = shutdown.token().clone();
        shutdown.spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_millis(250));
            loop {
                tokio::select! {
                    () = token.cancelled() => break,
                    _ = ticks.tick() => { handles.expire(); }
                }
            }
            // Shutdown: every handle's transaction is rolled back and its connection reset.
            handles.open.lock().unwrap_or_else(PoisonError::into_inner).clear();
        });
    }
}
