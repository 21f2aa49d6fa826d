//! Verifying a move's copy: per-table row counts and checksums of the rows, sequence states
//! and the schema version, read on both sides the same way (as the admin acting as the
//! tenant role with row security off, like `pg_dump`), then compared.

use std::collections::BTreeMap;

use super::MoveError;
use super::error::pg;
use crate::admin::AdminTarget;
use crate::names::PgIdent;
use crate::steps::Step;
use crate::tenant_sql;

const STEP: Step = Step::MoveVerify;

/// What a tenant database holds, in figures that must match after a copy.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Summary {
    /// `schema.table` → (rows, md5 of the rows).
    tables: BTreeMap<String, (i64, String)>,
    /// `schema.sequence` → (last_value, is_called).
    sequences: BTreeMap<String, (i64, bool)>,
    /// The latest version in the database's own migration history (0: none).
    version: i32,
}

/// The figures of a verified copy.
#[derive(Debug)]
pub(super) struct Checked {
    pub tables: usize,
    pub rows: i64,
    pub sequences: usize,
    pub version: i32,
}

/// Reads the summary of `database`.
pub(super) async fn summarize(
    admin: &AdminTarget,
    database: &PgIdent,
    role: &PgIdent,
) -> Result<Summary, MoveError> {
    let client =
        admin.connect(Some(database.as_str())).await.map_err(|e| MoveError::Step(STEP, e.to_string()))?;
    // Checksums read every row: longer than an admin statement may take otherwise.
    client.batch_execute("SET statement_timeout = '1h'").await.map_err(pg(STEP))?;
    client.batch_execute(&tenant_sql::act_as_tenant(role)).await.map_err(pg(STEP))?;
    let relations = client
        .query(
            "SELECT n.nspname::pg_catalog.text, c.relname::pg_catalog.text, c.relkind::pg_catalog.text \
             FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
             WHERE c.relkind OPERATOR(pg_catalog.=) ANY ('{r,S}'::pg_catalog.char[]) \
               AND n.nspname OPERATOR(pg_catalog.<>) ALL ('{pg_catalog,information_schema}'::pg_catalog.name[]) \
               AND n.nspname::pg_catalog.text NOT LIKE 'pg\\_%' \
             ORDER BY 1, 2",
            &[],
        )
        .await
        .map_err(pg(STEP))?;
    let mut summary = Summary::default();
    for r in &relations {
        let (schema, name, kind): (String, String, String) = (r.get(0), r.get(1), r.get(2));
        let key = format!("{schema}.{name}");
        if kind == "S" {
            let row =
                client.query_one(&tenant_sql::sequence_state(&schema, &name), &[]).await.map_err(pg(STEP))?;
            summary.sequences.insert(key, (row.get(0), row.get(1)));
        } else {
            let row =
                client.query_one(&tenant_sql::table_checksum(&schema, &name), &[]).await.map_err(pg(STEP))?;
            summary.tables.insert(key, (row.get(0), row.get(1)));
        }
    }
    let history = format!("public.{}", crate::tenant_migrations::HISTORY_TABLE);
    if summary.tables.contains_key(&history) {
        let row = client
            .query_one(&tenant_sql::history_version(crate::tenant_migrations::HISTORY_TABLE), &[])
            .await
            .map_err(pg(STEP))?;
        summary.version = row.get(0);
    }
    Ok(summary)
}

/// Compares the source with the copy (and the catalog's schema version); names the first
/// differences.
pub(super) fn compare(source: &Summary, copy: &Summary, catalog_version: i32) -> Result<Checked, MoveError> {
    let mut problems = Vec::new();
    for (table, (rows, sum)) in &source.tables {
        match copy.tables.get(table) {
            None => problems.push(format!("table {table} is missing from the copy")),
            Some((r, _)) if r != rows => problems.push(format!("table {table}: {rows} rows, copy has {r}")),
            Some((_, s)) if s != sum => problems.push(format!("table {table}: rows differ (checksum)")),
            Some(_) => {}
        }
    }
    problems.extend(
        copy.tables
            .keys()
            .filter(|t| !source.tables.contains_key(*t))
            .map(|t| format!("table {t} only in the copy")),
    );
    for (sequence, state) in &source.sequences {
        match copy.sequences.get(sequence) {
            Some(s) if s == state => {}
            Some(s) => problems.push(format!("sequence {sequence}: {state:?}, copy has {s:?}")),
            None => problems.push(format!("sequence {sequence} is missing from the copy")),
        }
    }
    if copy.version != source.version || copy.version != catalog_version {
        problems.push(format!(
            "schema version: catalog {catalog_version}, source {}, copy {}",
            source.version, copy.version
        ));
    }
    if !problems.is_empty() {
        problems.truncate(5);
        return Err(MoveError::Verify(problems.join("; ")));
    }
    Ok(Checked {
        tables: source.tables.len(),
        rows: source.tables.values().map(|(r, _)| r).sum(),
        sequences: source.sequences.len(),
        version: source.version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_are_named() {
        let mut source = Summary { version: 3, ..Summary::default() };
        source.tables.insert("public.t".into(), (2, "a".into()));
        source.sequences.insert("public.s".into(), (5, true));
        let mut copy = Summary { version: 3, ..Summary::default() };
        copy.tables.insert("public.t".into(), (2, "a".into()));
        copy.sequences.insert("public.s".into(), (5, true));
        assert_eq!(compare(&source, &copy, 3).unwrap().rows, 2);
        copy.tables.insert("public.t".into(), (1, "b".into()));
        copy.sequences.insert("public.s".into(), (4, true));
        let e = compare(&source, &copy, 2).unwrap_err().to_string();
        assert!(
            e.contains("2 rows, copy has 1") && e.contains("sequence public.s") && e.contains("catalog 2"),
            "{e}"
        );
    }
}
