//! SQL over HTTP against a real PostgreSQL: JSON parameters bound by type, rows rendered by
//! type, errors with their SQLSTATE, limits, and statement lists as one transaction.

use serde_json::{Map, Value, json};
use tenantd::sqlhttp::{self, Limits, SqlError, SqlRequest, StatementCache, StatementResult};

const LIMITS: Limits = Limits { max_rows: 1000, max_result_bytes: 1 << 20 };

/// A connection to a fresh database of this test's own.
async fn database() -> tokio_postgres::Client {
    let cluster = crate::common::shared_cluster();
    let db = cluster.create_database("sqlh").await;
    crate::common::connect(&cluster.admin_url(&db)).await.expect("connection")
}

/// A request body, parsed as the HTTP layer parses it.
fn body(value: Value) -> SqlRequest {
    serde_json::from_value(value).expect("valid request body")
}

/// Runs one statement the way `POST /v1/tenants/{slug}/sql` does.
async fn run(client: &tokio_postgres::Client, sql: &str, params: Value) -> Result<StatementResult, SqlError> {
    let cache = StatementCache::default();
    let mut results =
        sqlhttp::run_request(client, &cache, &body(json!({ "sql": sql, "params": params })), &LIMITS, &|| {})
            .await?;
    Ok(results.remove(0))
}

/// The only row of a statement that must succeed.
async fn only_row(client: &tokio_postgres::Client, sql: &str, params: Value) -> Map<String, Value> {
    let mut result = run(client, sql, params).await.unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    assert_eq!(result.rows.len(), 1, "{sql}");
    result.rows.remove(0)
}

async fn many(
    client: &tokio_postgres::Client,
    statements: Value,
    limits: &Limits,
) -> Result<Vec<StatementResult>, SqlError> {
    let cache = StatementCache::default();
    sqlhttp::run_request(client, &cache, &body(json!({ "statements": statements })), limits, &|| {}).await
}

fn bad_request(result: Result<impl std::fmt::Debug, SqlError>) -> String {
    match result {
        Err(SqlError::BadRequest(message)) => message,
        other => panic!("expected BadRequest, got {other:?}"),
    }
}

fn sqlstate(result: Result<impl std::fmt::Debug, SqlError>) -> (String, String, Option<String>, Option<u32>) {
    match result {
        Err(SqlError::Postgres { sqlstate, message, detail, position, .. }) => {
            (sqlstate, message, detail, position)
        }
        other => panic!("expected a PostgreSQL error, got {other:?}"),
    }
}

#[tokio::test]
async fn scalar_types_round_trip_through_parameters() {
    let client = database().await;
    // Output is UTC whatever the session's time zone.
    client.batch_execute("SET TIME ZONE 'Asia/Kolkata'").await.unwrap();
    let sql = "SELECT $1::bool AS bool, $2::int2 AS int2, $3::int4 AS int4, $4::int8 AS int8, $5::oid AS oid, \
               $6::float4 AS float4, $7::float8 AS float8, $8::numeric AS numeric, $9::text AS text, \
               $10::varchar AS varchar, $11::char(5) AS bpchar, $12::name AS name, $13::json AS json, \
               $14::jsonb AS jsonb, $15::uuid AS uuid, $16::bytea AS bytea, $17::date AS date, $18::time AS time, \
               $19::timestamp AS timestamp, $20::timestamptz AS timestamptz, $21::inet AS inet, \
               $22::float8 AS nan, $23::text AS from_number, $24::int4 AS from_string, $25::numeric AS from_float";
    let params = json!([
        true, 32767, -2147483648i64, "-9223372036854775808", 4294967295u64,
        1.5, 0.1, "-123.4500", "tekst ☃", "var", "pad", "nm",
        {"a": [1, null]}, {"b": "x"}, "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11", "\\xDEADbeef",
        "2024-02-29", "13:45:30.25", "2024-02-29T13:45:30.123456", "2024-02-29T15:45:30+02:00", "192.168.0.1/24",
        "NaN", 42, "17", 0.25
    ]);
    let result = run(&client, sql, params).await.expect("round trip");
    assert_eq!(result.command, "SELECT");
    assert_eq!(result.row_count, 1);
    let types: Vec<&str> = result.columns.iter().map(|c| c.type_name.as_str()).collect();
    assert_eq!(&types[..5], ["bool", "int2", "int4", "int8", "oid"]);
    assert_eq!(types[10], "bpchar");
    assert_eq!(
        Value::Object(result.rows[0].clone()),
        json!({
            "bool": true, "int2": 32767, "int4": -2147483648i64, "int8": "-9223372036854775808",
            "oid": 4294967295u64, "float4": 1.5, "float8": 0.1, "numeric": "-123.4500",
            "text": "tekst ☃", "varchar": "var", "bpchar": "pad  ", "name": "nm",
            "json": {"a": [1, null]}, "jsonb": {"b": "x"},
            "uuid": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "bytea": "\\xdeadbeef",
            "date": "2024-02-29", "time": "13:45:30.25", "timestamp": "2024-02-29T13:45:30.123456",
            "timestamptz": "2024-02-29T13:45:30Z", "inet": "192.168.0.1/24", "nan": "NaN",
            "from_number": "42", "from_string": 17, "from_float": "0.25"
        })
    );
}

#[tokio::test]
async fn values_without_a_json_twin_render_as_documented() {
    let client = database().await;
    let row = only_row(
        &client,
        "SELECT 'infinity'::timestamptz AS ts_inf, '-infinity'::timestamp AS ts_ninf, '-infinity'::date AS d_inf, \
         'Infinity'::float8 AS f_inf, '-Infinity'::float4 AS f_ninf, 'NaN'::numeric AS n_nan, \
         '-Infinity'::numeric AS n_ninf, 0::numeric AS zero, '-0.0012'::numeric AS small, \
         '1 year 2 months 3 days 04:05:06.5'::interval AS iv, '-1 day -00:00:00.5'::interval AS neg_iv, \
         '0'::interval AS no_iv, NULL::int4 AS null_int, NULL::jsonb AS null_json, '10.0.0.0/8'::cidr AS cidr, \
         '::1'::inet AS inet6, '12:00:00.5+05:30'::timetz AS timetz, B'1011'::varbit AS bits, \
         '08:00:2b:01:02:03'::macaddr AS mac, int4range(1, 5) AS range, 'x'::\"char\" AS ch, \
         '<a/>'::xml AS xml, '0001-01-01 BC'::date AS bc, '16/B374D848'::pg_lsn AS lsn, \
         'pg_class'::regclass AS regclass, 'a b'::tsvector AS unknown_type",
        json!([]),
    )
    .await;
    let expected = json!({
        "ts_inf": "infinity", "ts_ninf": "-infinity", "d_inf": "-infinity", "f_inf": "Infinity",
        "f_ninf": "-Infinity", "n_nan": "NaN", "n_ninf": "-Infinity", "zero": "0", "small": "-0.0012",
        "iv": "P1Y2M3DT4H5M6.5S", "neg_iv": "P-1DT-0.5S", "no_iv": "PT0S", "null_int": null, "null_json": null,
        "cidr": "10.0.0.0/8", "inet6": "::1", "timetz": "12:00:00.5+05:30", "bits": "1011",
        "mac": "08:00:2b:01:02:03", "range": "[1,5)", "ch": "x", "xml": "<a/>", "bc": "0000-01-01",
        "lsn": "16/B374D848", "regclass": 1259
    });
    for (key, value) in expected.as_object().unwrap() {
        assert_eq!(&row[key], value, "{key}");
    }
    // tsvector's binary format is not text: it comes back as hex.
    assert!(row["unknown_type"].as_str().unwrap().starts_with("\\x"), "{}", row["unknown_type"]);
}

#[tokio::test]
async fn a_table_of_every_type_round_trips() {
    let client = database().await;
    let columns = "id int PRIMARY KEY, b bool, i2 int2, i4 int4, i8 int8, o oid, f4 float4, f8 float8, \
                   n numeric(12, 3), t text, vc varchar(10), bp char(3), nm name, j json, jb jsonb, u uuid, \
                   by bytea, d date, tm time, ts timestamp, tz timestamptz, ip inet, ia int4[], ta text[]";
    let insert = "INSERT INTO everything VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, \
                  $15, $16, $17, $18, $19, $20, $21, $22, $23, $24)";
    let full = json!([
        1, false, -7, 123456, "9007199254740993", 99, -2.5, 1e300, 12.5, "ünïcode", "short", "ab", "nm",
        [1, "two", {"three": 3}], {"nested": {"deep": [true, null]}}, "00000000-0000-0000-0000-000000000001",
        "\\x00ff", "1999-12-31", "23:59:59.999999", "infinity", "1970-01-01T00:00:00Z", "::ffff:1.2.3.4",
        [[1, 2], [3, null]], ["a", "b,c", "\"q\"", null]
    ]);
    let mut nulls = vec![json!(2)];
    nulls.resize(24, Value::Null);
    let results = many(
        &client,
        json!([
            {"sql": format!("CREATE TABLE everything ({columns})")},
            {"sql": insert, "params": full},
            {"sql": insert, "params": nulls},
            {"sql": "SELECT * FROM everything ORDER BY id"}
        ]),
        &LIMITS,
    )
    .await
    .expect("create, insert, select");
    let select = &results[3];
    assert_eq!(select.row_count, 2);
    assert_eq!(
        Value::Object(select.rows[0].clone()),
        json!({
            "id": 1, "b": false, "i2": -7, "i4": 123456, "i8": "9007199254740993", "o": 99, "f4": -2.5,
            "f8": 1e300, "n": "12.500", "t": "ünïcode", "vc": "short", "bp": "ab ", "nm": "nm",
            "j": [1, "two", {"three": 3}], "jb": {"nested": {"deep": [true, null]}},
            "u": "00000000-0000-0000-0000-000000000001", "by": "\\x00ff", "d": "1999-12-31",
            "tm": "23:59:59.999999", "ts": "infinity", "tz": "1970-01-01T00:00:00Z", "ip": "::ffff:1.2.3.4",
            "ia": [[1, 2], [3, null]], "ta": ["a", "b,c", "\"q\"", null]
        })
    );
    let second = &select.rows[1];
    assert_eq!(second["id"], 2);
    assert!(second.iter().filter(|(k, _)| *k != "id").all(|(_, v)| v.is_null()), "{second:?}");
    let types: Vec<&str> = select.columns.iter().map(|c| c.type_name.as_str()).collect();
    assert_eq!(&types[22..], ["int4[]", "text[]"]);
}

#[tokio::test]
async fn arrays_enums_domains_and_composites() {
    let client = database().await;
    client
        .batch_execute(
            "CREATE TYPE mood AS ENUM ('sad', 'happy'); \
             CREATE DOMAIN positive AS int4 CHECK (VALUE > 0); \
             CREATE TYPE pair AS (label text, amount numeric, tags text[], at date)",
        )
        .await
        .unwrap();
    let result = run(
        &client,
        "SELECT $1::int4[] AS grid, $2::text[] AS words, $3::mood AS mood, $4::mood[] AS moods, \
         $5::positive AS pos, ROW($6, 1.50, ARRAY['a', NULL], '2020-02-02')::pair AS pair, \
         ARRAY[[1.5, NULL], [2, 3]]::numeric[] AS num_grid, '{}'::int4[] AS empty, ROW(1, 'a') AS rec, \
         $7::jsonb[] AS docs, ARRAY[ROW('p', 2, NULL, NULL)::pair] AS pairs, $8::positive[] AS positives, \
         '[0:1]={7,8}'::int4[] AS shifted, $9::int8[] AS cube",
        json!([
            [[1, null, 3], [4, 5, null]], ["a", null, "c"], "happy", ["sad", "happy"], 7, "x",
            [{"a": 1}, [1, 2]], [1, null], [[["1"], ["2"]], [["3"], ["9223372036854775807"]]]
        ]),
    )
    .await
    .expect("arrays and user types");
    let row = &result.rows[0];
    assert_eq!(row["grid"], json!([[1, null, 3], [4, 5, null]]));
    assert_eq!(row["words"], json!(["a", null, "c"]));
    assert_eq!(row["mood"], "happy");
    assert_eq!(row["moods"], json!(["sad", "happy"]));
    assert_eq!(row["pos"], 7);
    assert_eq!(row["pair"], json!({"label": "x", "amount": "1.50", "tags": ["a", null], "at": "2020-02-02"}));
    assert_eq!(row["num_grid"], json!([["1.5", null], ["2", "3"]]));
    assert_eq!(row["empty"], json!([]));
    assert_eq!(row["rec"], json!({"f1": 1, "f2": "a"}));
    assert_eq!(row["docs"], json!([{"a": 1}, [1, 2]]));
    assert_eq!(row["pairs"], json!([{"label": "p", "amount": "2", "tags": null, "at": null}]));
    assert_eq!(row["positives"], json!([1, null]));
    assert_eq!(row["shifted"], json!([7, 8]));
    assert_eq!(row["cube"], json!([[["1"], ["2"]], [["3"], ["9223372036854775807"]]]));
    let type_of = |name: &str| result.columns.iter().find(|c| c.name == name).map(|c| c.type_name.clone());
    assert_eq!(type_of("mood").as_deref(), Some("mood"));
    assert_eq!(type_of("pair").as_deref(), Some("pair"));
    assert_eq!(type_of("moods").as_deref(), Some("mood[]"));

    // The server still checks what JSON cannot: domain constraints and enum labels.
    let (code, ..) = sqlstate(run(&client, "SELECT $1::positive", json!([0])).await);
    assert_eq!(code, "23514");
    let (code, ..) = sqlstate(run(&client, "SELECT $1::mood", json!(["angry"])).await);
    assert_eq!(code, "22P02");
}

#[tokio::test]
async fn int8_and_numeric_keep_every_digit() {
    let client = database().await;
    let forty = "1234567890123456789012345678901234567890.0123456789";
    let row = only_row(
        &client,
        "SELECT $1::int8 AS max, $2::int8 AS from_number, $3::numeric AS forty, $3::numeric + 1 AS plus_one, \
         $4::numeric AS tiny, $5::numeric AS from_json, $6::numeric(20, 10) AS scaled",
        json!(["9223372036854775807", 9223372036854775807i64, forty, "1e-20", 0.1, "-5"]),
    )
    .await;
    assert_eq!(row["max"], "9223372036854775807");
    assert_eq!(row["from_number"], "9223372036854775807");
    assert_eq!(row["forty"], forty);
    assert_eq!(row["plus_one"], "1234567890123456789012345678901234567891.0123456789");
    assert_eq!(row["tiny"], "0.00000000000000000001");
    assert_eq!(row["from_json"], "0.1");
    assert_eq!(row["scaled"], "-5.0000000000");
}

#[tokio::test]
async fn parameter_mistakes_are_bad_requests_naming_the_parameter() {
    let client = database().await;
    let message = bad_request(run(&client, "SELECT $1::int4, $2::text", json!([1])).await);
    assert_eq!(message, "expected 2 parameters, got 1");
    let message = bad_request(run(&client, "SELECT $1::int4", json!([true])).await);
    assert!(message.contains("$1") && message.contains("int4"), "{message}");
    let message = bad_request(run(&client, "SELECT $1::int4, $2::int2", json!([1, 40000])).await);
    assert!(
        message.contains("$2") && message.contains("int2") && message.contains("out of range"),
        "{message}"
    );
    let message = bad_request(run(&client, "SELECT $1::int8", json!(["12abc"])).await);
    assert!(message.contains("$1") && message.contains("int8"), "{message}");
    let message = bad_request(run(&client, "SELECT $1::timestamptz", json!(["2024-01-01T00:00:00"])).await);
    assert!(message.contains("$1") && message.contains("offset"), "{message}");
    let message = bad_request(run(&client, "SELECT $1::int4[]", json!([[1, [2]]])).await);
    assert!(message.contains("$1") && message.contains("int4[]"), "{message}");
    let message = bad_request(run(&client, "SELECT $1::interval", json!(["1 day"])).await);
    assert!(message.contains("$1::text::interval"), "{message}");
    // The suggested cast works, and NULL binds to any type.
    let row =
        only_row(&client, "SELECT $1::text::interval AS iv, $2::interval AS n", json!(["1 day", null])).await;
    assert_eq!(Value::Object(row), json!({"iv": "P1D", "n": null}));
    let message = bad_request(run(&client, "  -- only a comment\n", json!([])).await);
    assert!(message.contains("no statement"), "{message}");
}

#[tokio::test]
async fn server_errors_keep_sqlstate_position_and_detail() {
    let client = database().await;
    let (code, message, _, position) = sqlstate(run(&client, "SELECT 1 FROM", json!([])).await);
    assert_eq!((code.as_str(), position), ("42601", Some(14)), "{message}");
    let (code, _, _, position) = sqlstate(run(&client, "SELECT * FROM nowhere", json!([])).await);
    assert_eq!((code.as_str(), position), ("42P01", Some(15)));

    run(&client, "CREATE TABLE u (id int PRIMARY KEY)", json!([])).await.unwrap();
    run(&client, "INSERT INTO u VALUES ($1)", json!([1])).await.unwrap();
    let (code, _, detail, _) = sqlstate(run(&client, "INSERT INTO u VALUES ($1)", json!([1])).await);
    assert_eq!(code, "23505");
    assert_eq!(detail.as_deref(), Some("Key (id)=(1) already exists."));

    // Two statements in one string: refused as the client's mistake either way.
    match run(&client, "SELECT 1; SELECT 2", json!([])).await {
        Err(SqlError::BadRequest(_)) => {}
        Err(SqlError::Postgres { sqlstate, .. }) if sqlstate == "42601" => {}
        other => panic!("expected a client error, got {other:?}"),
    }

    // A connection that dies is not the client's fault.
    let _terminated = run(&client, "SELECT pg_terminate_backend(pg_backend_pid())", json!([])).await;
    match run(&client, "SELECT 1", json!([])).await {
        Err(SqlError::Connection(_)) => {}
        other => panic!("expected a connection error, got {other:?}"),
    }
}

#[tokio::test]
async fn results_over_the_limits_are_refused_early() {
    let client = database().await;
    let limits = Limits { max_rows: 10, max_result_bytes: 1000 };
    // One cache for the whole test, as a pooled connection has: the statements run again are
    // the kept ones.
    let cache = StatementCache::default();
    let count = |n: i32| body(json!({"sql": "SELECT generate_series(1, $1) AS n", "params": [n]}));
    let results =
        sqlhttp::run_request(&client, &cache, &count(10), &limits, &|| {}).await.expect("10 rows fit");
    assert_eq!(results[0].row_count, 10);
    match sqlhttp::run_request(&client, &cache, &count(100_000), &limits, &|| {}).await {
        Err(SqlError::TooLarge(message)) => assert!(message.contains("10 rows"), "{message}"),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    // The connection is still usable after a statement stopped early.
    let results =
        sqlhttp::run_request(&client, &cache, &count(3), &limits, &|| {}).await.expect("after a refusal");
    assert_eq!(results[0].row_count, 3);

    let wide = body(json!({"sql": "SELECT repeat('x', 2000) AS s"}));
    match sqlhttp::run_request(&client, &cache, &wide, &limits, &|| {}).await {
        Err(SqlError::TooLarge(message)) => assert!(message.contains("1000 bytes"), "{message}"),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    // The byte budget is shared by the statements of one request.
    let half = json!({"sql": "SELECT repeat('x', 600) AS s"});
    match many(&client, json!([half, half]), &limits).await {
        Err(SqlError::TooLarge(message)) => assert!(message.starts_with("statement 2: "), "{message}"),
        other => panic!("expected TooLarge, got {other:?}"),
    }
}

#[tokio::test]
async fn a_statement_list_is_one_transaction() {
    let client = database().await;
    run(&client, "CREATE TABLE items (id int PRIMARY KEY, name text)", json!([])).await.unwrap();
    let failed = many(
        &client,
        json!([
            {"sql": "INSERT INTO items VALUES ($1, $2)", "params": [1, "first"]},
            {"sql": "INSERT INTO items VALUES ($1, $2)", "params": [1, "duplicate"]},
        ]),
        &LIMITS,
    )
    .await;
    let (code, message, ..) = sqlstate(failed);
    assert_eq!(code, "23505");
    assert!(message.starts_with("statement 2: "), "{message}");
    let count = only_row(&client, "SELECT count(*) AS n FROM items", json!([])).await;
    assert_eq!(count["n"], "0", "statement 1 was rolled back");

    let message = bad_request(
        many(&client, json!([{"sql": "SELECT 1"}, {"sql": "SELECT $1::int2", "params": ["x"]}]), &LIMITS)
            .await,
    );
    assert!(message.starts_with("statement 2: parameter $1"), "{message}");
    let message = bad_request(many(&client, json!([{"sql": "BEGIN"}, {"sql": "SELECT 1"}]), &LIMITS).await);
    assert!(message.contains("statement 1") && message.contains("BEGIN"), "{message}");
    let message = bad_request(run(&client, "commit", json!([])).await);
    assert!(message.contains("COMMIT") && message.contains("handle"), "{message}");
    assert!(bad_request(many(&client, json!([]), &LIMITS).await).contains("empty"));

    let results = many(
        &client,
        json!([
            {"sql": "INSERT INTO items VALUES ($1, $2)", "params": [1, "one"]},
            {"sql": "SAVEPOINT s"},
            {"sql": "INSERT INTO items VALUES (2, 'two') RETURNING id, name"},
            {"sql": "SELECT count(*) AS n FROM items"},
        ]),
        &LIMITS,
    )
    .await
    .expect("list commits");
    assert_eq!(results.len(), 4);
    assert_eq!(results[2].rows, vec![json!({"id": 2, "name": "two"}).as_object().unwrap().clone()]);
    assert_eq!(results[3].rows[0]["n"], "2");
    let count = only_row(&client, "SELECT count(*) AS n FROM items", json!([])).await;
    assert_eq!(count["n"], "2", "committed");
}

#[tokio::test]
async fn commands_and_row_counts() {
    let client = database().await;
    let results = many(
        &client,
        json!([
            {"sql": "CREATE TABLE t (id int, v text)"},
            {"sql": "INSERT INTO t SELECT g, 'v' FROM generate_series(1, 5) g"},
            {"sql": "UPDATE t SET v = 'w' WHERE id > 2"},
            {"sql": "DELETE FROM t WHERE id = 1 RETURNING id"},
            {"sql": "WITH gone AS (DELETE FROM t WHERE id = 2 RETURNING id) UPDATE t SET v = 'x' WHERE id = 3"},
            {"sql": "/* hello */ select id from t order by id"},
        ]),
        &LIMITS,
    )
    .await
    .expect("commands");
    let summary: Vec<(&str, u64, usize)> =
        results.iter().map(|r| (r.command.as_str(), r.row_count, r.rows.len())).collect();
    assert_eq!(
        summary,
        [
            ("CREATE", 0, 0),
            ("INSERT", 5, 0),
            ("UPDATE", 3, 0),
            ("DELETE", 1, 1),
            ("UPDATE", 1, 0),
            ("SELECT", 3, 3)
        ]
    );
    assert!(results[2].columns.is_empty());
    // Utility statements that refuse transaction blocks run as single statements.
    let vacuum = run(&client, "VACUUM t", json!([])).await.expect("VACUUM");
    assert_eq!((vacuum.command.as_str(), vacuum.row_count), ("VACUUM", 0));
    // COPY with the client needs the copy sub-protocol: refused before it can hang the connection.
    let message = bad_request(run(&client, "COPY t TO STDOUT", json!([])).await);
    assert!(message.contains("COPY"), "{message}");
    let after = only_row(&client, "SELECT count(*) AS n FROM t", json!([])).await;
    assert_eq!(after["n"], "3");
}

#[tokio::test]
async fn duplicate_column_names_get_suffixes() {
    let client = database().await;
    let result = run(&client, "SELECT 1 AS a, 2 AS a, 'b' AS b, 4 AS a", json!([])).await.unwrap();
    let names: Vec<&str> = result.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["a", "a_2", "b", "a_3"]);
    assert_eq!(Value::Object(result.rows[0].clone()), json!({"a": 1, "a_2": 2, "b": "b", "a_3": 4}));
}

#[tokio::test]
async fn raw_runs_leave_transactions_to_the_caller() {
    let client = database().await;
    let cluster = crate::common::shared_cluster();
    run(&client, "CREATE TABLE t (id int)", json!([])).await.unwrap();
    let open = body(json!({"statements": [{"sql": "BEGIN"}, {"sql": "INSERT INTO t VALUES (1)"}]}));
    let results = sqlhttp::run_raw(&client, &open, &LIMITS).await.expect("BEGIN on a handle");
    assert_eq!(results[1].row_count, 1);
    // Uncommitted: another session sees nothing.
    let db: String = client.query_one("SELECT current_database()", &[]).await.unwrap().get(0);
    let other = crate::common::connect(&cluster.admin_url(&db)).await.unwrap();
    let seen = only_row(&other, "SELECT count(*) AS n FROM t", json!([])).await;
    assert_eq!(seen["n"], "0");
    let rollback = body(json!({"sql": "ROLLBACK"}));
    sqlhttp::run_raw(&client, &rollback, &LIMITS).await.expect("ROLLBACK on a handle");
    let seen = only_row(&client, "SELECT count(*) AS n FROM t", json!([])).await;
    assert_eq!(seen["n"], "0");
}

/// The statements a pooled connection keeps between requests (single statements in
/// autocommit) follow the schema, are prepared again after the tenant's `DEALLOCATE ALL`, never
/// run twice, and stay bounded on the server.
#[tokio::test]
async fn kept_statements_follow_the_schema_and_stay_bounded() {
    let client = database().await;
    let cache = StatementCache::default();
    let kept = |sql: &'static str, params: Value| {
        let (client, cache) = (&client, &cache);
        async move {
            let request = body(json!({ "sql": sql, "params": params }));
            sqlhttp::run_request(client, cache, &request, &LIMITS, &|| {}).await.map(|mut r| r.remove(0))
        }
    };
    let select = "SELECT * FROM items WHERE id = $1";
    kept("CREATE TABLE items (id int PRIMARY KEY, name text)", json!([])).await.unwrap();
    kept("INSERT INTO items VALUES (1, 'one')", json!([])).await.unwrap();
    let first = kept(select, json!([1])).await.unwrap();
    assert_eq!(first.rows, vec![json!({"id": 1, "name": "one"}).as_object().unwrap().clone()]);
    assert_eq!(cache.len(), 3, "each statement kept");

    // A column more: the kept statement's result type changed ("cached plan must not change
    // result type"); it is prepared again and answers with the new shape.
    kept("ALTER TABLE items ADD COLUMN note text DEFAULT 'n'", json!([])).await.unwrap();
    let wider = kept(select, json!([1])).await.unwrap();
    let names: Vec<&str> = wider.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["id", "name", "note"]);

    // A parameter's type widened: the kept statement binds $1 as int4, too small for the value;
    // prepared again it binds int8.
    kept("ALTER TABLE items ALTER COLUMN id TYPE bigint", json!([])).await.unwrap();
    kept("INSERT INTO items (id, name) VALUES (5000000000, 'big')", json!([])).await.unwrap();
    let big = kept(select, json!([5_000_000_000i64])).await.unwrap();
    assert_eq!(big.rows[0]["name"], "big", "{:?}", big.rows);

    // The tenant drops every prepared statement of its session: each kept one is prepared
    // again, and a write runs exactly once.
    let insert = "INSERT INTO items (id, name) VALUES ($1, 'again')";
    kept(insert, json!([2])).await.unwrap();
    kept("DEALLOCATE ALL", json!([])).await.unwrap();
    kept(insert, json!([3])).await.unwrap();
    let count = kept("SELECT count(*) AS n FROM items WHERE name = 'again'", json!([])).await.unwrap();
    assert_eq!(count.rows[0]["n"], "2", "each insert ran once");

    // A statement that fails while it runs is not run again.
    kept("CREATE TABLE runs (n int)", json!([])).await.unwrap();
    let failing = "INSERT INTO runs VALUES (1); SELECT 1/0";
    assert!(kept(failing, json!([])).await.is_err(), "two statements in one are refused by the server");
    let divide = "WITH w AS (INSERT INTO runs VALUES (1) RETURNING n) SELECT n / (n - 1) FROM w";
    for _ in 0..2 {
        let (state, ..) = sqlstate(kept(divide, json!([])).await);
        assert_eq!(state, "22012");
    }
    let runs = kept("SELECT count(*) AS n FROM runs", json!([])).await.unwrap();
    assert_eq!(runs.rows[0]["n"], "0", "failed statements rolled back, none retried into success");

    // Ever new SQL: the connection keeps at most CAPACITY statements, here and on the server.
    for i in 0..(StatementCache::CAPACITY * 2) {
        let sql: &'static str = Box::leak(format!("SELECT {i} AS n").into_boxed_str());
        kept(sql, json!([])).await.unwrap();
    }
    assert!(cache.len() <= StatementCache::CAPACITY, "{} kept", cache.len());
    let on_server = kept("SELECT count(*) AS n FROM pg_prepared_statements", json!([])).await.unwrap();
    let on_server: usize = on_server.rows[0]["n"].as_str().unwrap().parse().unwrap();
    assert!(on_server <= StatementCache::CAPACITY + 4, "{on_server} prepared statements on the server");
}

#[tokio::test]
async fn huge_statements_are_not_kept() {
    let client = database().await;
    let cache = StatementCache::default();
    let huge = format!("SELECT 1 AS n /* {} */", "x".repeat(StatementCache::MAX_STATEMENT_WEIGHT));
    let request = body(json!({ "sql": huge }));
    let results = sqlhttp::run_request(&client, &cache, &request, &LIMITS, &|| {}).await.expect("runs");
    assert_eq!(results[0].rows[0]["n"], 1);
    assert!(cache.is_empty(), "a statement over the weight limit runs but is not kept");
    let wide: Vec<String> = (0..200).map(|i| format!("{i} AS c{i}")).collect();
    let request = body(json!({ "sql": format!("SELECT {}", wide.join(", ")) }));
    sqlhttp::run_request(&client, &cache, &request, &LIMITS, &|| {}).await.expect("runs");
    assert!(cache.is_empty(), "200 columns weigh more than the limit too");
}

/// What the pool sends behind a single statement (its reset) is asked for once per attempt
/// that reached the server: a new statement, a kept one, twice for a kept one gone stale and
/// run again; never for a list or a statement refused before it was sent.
#[tokio::test]
async fn what_goes_behind_is_asked_for_once_per_attempt_sent() {
    let client = database().await;
    let cache = StatementCache::default();
    let calls = std::sync::atomic::AtomicUsize::new(0);
    let behind = || {
        calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    };
    let run = async |request: Value| {
        calls.store(0, std::sync::atomic::Ordering::SeqCst);
        let outcome = sqlhttp::run_request(&client, &cache, &body(request), &LIMITS, &behind).await;
        (outcome.is_ok(), calls.load(std::sync::atomic::Ordering::SeqCst))
    };
    assert_eq!(run(json!({"sql": "CREATE TABLE shape AS SELECT 1 AS a"})).await, (true, 1));
    assert_eq!(run(json!({"sql": "SELECT * FROM shape"})).await, (true, 1), "new");
    assert_eq!(run(json!({"sql": "SELECT * FROM shape"})).await, (true, 1), "kept");
    assert_eq!(run(json!({"sql": "ALTER TABLE shape ADD COLUMN b int"})).await, (true, 1));
    assert_eq!(run(json!({"sql": "SELECT * FROM shape"})).await, (true, 2), "stale, run again");
    assert_eq!(run(json!({"statements": [{"sql": "SELECT 1"}]})).await, (true, 0), "a list");
    assert_eq!(run(json!({"sql": "BEGIN"})).await, (false, 0), "refused before sending");
    assert_eq!(run(json!({"sql": "SELECT $1::int", "params": ["x"]})).await, (false, 0), "does not bind");
}
