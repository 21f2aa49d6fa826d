//! A lent connection: limits enforced while a tenant's request runs on it, cancellation,
//! and the reset before it goes back to the pool.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use deadpool::managed;

use super::{PooledConn, TenantManager};
use crate::pgtls::Endpoint;
use crate::pgwire::{MAX_TYPE_LOOKUPS, Tripped};
use crate::sqlhttp::SqlError;

/// A lent connection. Dereferences to a `tokio_postgres::Client`; when dropped it is reset
/// in the background (a statement still running is cancelled first) and only then returned
/// to the pool.
pub struct Lent {
    pub(super) object: Option<managed::Object<TenantManager>>,
}

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
        conn.busy.store(true, Ordering::SeqCst);
        conn.guard.limit_lookups(MAX_TYPE_LOOKUPS + i64::try_from(statements).unwrap_or(i64::MAX / 2));
        // Dropped before the work ends (client gone, HTTP timeout): cancel it on the server,
        // so a held connection (a handle) is not left running it.
        let abandoned = CancelOnDrop { conn: Some((conn.client.cancel_token(), conn.address.clone())) };
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

/// Cancels a tenant statement when dropped while armed.
struct CancelOnDrop {
    conn: Option<(tokio_postgres::CancelToken, Arc<Endpoint>)>,
}

impl CancelOnDrop {
    fn disarm(mut self) {
        self.conn = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let Some((token, address)) = self.conn.take() else { return };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { cancel_with(&token, &address).await });
        }
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
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(reset(object));
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
///   borrower's queries. The last statement lists the tenant's own `PREPARE`d statements,
///   which are then deallocated one by one. It is sent as SQL text on purpose: a statement
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
/// its log, on every lending, which made the reset cost four times a `SELECT 1`.
const RESET: &str = "CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; UNLISTEN *; \
    SELECT pg_catalog.pg_advisory_unlock_all(); DISCARD TEMP; DISCARD SEQUENCES; \
    SELECT name FROM pg_catalog.pg_prepared_statements WHERE from_sql LIMIT 1000";

/// The `LIMIT` of the listing in [`RESET`]: a connection holding that many prepared statements
/// of the tenant's is closed rather than cleaned one `DEALLOCATE` at a time.
const MOST_PREPARED: usize = 1000;

/// Resets a connection before it goes back to the pool; closes it if that fails. A statement
/// still running (its request was dropped) is cancelled first, and the whole reset is bounded.
async fn reset(object: managed::Object<TenantManager>) {
    let reset = async {
        if object.busy.load(Ordering::SeqCst) {
            cancel(&object).await;
        }
        if object.guard.tripped().is_some() || object.client.is_closed() {
            return Ok(false);
        }
        // A request dropped inside `run_guarded` left its lookup limit in place.
        object.guard.unlimited();
        let client = &object.client;
        let reset = match object.guard.idle_in_session() {
            true => std::borrow::Cow::Borrowed(RESET),
            false => std::borrow::Cow::Owned(format!("ROLLBACK; {RESET}")),
        };
        let replies = client.simple_query(&reset).await?;
        let deallocate: Vec<String> = replies
            .iter()
            .filter_map(|m| match m {
                // Only the last statement's rows: the advisory unlock answers a row too.
                tokio_postgres::SimpleQueryMessage::Row(row)
                    if row.columns().first().map(|c| c.name()) == Some("name") =>
                {
                    row.try_get(0).ok().flatten()
                }
                _ => None,
            })
            .map(crate::tenant_sql::deallocate)
            .collect();
        if deallocate.len() >= MOST_PREPARED {
            return Ok(false);
        }
        if !deallocate.is_empty() {
            client.batch_execute(&deallocate.join("; ")).await?;
        }
        // A request whose reply had not been read when the reset began may have opened a
        // transaction block after all (the reset then ran inside it): close such a connection.
        Ok::<_, tokio_postgres::Error>(object.guard.idle_in_session())
    };
    match tokio::time::timeout(RESET_WITHIN, reset).await {
        Ok(Ok(true)) => {
            object.busy.store(false, Ordering::SeqCst);
            drop(object);
        }
        Ok(Ok(false)) => drop(managed::Object::take(object)),
        Ok(Err(error)) => {
            metrics::counter!("tenantd_pool_reset_failures_total").increment(1);
            tracing::warn!(error = %crate::pg::describe(&error), "connection could not be reset; closing it");
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
