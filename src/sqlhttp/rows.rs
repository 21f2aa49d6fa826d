//! Rows as JSON objects, sized against the request's byte budget as they are rendered.

use std::collections::HashSet;

use serde::Serialize;
use serde_json::{Map, Value};
use tokio_postgres::types::Type;

use super::render::{self, Raw};
use super::{Column, Limits, SqlError};
use crate::pg;

/// How to render the rows of one statement.
pub(super) struct Shape {
    pub(super) columns: Vec<Column>,
    types: Vec<Type>,
    /// JSON size of each key, with its quotes.
    key_sizes: Vec<usize>,
}

impl Shape {
    pub(super) fn new(columns: &[tokio_postgres::Column]) -> Shape {
        let keys = unique_names(columns.iter().map(|c| c.name()));
        Shape {
            key_sizes: keys.iter().map(json_len).collect(),
            types: columns.iter().map(|c| c.type_().clone()).collect(),
            columns: keys
                .into_iter()
                .zip(columns)
                .map(|(name, c)| Column { name, type_name: render::type_label(c.type_()) })
                .collect(),
        }
    }

    /// One row as a JSON object, its size taken from `budget`.
    pub(super) fn render(
        &self,
        row: &tokio_postgres::Row,
        budget: &mut usize,
        limits: &Limits,
    ) -> Result<Map<String, Value>, SqlError> {
        let too_large = || {
            SqlError::TooLarge(format!(
                "the result is larger than {} bytes (the limit)",
                limits.max_result_bytes
            ))
        };
        // Braces, and the comma before the next row.
        let mut size = 3usize;
        let mut object = Map::new();
        for (i, ((column, ty), key_size)) in
            self.columns.iter().zip(&self.types).zip(&self.key_sizes).enumerate()
        {
            let raw: Raw<'_> = row.try_get(i).map_err(|e| SqlError::Connection(pg::describe(&e)))?;
            let value = render::value(ty, raw.0).map_err(|e| {
                SqlError::BadRequest(format!(
                    "column {:?}: {e}; select less deeply nested values",
                    column.name
                ))
            })?;
            // "key":value,
            size = size.saturating_add(key_size + 2).saturating_add(json_len(&value));
            if size > *budget {
                return Err(too_large());
            }
            object.insert(column.name.clone(), value);
        }
        *budget = budget.checked_sub(size).ok_or_else(too_large)?;
        Ok(object)
    }
}

/// Column names made unique: a repeated name gets `_2`, `_3`... skipping any name taken.
fn unique_names<'a>(names: impl Iterator<Item = &'a str> + Clone) -> Vec<String> {
    let mut taken: HashSet<String> = names.clone().map(str::to_owned).collect();
    let mut seen = HashSet::new();
    names
        .map(|name| {
            if seen.insert(name) {
                return name.to_owned();
            }
            let free = (2..).map(|n| format!("{name}_{n}")).find(|candidate| !taken.contains(candidate));
            let unique = free.unwrap_or_default();
            taken.insert(unique.clone());
            unique
        })
        .collect()
}

/// Bytes of `value` serialized as compact JSON, counted without building the text.
fn json_len(value: &impl Serialize) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    match serde_json::to_writer(&mut counter, value) {
        Ok(()) => counter.0,
        Err(_) => usize::MAX,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn repeated_column_names_get_suffixes() {
        let names = ["a", "b", "a", "a", "a_3"];
        assert_eq!(unique_names(names.into_iter()), ["a", "b", "a_2", "a_4", "a_3"]);
    }

    #[test]
    fn json_len_counts_compact_json() {
        assert_eq!(json_len(&json!({"a": [1, "x"]})), r#"{"a":[1,"x"]}"#.len());
    }
}
