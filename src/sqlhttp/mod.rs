//! SQL over HTTP: runs a client's statements on a tenant connection and returns rows as JSON.
//!
//! Each statement goes through the extended protocol: it is prepared, its JSON parameters
//! are checked against and bound by the parameter types PostgreSQL inferred (`bind`), and
//! its rows are streamed and rendered by column type (`render`): int8 and numeric as exact
//! strings, json as JSON, timestamps as RFC 3339, bytea as `\x` hex, arrays as arrays.
//!
//! Results are bounded by [`Limits`] while they stream: one row past `max_rows`, or one value
//! past the byte budget, ends the statement with [`SqlError::TooLarge`]. At most one row is
//! held beyond what is returned. PostgreSQL still sends the rest of that statement's rows;
//! the driver reads and drops them before the connection's next statement.
//!
//! A row object's keys are the column names; when a name repeats, later columns get `_2`,
//! `_3`... (skipping names already taken), and `columns` lists those same keys in order.

mod bind;
mod datetime;
mod lex;
mod numeric;
mod render;
mod rows;

use std::collections::HashMap;
use std::pin::pin;
use std::sync::{Mutex, PoisonError};
use std::task::Poll;

use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio_postgres::error::ErrorPosition;
use tokio_postgres::{Client, Statement};

use crate::pg;
use rows::Shape;

/// Body of `POST /v1/tenants/{slug}/sql` and `POST /v1/handles/{h}/sql`: either one
/// statement, `{"sql": "...", "params": [...]}`, or a list,
/// `{"statements": [{"sql": "...", "params": [...]}, ...]}`. Unknown fields, both forms at
/// once, or `params` next to `statements` are refused when the body is parsed.
#[derive(Debug, Deserialize)]
#[serde(try_from = "RequestBody")]
pub enum SqlRequest {
    /// `{sql, params?}`.
    One(StatementRequest),
    /// `{statements: [{sql, params?}, ...]}`.
    Many {
        /// The statements, run in order.
        statements: Vec<StatementRequest>,
    },
}

/// One statement and its parameters.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StatementRequest {
    /// A single SQL statement, with `$1`, `$2`... placeholders.
    pub sql: String,
    /// One JSON value per placeholder, bound by the placeholder's type (`null` is NULL).
    #[serde(default)]
    pub params: Vec<Value>,
}

/// The two forms of [`SqlRequest`] as the OpenAPI document describes them (the parser is
/// [`RequestBody`]; this type only gives the schema).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
#[schema(as = SqlRequest)]
pub enum SqlRequestSchema {
    /// One statement in autocommit.
    One(StatementRequest),
    /// A list of statements in one transaction.
    Many(StatementList),
}

/// `{"statements": [...]}`: statements run in order in one transaction.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StatementList {
    /// The statements.
    pub statements: Vec<StatementRequest>,
}

/// The wire form of [`SqlRequest`], checked by `TryFrom` for precise error messages.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestBody {
    sql: Option<String>,
    params: Option<Vec<Value>>,
    statements: Option<Vec<StatementRequest>>,
}

impl TryFrom<RequestBody> for SqlRequest {
    type Error = ValueError;

    fn try_from(body: RequestBody) -> Result<Self, ValueError> {
        match (body.sql, body.statements, body.params) {
            (Some(sql), None, params) => {
                Ok(SqlRequest::One(StatementRequest { sql, params: params.unwrap_or_default() }))
            }
            (None, Some(statements), None) => Ok(SqlRequest::Many { statements }),
            (None, Some(_), Some(_)) => {
                Err(ValueError::new("`params` goes inside each entry of `statements`"))
            }
            (Some(_), Some(_), _) => Err(ValueError::new("give either `sql` or `statements`, not both")),
            (None, None, _) => Err(ValueError::new("missing field `sql` (or `statements`)")),
        }
    }
}

/// A value that cannot be read as its type (a parameter, or a value from the server); the
/// message names the value and the expected form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ValueError(String);

impl ValueError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

impl SqlRequest {
    /// Statements in the request.
    pub fn len(&self) -> usize {
        match self {
            SqlRequest::One(_) => 1,
            SqlRequest::Many { statements } => statements.len(),
        }
    }

    /// True for an empty statement list.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Bounds on what one request may return.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most rows one statement may return.
    pub max_rows: usize,
    /// Most bytes of JSON rows one request may return, all statements together.
    pub max_result_bytes: usize,
}

/// What one statement returned.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StatementResult {
    /// The result columns in order (empty for statements that return no rows).
    pub columns: Vec<Column>,
    /// One object per row, keyed by [`Column::name`].
    #[schema(value_type = Vec<Object>)]
    pub rows: Vec<Map<String, Value>>,
    /// Rows returned, or rows affected (`UPDATE` without `RETURNING`...); 0 for DDL.
    pub row_count: u64,
    /// The statement's first keyword upper-cased (`SELECT`, `INSERT`, `CREATE`...); for
    /// `WITH ...`, the main statement's keyword.
    pub command: String,
}

/// A result column.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Column {
    /// The key of this column in each row (the column name, made unique with `_2`, `_3`...).
    pub name: String,
    /// The PostgreSQL type name (`int4`, `text`, `int4[]`, or the enum/domain/composite name).
    #[serde(rename = "type")]
    pub type_name: String,
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    /// The request itself is wrong: parameter count, a JSON value that does not fit its
    /// parameter's type (the message names `$n` and the type), empty SQL, transaction
    /// control where tenantd manages the transaction...
    #[error("{0}")]
    BadRequest(String),
    /// PostgreSQL refused the statement.
    #[error("{message} (SQLSTATE {sqlstate})")]
    Postgres {
        /// The five-character SQLSTATE code.
        sqlstate: String,
        /// The server's message (prefixed with `statement N: ` inside a list).
        message: String,
        /// The server's detail, if any.
        detail: Option<String>,
        /// The server's hint, if any.
        hint: Option<String>,
        /// 1-based character offset into the statement's SQL, as the server gives it.
        position: Option<u32>,
    },
    /// The result is over [`Limits::max_rows`] rows or [`Limits::max_result_bytes`] bytes.
    #[error("{0}")]
    TooLarge(String),
    /// Connection-level failure (closed connection, I/O): not the client's fault.
    #[error("{0}")]
    Connection(String),
    /// The request ran past its deadline and was cancelled on the server.
    #[error("{0}")]
    Timeout(String),
}

/// Server errors keep their SQLSTATE and fields; anything else is a connection failure.
impl From<tokio_postgres::Error> for SqlError {
    fn from(error: tokio_postgres::Error) -> Self {
        let Some(db) = error.as_db_error() else {
            return SqlError::Connection(pg::describe(&error));
        };
        SqlError::Postgres {
            sqlstate: db.code().code().to_owned(),
            message: db.message().to_owned(),
            detail: db.detail().map(str::to_owned),
            hint: db.hint().map(str::to_owned),
            position: match db.position() {
                Some(ErrorPosition::Original(position)) => Some(*position),
                _ => None,
            },
        }
    }
}

impl SqlError {
    /// Says where the error happened: `statement 2: ...` (1-based) or `COMMIT: ...`.
    fn within(self, place: &str) -> SqlError {
        match self {
            SqlError::BadRequest(m) => SqlError::BadRequest(format!("{place}: {m}")),
            SqlError::TooLarge(m) => SqlError::TooLarge(format!("{place}: {m}")),
            SqlError::Postgres { sqlstate, message, detail, hint, position } => SqlError::Postgres {
                sqlstate,
                message: format!("{place}: {message}"),
                detail,
                hint,
                position,
            },
            other @ (SqlError::Connection(_) | SqlError::Timeout(_)) => other,
        }
    }
}

/// Statements a connection keeps prepared from one request to the next, keyed by their SQL
/// text, for single statements in autocommit ([`run_request`]). A statement seen again is
/// bound and run in one round trip, without preparing it again and closing it after.
///
/// At most [`StatementCache::CAPACITY`] statements, and [`StatementCache::MAX_WEIGHT`] bytes
/// of their SQL and column and parameter descriptions, are kept per connection; when one more
/// does not fit, the cache is emptied (each statement is closed on the server) and fills
/// again. A statement heavier than [`StatementCache::MAX_STATEMENT_WEIGHT`] is never kept. So
/// a tenant sending ever new or huge SQL costs the daemon and the server a bounded amount per
/// connection.
///
/// A kept statement can go stale: a table it reads changed shape, a type it binds changed, or
/// the tenant ran `DEALLOCATE ALL`. PostgreSQL then refuses it when it is bound, before it runs,
/// and [`run_request`] prepares it afresh and runs it once more; see [`Attempt`].
#[derive(Debug, Default)]
pub struct StatementCache {
    kept: Mutex<Kept>,
}

#[derive(Debug, Default)]
struct Kept {
    statements: HashMap<String, Statement>,
    /// Sum of [`weight`] over `statements`.
    weight: usize,
}

/// Bytes a kept statement stands for: its SQL, and a name and a type per column and parameter.
fn weight(sql: &str, statement: &Statement) -> usize {
    sql.len() + 80 * (statement.columns().len() + statement.params().len())
}

impl StatementCache {
    /// Most statements kept per connection.
    pub const CAPACITY: usize = 32;
    /// Most bytes ([`weight`]) kept per connection.
    pub const MAX_WEIGHT: usize = 128 * 1024;
    /// Heaviest statement kept.
    pub const MAX_STATEMENT_WEIGHT: usize = 16 * 1024;

    fn get(&self, sql: &str) -> Option<Statement> {
        self.lock().statements.get(sql).cloned()
    }

    fn keep(&self, sql: &str, statement: Statement) {
        let added = weight(sql, &statement);
        if added > Self::MAX_STATEMENT_WEIGHT {
            return;
        }
        let mut kept = self.lock();
        if let Some(old) = kept.statements.remove(sql) {
            kept.weight -= weight(sql, &old);
        }
        if kept.statements.len() >= Self::CAPACITY || kept.weight + added > Self::MAX_WEIGHT {
            kept.statements.clear();
            kept.weight = 0;
        }
        kept.statements.insert(sql.to_owned(), statement);
        kept.weight += added;
    }

    fn forget(&self, sql: &str) {
        let mut kept = self.lock();
        if let Some(old) = kept.statements.remove(sql) {
            kept.weight -= weight(sql, &old);
        }
    }

    /// Statements kept now.
    pub fn len(&self) -> usize {
        self.lock().statements.len()
    }

    /// True when no statement is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.kept.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Why running a prepared statement failed, and whether it had started.
enum Attempt {
    /// Refused before the statement's `Execute` began: its parameters did not bind here, or
    /// the server answered the `Bind` with an error (a kept statement gone stale is refused
    /// there), and then skipped the `Execute` sent with it. Tenant code may still have run
    /// during the `Bind` (a domain's check on a parameter, a function folded while planning),
    /// never the statement itself.
    NotRun(SqlError),
    /// Failed while running or streaming rows.
    Failed(SqlError),
}

impl Attempt {
    fn error(self) -> SqlError {
        match self {
            Attempt::NotRun(e) | Attempt::Failed(e) => e,
        }
    }

    /// A refusal a fresh preparation may cure: the parameters did not fit the kept statement's
    /// types (a column's type changed), or the server refused the `Bind` for a reason of
    /// class 26 (statement gone), 0A (cached plan must not change result type) or 42 (an
    /// object or operator it used is no longer there). A cancel or a resource error is not
    /// worth a second try. (Tenant code raising such an error during `Bind` runs twice; the
    /// statement itself never started.)
    fn stale(&self) -> bool {
        match self {
            Attempt::NotRun(SqlError::BadRequest(_)) => true,
            Attempt::NotRun(SqlError::Postgres { sqlstate, .. }) => {
                ["26", "0A", "42"].iter().any(|class| sqlstate.starts_with(class))
            }
            _ => false,
        }
    }
}

/// Checks what can be checked of a statement before it reaches the server; returns its
/// command word.
fn check(req: &StatementRequest) -> Result<String, SqlError> {
    let command =
        lex::command(&req.sql).ok_or_else(|| SqlError::BadRequest("sql holds no statement".into()))?;
    if lex::deepest_comment(&req.sql) > lex::MAX_COMMENT_DEPTH {
        return Err(SqlError::BadRequest(format!(
            "comments nest more than {} levels deep",
            lex::MAX_COMMENT_DEPTH
        )));
    }
    if req.params.len() > usize::from(u16::MAX) {
        return Err(SqlError::BadRequest(format!(
            "at most {} parameters (got {})",
            u16::MAX,
            req.params.len()
        )));
    }
    if lex::copies_with_client(&req.sql) {
        let message = "COPY to or from the client (STDIN/STDOUT) is not available over HTTP";
        return Err(SqlError::BadRequest(message.into()));
    }
    Ok(command)
}

/// Runs one statement: prepare, bind the JSON params by the prepared parameter types, stream
/// the rows. `budget` is what is left of the request's result bytes; it is decremented by
/// the size of the rows returned.
pub async fn run_statement(
    client: &Client,
    req: &StatementRequest,
    limits: &Limits,
    budget: &mut usize,
) -> Result<StatementResult, SqlError> {
    let command = check(req)?;
    let statement = client.prepare(&req.sql).await?;
    execute(client, &statement, req, command, limits, budget, None).await.map_err(Attempt::error)
}

/// Called once a statement's messages are queued on its connection, before its answer is
/// read: what the caller wants sent right behind it (the pool's reset, see
/// `Lent::reset_behind`).
pub type Behind<'a> = &'a (dyn Fn() + Sync);

/// [`run_statement`] with a statement kept in `cache` when there is one. A kept statement
/// refused as stale before its `Execute` began is forgotten, prepared afresh and run once
/// more; only then does its error reach the client. Any other refusal at `Bind` forgets it
/// too, so that no kept statement fails for good. Only for a statement in autocommit: inside
/// a transaction block a refused `Bind` would have aborted the transaction. `behind` is called
/// behind each attempt that reached the server.
async fn run_kept(
    client: &Client,
    cache: &StatementCache,
    req: &StatementRequest,
    limits: &Limits,
    budget: &mut usize,
    behind: Behind<'_>,
) -> Result<StatementResult, SqlError> {
    let command = check(req)?;
    if let Some(statement) = cache.get(&req.sql) {
        match execute(client, &statement, req, command.clone(), limits, budget, Some(behind)).await {
            Err(attempt) if attempt.stale() => {
                if let Attempt::NotRun(SqlError::Postgres { .. }) = attempt {
                    metrics::counter!("tenantd_sql_statements_reprepared_total").increment(1);
                }
                cache.forget(&req.sql);
            }
            Err(Attempt::NotRun(error)) => {
                cache.forget(&req.sql);
                return Err(error);
            }
            result => return result.map_err(Attempt::error),
        }
    }
    let statement = client.prepare(&req.sql).await?;
    let result = execute(client, &statement, req, command, limits, budget, Some(behind)).await;
    // Kept only once it bound: parameters that never fit it would only cycle through the cache.
    if !matches!(result, Err(Attempt::NotRun(_))) {
        cache.keep(&req.sql, statement);
    }
    result.map_err(Attempt::error)
}

/// Binds and runs a prepared statement, rendering its rows; calls `behind` once the statement
/// is on its way.
async fn execute(
    client: &Client,
    statement: &Statement,
    req: &StatementRequest,
    command: String,
    limits: &Limits,
    budget: &mut usize,
    behind: Option<Behind<'_>>,
) -> Result<StatementResult, Attempt> {
    let params = bind::bind(statement.params(), &req.params).map_err(Attempt::NotRun)?;
    let shape = Shape::new(statement.columns());
    // tokio-postgres reads the server's answer to `Bind` before it returns the stream: an error
    // here means the statement never ran.
    let mut bound = pin!(client.query_raw(statement, params.iter()));
    // Its first poll queues `Bind`/`Execute`/`Sync` on the connection (unless it cannot be
    // encoded or the connection is closed), then looks for the answer: `Ready` may come at
    // once when the connection's task, on another thread, already read it. Either way what
    // goes behind is sent after the statement; after a statement that was never sent it is
    // one reset more.
    let first = futures::poll!(bound.as_mut());
    if let Some(behind) = behind {
        behind();
    }
    let stream = match first {
        Poll::Ready(answered) => answered,
        Poll::Pending => bound.await,
    };
    let mut stream = pin!(stream.map_err(|e| Attempt::NotRun(e.into()))?);
    let mut rows = Vec::new();
    while let Some(row) = stream.try_next().await.map_err(|e| Attempt::Failed(e.into()))? {
        if rows.len() >= limits.max_rows {
            return Err(Attempt::Failed(SqlError::TooLarge(format!(
                "the result has more than {} rows (the limit)",
                limits.max_rows
            ))));
        }
        rows.push(shape.render(&row, budget, limits).map_err(Attempt::Failed)?);
    }
    let row_count = stream.rows_affected().unwrap_or(rows.len() as u64);
    Ok(StatementResult { columns: shape.columns, rows, row_count, command })
}

/// Runs a request where tenantd owns the transaction: one statement in autocommit, or a list
/// in one transaction (`BEGIN`, each statement, `COMMIT`; on any error `ROLLBACK`, and the
/// error says `statement N: ...`, N counting from 1). Transaction control statements are
/// refused: explicit transactions belong on a connection handle ([`run_raw`]).
///
/// A single statement uses (and fills) `cache`, the connection's kept statements, and
/// `behind` is called once it is on its way (see [`Behind`]); statements of a list are
/// prepared for the request and closed after it.
pub async fn run_request(
    client: &Client,
    cache: &StatementCache,
    req: &SqlRequest,
    limits: &Limits,
    behind: Behind<'_>,
) -> Result<Vec<StatementResult>, SqlError> {
    let mut budget = limits.max_result_bytes;
    let statements = match req {
        SqlRequest::One(statement) => {
            refuse_transaction_control(statement)?;
            return Ok(vec![run_kept(client, cache, statement, limits, &mut budget, behind).await?]);
        }
        SqlRequest::Many { statements } => statements,
    };
    not_empty(statements)?;
    for (i, statement) in statements.iter().enumerate() {
        refuse_transaction_control(statement).map_err(|e| e.within(&format!("statement {}", i + 1)))?;
    }
    client.batch_execute("BEGIN").await?;
    match run_each(client, statements, limits, &mut budget).await {
        Ok(results) => {
            client.batch_execute("COMMIT").await.map_err(|e| SqlError::from(e).within("COMMIT"))?;
            Ok(results)
        }
        Err(error) => {
            if let Err(e) = client.batch_execute("ROLLBACK").await {
                tracing::warn!(error = %pg::describe(&e), "ROLLBACK after a failed statement list failed");
            }
            Err(error)
        }
    }
}

/// Runs statements as given, with no transaction handling (for connection handles, where
/// `BEGIN`/`COMMIT` are the caller's). In a list, the first error stops the run and says
/// `statement N: ...`; what the earlier statements did stays, as on any connection.
pub async fn run_raw(
    client: &Client,
    req: &SqlRequest,
    limits: &Limits,
) -> Result<Vec<StatementResult>, SqlError> {
    let mut budget = limits.max_result_bytes;
    match req {
        SqlRequest::One(statement) => Ok(vec![run_statement(client, statement, limits, &mut budget).await?]),
        SqlRequest::Many { statements } => {
            not_empty(statements)?;
            run_each(client, statements, limits, &mut budget).await
        }
    }
}

fn not_empty(statements: &[StatementRequest]) -> Result<(), SqlError> {
    if statements.is_empty() {
        return Err(SqlError::BadRequest("`statements` is empty".into()));
    }
    Ok(())
}

fn refuse_transaction_control(statement: &StatementRequest) -> Result<(), SqlError> {
    match lex::transaction_control(&statement.sql) {
        Some(command) => Err(SqlError::BadRequest(format!(
            "{command} is not allowed here: a single statement runs in autocommit and a list runs in \
             one transaction; open a connection handle to control transactions yourself"
        ))),
        None => Ok(()),
    }
}

async fn run_each(
    client: &Client,
    statements: &[StatementRequest],
    limits: &Limits,
    budget: &mut usize,
) -> Result<Vec<StatementResult>, SqlError> {
    let mut results = Vec::with_capacity(statements.len());
    for (i, statement) in statements.iter().enumerate() {
        let result = run_statement(client, statement, limits, budget).await;
        results.push(result.map_err(|e| e.within(&format!("statement {}", i + 1)))?);
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn request_bodies_take_one_form_or_the_other() {
        let one: SqlRequest = serde_json::from_value(json!({"sql": "SELECT $1", "params": [1]})).unwrap();
        assert!(matches!(one, SqlRequest::One(StatementRequest { ref params, .. }) if params.len() == 1));
        let many: SqlRequest = serde_json::from_value(json!({"statements": [{"sql": "SELECT 1"}]})).unwrap();
        assert!(matches!(many, SqlRequest::Many { ref statements } if statements.len() == 1));
        for bad in [
            json!({"sql": "SELECT 1", "extra": true}),
            json!({"sql": "SELECT 1", "statements": []}),
            json!({"statements": [], "params": []}),
            json!({"statements": [{"sql": "SELECT 1", "bogus": 1}]}),
            json!({}),
        ] {
            assert!(serde_json::from_value::<SqlRequest>(bad.clone()).is_err(), "{bad} accepted");
        }
    }
}
