//! A lent connection: limits enforced while a tenant's request runs on it, cancellation,
//! and the reset before it goes back to the pool.

use std::sync::atomic::Ordering;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use deadpool::managed;
use futures::{FutureExt, TryStreamExt};
use tokio::task::JoinHandle;
use tokio_postgres::SimpleQueryMessage;

use super::{PooledConn, TenantManager};
use crate::pgtls::Endpoint;
use crate::pgwire::{MAX_TYPE_LOOKUPS, Tripped};
use crate::sqlhttp::SqlError;

/// A lent connection. Dereferences to a `tokio_postgres::Client`; when dropped it is reset
/// in the background (a statement still running is cancelled first) and only then returned
/// to the pool.
pub struct Lent {
    pub(super) object: Option<managed::Object<TenantManager>>,
    /// Resets already sent right behind a statement ([`Lent::reset_behind`]), each read by a
    /// task of its own; the last one is the connection's reset.
    pub(super) behind: Mutex<Vec<SentReset>>,
}

/// The replies to a reset sent ahead of the lending's end, read as they come.
pub(super) type SentReset = JoinHandle<Result<Vec<SimpleQueryMessage>, tokio_postgres::Error>>;

impl std::ops::Deref for Lent {
    type Target = tokio_postgres::Client;

    fn deref(&self) -> &tokio_postgres::Client {
        &self.conn().client
    }
}

impl Lent {
    /// The statements this connection keeps prepared between requests.
    pub fn statements(&self) -> &crate::sqlhttp::StatementCache {
        &self.conn().statements
    }

    /// Sends the connection's reset right behind what was just sent on it, before its answer is
    /// read: the server runs the reset as soon as the statement ends, without waiting for the
    /// daemon in between, and the two go out together when the driver writes them in one go.
    /// For a single statement in autocommit only (the SQL endpoint's), called once its messages
    /// are queued: the session is idle before it and after it, so no `ROLLBACK` is needed. A
    /// statement sent after this one (a kept statement prepared again) gets a reset of its own
    /// behind it; the last reset sent is the one whose listing counts.
    ///
    /// The replies are read by a task of their own at once: the driver hands a connection's
    /// replies out in order, so an unread reset would hold back the replies to whatever is sent
    /// after it.
    pub fn reset_behind(&self) {
        // `simple_query_raw` queues its message when first polled and awaits nothing after.
        // When it cannot (the connection is closed, or the driver changed), the reset at the
        // lending's end finds that out and closes the connection, or resets it the usual way.
        let replies = match self.conn().client.simple_query_raw(RESET).now_or_never() {
            Some(Ok(replies)) => replies,
            Some(Err(error)) => {
                tracing::debug!(error = %crate::pg::describe(&error), "reset not sent behind the statement");
                return;
            }
            None => {
                tracing::warn!("the driver did not queue the reset at once; it is sent at the lending's end");
                return;
            }
        };
        let read = tokio::spawn(replies.try_collect::<Vec<_>>());
        self.behind.lock().unwrap_or_else(PoisonError::into_inner).push(read);
    }

    fn conn(&self) -> &PooledConn {
        match &self.object {
            Some(object) => object,
            None => unreachable!("a Lent holds its connection until dropped"),
        }
    }

    /// Runs a tenant's request on this connection under limits the tenant cannot lift: it is
    /// cancelled on the server when `deadline` passes (whatever `statement_timeout` the
    /// session set) or when this future is dropped; preparing its `statements` may look up at
    /// most [`MAX_TYPE_LOOKUPS`] types; no server message may exceed the result limit.
    pub async fn run_guarded<'a, T, Fut>(
        &'a self,
        deadline: Duration,
        statements: usize,
        work: impl FnOnce(&'a tokio_postgres::Client) -> Fut,
    ) -> Result<T, SqlError>
    where
        Fut: Future<Output = Result<T, SqlError>>,
    {
        let conn = self.conn();
        // A cancel for an earlier, abandoned request on this connection (a handle's) lands first.
        cancelled_before(conn).await;
        conn.busy.store(true, Ordering::SeqCst);
        conn.guard.limit_lookups(MAX_TYPE_LOOKUPS + i64::try_from(statements).unwrap_or(i64::MAX / 2));
        // Dropped before the work ends (client gone, HTTP timeout): cancel it on the server,
        // so a held connection (a handle) is not left running it.
        let abandoned = CancelOnDrop { conn: Some(conn) };
        let outcome = tokio::time::timeout(deadline, work(&conn.client)).await;
        abandoned.disarm();
        conn.guard.unlimited();
        let result = match outcome {
            Ok(result) => result,
            Err(_) => {
                cancel(conn).await;
                // Cancelled once: the reset must not cancel again (it could hit its own ROLLBACK).
                conn.busy.store(false, Ordering::SeqCst);
                return Err(SqlError::Timeout(format!(
                    "the request ran longer than {deadline:?} and was cancelled"
                )));
            }
        };
        conn.busy.store(false, Ordering::SeqCst);
        if let Err(SqlError::Postgres { sqlstate, .. }) = &result
            && sqlstate == "26000"
        {
            // A prepared statement is missing: maybe one of the driver's own type lookups, which
            // it never prepares again (the tenant's `DEALLOCATE ALL`). Start afresh.
            conn.retire.store(true, Ordering::SeqCst);
        }
        result.map_err(|e| match (conn.guard.tripped(), e) {
            (Some(Tripped::TooLarge(limit)), _) => SqlError::TooLarge(format!(
                "a row of the result is larger than {limit} bytes; the connection was closed before reading it"
            )),
            (Some(Tripped::TooDeep(limit)), _) => SqlError::BadRequest(format!(
                "the statement's types need more than {limit} lookups to resolve (types nested too deeply)"
            )),
            (None, e) => e,
        })
    }
}

/// Cancels a tenant statement when dropped while armed. The cancel request is sent by a task
/// of its own, recorded on the connection ([`cancelled_before`] waits for it).
struct CancelOnDrop<'a> {
    conn: Option<&'a PooledConn>,
}

impl CancelOnDrop<'_> {
    fn disarm(mut self) {
        self.conn = None;
    }
}

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (token, address) = (conn.client.cancel_token(), conn.address.clone());
            let sending = runtime.spawn(async move { cancel_with(&token, &address).await });
            *conn.cancelling.lock().unwrap_or_else(PoisonError::into_inner) = Some(sending);
        }
    }
}

/// Waits for a cancel request sent for an abandoned request on `conn`, if one is on its way;
/// true when there was one.
async fn cancelled_before(conn: &PooledConn) -> bool {
    let sending = conn.cancelling.lock().unwrap_or_else(PoisonError::into_inner).take();
    match sending {
        Some(sending) => {
            if let Err(error) = sending.await {
                tracing::warn!(%error, "sending a cancel request failed");
            }
            true
        }
        None => false,
    }
}

/// Sends a cancel request for whatever runs on `conn` (a new connection to the server, as the
/// protocol wants); a failure is logged, and the reset that follows is bounded anyway.
async fn cancel(conn: &PooledConn) {
    cancel_with(&conn.client.cancel_token(), &conn.address).await;
}

async fn cancel_with(token: &tokio_postgres::CancelToken, endpoint: &Endpoint) {
    // Encrypted like the session it cancels.
    let cancelled = endpoint.cancel(token);
    match tokio::time::timeout(Duration::from_secs(5), cancelled).await {
        Ok(Ok(())) => metrics::counter!("tenantd_statements_cancelled_total").increment(1),
        Ok(Err(crate::pgtls::CancelFailed::Postgres(e))) => {
            tracing::warn!(error = %crate::pg::describe(&e), "cannot cancel a tenant statement");
        }
        Ok(Err(error)) => tracing::warn!(%error, "cannot cancel a tenant statement"),
        Err(_) => tracing::warn!("cancel request to the tenant server timed out"),
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        let Some(object) = self.object.take() else { return };
        let behind = std::mem::take(self.behind.get_mut().unwrap_or_else(PoisonError::into_inner));
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(reset(object, behind));
            }
            // No runtime to reset it on: close it rather than return it dirty.
            Err(_) => drop(managed::Object::take(object)),
        }
    }
}

/// How long a reset may take (after a cancel request) before the backend is ended.
const RESET_WITHIN: Duration = Duration::from_secs(5);

/// What `DISCARD ALL` does except `DEALLOCATE ALL` and `DISCARD PLANS`:
/// - tenantd keeps prepared statements of its own on the connection (the driver's type
///   lookups, the SQL endpoint's kept statements), and deallocating them would break the next
///   borrower's queries. The last statement lists every prepared statement; the tenant's own
///   (`PREPARE`d) are then deallocated one by one, and the connection is closed instead when
///   it holds too many ([`Listed::retire`]). It is sent as SQL text on purpose: a statement
///   prepared once and bound here could be replaced by the tenant (`DEALLOCATE s3; PREPARE s3
///   AS ...` under the same name), and the reset would run the tenant's SQL. A tenant
///   statement that took a kept statement's name is deallocated here, so the kept one is
///   prepared again at its next use.
/// - A cached plan carries nothing a borrower set: PostgreSQL plans again by itself when an
///   object, the `search_path` or the role a plan depends on changes. Dropping every plan at
///   each lending would only make the kept statements plan again on every request.
///
/// One simple-query message, its statements in one implicit transaction. When the borrower
/// left a transaction block open (the wire's last `ReadyForQuery` says so), `ROLLBACK` goes
/// first. Only then: a `ROLLBACK` with no block open costs PostgreSQL a `WARNING` written to
/// its log, on every lending, which made the reset cost about five times a `SELECT 1`.
const RESET: &str = "CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; UNLISTEN *; \
    SELECT pg_catalog.pg_advisory_unlock_all(); DISCARD TEMP; DISCARD SEQUENCES; \
    SELECT name, from_sql FROM pg_catalog.pg_prepared_statements LIMIT 1000";

/// The `LIMIT` of the listing in [`RESET`]: a connection holding that many prepared statements
/// is closed rather than cleaned one `DEALLOCATE` at a time.
const MOST_PREPARED: usize = 1000;

/// Most statements of tenantd's own (the SQL endpoint's kept statements, the driver's type
/// lookups) a connection may hold at its reset; more means some leaked (a preparation that
/// failed after its `Parse` leaves a statement nobody closes), and the connection is closed.
const MOST_OWN_STATEMENTS: usize = crate::sqlhttp::StatementCache::CAPACITY + 8;

/// What the reset's listing found.
#[derive(Debug, Default, PartialEq)]
struct Listed {
    /// The tenant's own (`PREPARE`) statements, to deallocate.
    tenants: Vec<String>,
    /// Statements prepared over the protocol: tenantd's.
    own: usize,
    /// The tenant prepared a statement under a name of the driver's kind (`s` and digits): it
    /// may have stood in for one of the driver's type lookups, whose answers the driver caches.
    driver_name_taken: bool,
}

impl Listed {
    /// Reads the rows of the listing (`name`, `from_sql`) among the reset's replies.
    fn from_replies(replies: &[tokio_postgres::SimpleQueryMessage]) -> Listed {
        let mut listed = Listed::default();
        for message in replies {
            // Only the listing's rows: the advisory unlock answers a row too.
            let tokio_postgres::SimpleQueryMessage::Row(row) = message else { continue };
            if row.columns().first().map(|c| c.name()) != Some("name") {
                continue;
            }
            let (Ok(Some(name)), Ok(Some(from_sql))) = (row.try_get(0), row.try_get(1)) else { continue };
            if from_sql == "t" {
                let digits = name.strip_prefix('s').unwrap_or("");
                listed.driver_name_taken |= !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit());
                listed.tenants.push(name.to_owned());
            } else {
                listed.own += 1;
            }
        }
        listed
    }

    /// The connection is better closed than cleaned.
    fn retire(&self) -> bool {
        self.tenants.len() + self.own >= MOST_PREPARED
            || self.own > MOST_OWN_STATEMENTS
            || self.driver_name_taken
    }
}

/// Why a reset failed.
#[derive(Debug, thiserror::Error)]
enum ResetFailed {
    #[error("{}", crate::pg::describe(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("reading the reset's replies failed: {0}")]
    Reader(#[from] tokio::task::JoinError),
}

/// The replies to a reset sent behind a statement.
async fn replies(sent: SentReset) -> Result<Vec<SimpleQueryMessage>, ResetFailed> {
    Ok(sent.await??)
}

/// Resets a connection before it goes back to the pool; closes it if that fails. A statement
/// still running (its request was dropped) is cancelled first, and the whole reset is bounded.
/// `behind` holds the resets already sent behind the lending's statements, if any
/// ([`Lent::reset_behind`]); the last of them stands for the reset.
async fn reset(object: managed::Object<TenantManager>, mut behind: Vec<SentReset>) {
    let reset = async {
        // A statement still running is cancelled once: by the request that was abandoned, or
        // here. A second cancel could hit the reset sent behind the statement.
        if !cancelled_before(&object).await && object.busy.load(Ordering::SeqCst) {
            cancel(&object).await;
        }
        if object.guard.tripped().is_some()
            || object.client.is_closed()
            || object.retire.load(Ordering::SeqCst)
        {
            return Ok(false);
        }
        // A request dropped inside `run_guarded` left its lookup limit in place.
        object.guard.unlimited();
        let client = &object.client;
        let listed = match behind.pop() {
            Some(last) => {
                // A reset sent before another statement was run (a kept statement prepared
                // again) is only waited for: the last one ran after everything.
                for earlier in behind {
                    replies(earlier).await?;
                }
                Listed::from_replies(&replies(last).await?)
            }
            None => {
                let reset = match object.guard.idle_in_session() {
                    true => std::borrow::Cow::Borrowed(RESET),
                    false => std::borrow::Cow::Owned(format!("ROLLBACK; {RESET}")),
                };
                Listed::from_replies(&client.simple_query(&reset).await?)
            }
        };
        if listed.retire() {
            return Ok(false);
        }
        let deallocate: Vec<String> =
            listed.tenants.iter().map(|name| crate::tenant_sql::deallocate(name)).collect();
        if !deallocate.is_empty() {
            client.batch_execute(&deallocate.join("; ")).await?;
        }
        // A request whose reply had not been read when the reset began may have opened a
        // transaction block after all (the reset then ran inside it): close such a connection.
        Ok::<_, ResetFailed>(object.guard.idle_in_session())
    };
    match tokio::time::timeout(RESET_WITHIN, reset).await {
        Ok(Ok(true)) => {
            object.busy.store(false, Ordering::SeqCst);
            drop(object);
        }
        Ok(Ok(false)) => drop(managed::Object::take(object)),
        Ok(Err(error)) => {
            metrics::counter!("tenantd_pool_reset_failures_total").increment(1);
            tracing::warn!(%error, "connection could not be reset; closing it");
            drop(managed::Object::take(object));
        }
        Err(_) => {
            // Still busy after a cancel request: a statement that ignores cancellation (a
            // function catching query_canceled in a loop). Closing our end is not enough,
            // the backend would run on: end it on the server.
            metrics::counter!("tenantd_pool_reset_failures_total").increment(1);
            let backend = object.backend.clone();
            tracing::warn!(server = %backend.server, role = %backend.role, pid = backend.pid,
                "connection reset did not finish in time; ending its backend");
            let terminator = managed::Object::pool(&object).and_then(|pool| pool.manager().terminator());
            drop(managed::Object::take(object));
            match terminator {
                Some(terminate) => terminate(backend).await,
                None => tracing::warn!("no terminator: the backend ends when it next writes to its socket"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listing_limit_is_the_one_enforced() {
        assert!(RESET.ends_with(&format!("LIMIT {MOST_PREPARED}")), "{RESET}");
    }

    #[test]
    fn names_of_the_drivers_kind_and_too_many_statements_retire_a_connection() {
        let listed = |tenants: &[&str], own: usize| Listed {
            tenants: tenants.iter().map(|t| (*t).to_owned()).collect(),
            own,
            driver_name_taken: false,
        };
        assert!(!listed(&["mine", "s", "s1x", "stmt"], 3).retire());
        assert!(!listed(&[], MOST_OWN_STATEMENTS).retire());
        assert!(listed(&[], MOST_OWN_STATEMENTS + 1).retire());
        assert!(listed(&["x"; 10], MOST_PREPARED - 10).retire());
        assert!(Listed { driver_name_taken: true, ..listed(&["s12"], 0) }.retire());
    }
}
