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

use std::pin::pin;

use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio_postgres::Client;
use tokio_postgres::error::ErrorPosition;

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

/// Runs one statement: prepare, bind the JSON params by the prepared parameter types, stream
/// the rows. `budget` is what is left of the request's result bytes; it is decremented by
/// the size of the rows returned.
pub async fn run_statement(
    client: &Client,
    req: &StatementRequest,
    limits: &Limits,
    budget: &mut usize,
) -> Result<StatementResult, SqlError> {
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
    let statement = client.prepare(&req.sql).await?;
    let params = bind::bind(statement.params(), &req.params)?;
    let shape = Shape::new(statement.columns());
    let mut stream = pin!(client.query_raw(&statement, params.iter()).await?);
    let mut rows = Vec::new();
    while let Some(row) = stream.try_next().await? {
        if rows.len() >= limits.max_rows {
            return Err(SqlError::TooLarge(format!(
                "the result has more than {} rows (the limit)",
                limits.max_rows
            )));
        }
        rows.push(shape.render(&row, budget, limits)?);
    }
    let row_count = stream.rows_affected().unwrap_or(rows.len() as u64);
    Ok(StatementResult { columns: shape.columns, rows, row_count, command })
}

/// Runs a request where tenantd owns the transaction: one statement in autocommit, or a list
/// in one transaction (`BEGIN`, each statement, `COMMIT`; on any error `ROLLBACK`, and the
/// error says `statement N: ...`, N counting from 1). Transaction control statements are
/// refused: explicit transactions belong on a connection handle ([`run_raw`]).
pub async fn run_request(
    client: &Client,
    req: &SqlRequest,
    limits: &Limits,
) -> Result<Vec<StatementResult>, SqlError> {
    let mut budget = limits.max_result_bytes;
    let statements = match req {
        SqlRequest::One(statement) => {
            refuse_transaction_control(statement)?;
            return Ok(vec![run_statement(client, statement, limits, &mut budget).await?]);
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
