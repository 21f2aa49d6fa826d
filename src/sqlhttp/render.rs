//! Result values: PostgreSQL's binary format to JSON, by column type.
//!
//! tokio-postgres asks for every column in binary, so each type is decoded here from its raw
//! bytes ([`Raw`] accepts any type). What each type becomes is listed on [`value`]. A value
//! that does not decode as its type says it would (a bug here, not the client's fault) is
//! logged and sent as a fallback string rather than failing the request.

use std::error::Error;

use postgres_protocol::types as wire;
use serde_json::{Map, Number, Value};
use tokio_postgres::fallible_iterator::FallibleIterator;
use tokio_postgres::types::{FromSql, Kind, Type};

use super::datetime;
use super::numeric::Numeric;

type BoxError = Box<dyn Error + Sync + Send>;

/// A column's raw bytes (`None` for NULL), whatever its type.
pub(crate) struct Raw<'a>(pub(crate) Option<&'a [u8]>);

impl<'a> FromSql<'a> for Raw<'a> {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        Ok(Raw(Some(raw)))
    }

    fn from_sql_null(_: &Type) -> Result<Self, BoxError> {
        Ok(Raw(None))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// The name shown for a type: `int4`, `mood`, `int4[]` for arrays.
pub(crate) fn type_label(ty: &Type) -> String {
    match ty.kind() {
        Kind::Array(element) => format!("{}[]", element.name()),
        _ => ty.name().to_owned(),
    }
}

/// One value as JSON:
///
/// - NULL: `null`; bool: `true`/`false`; int2, int4, oid (and the reg* and xid types):
///   numbers; int8 and numeric: strings, exact (`"NaN"`, `"Infinity"` included);
///   float4/float8: numbers, or the strings `"NaN"`, `"Infinity"`, `"-Infinity"`;
/// - text, varchar, bpchar, name, xml, "char", enum labels: strings; json/jsonb: JSON
///   (numbers inside beyond 64-bit integers become floats; a document JSON cannot parse,
///   such as one with `1e400`, comes back as its text);
/// - uuid: hyphenated string; bytea: `"\x"` + lowercase hex; inet/cidr, macaddr, bit,
///   pg_lsn, jsonpath: their PostgreSQL text form;
/// - date `YYYY-MM-DD`, time `HH:MM:SS[.ffffff]`, timetz with its offset, timestamp
///   `YYYY-MM-DDTHH:MM:SS[.ffffff]`, timestamptz the same in UTC with `Z`, infinite dates
///   and timestamps `"infinity"`/`"-infinity"`, interval an ISO 8601 duration;
/// - arrays: nested JSON arrays, one level per dimension (lower bounds are dropped);
///   domains: as their base type; composite types: objects by field name (anonymous
///   records: `f1`, `f2`...); ranges and multiranges: their text form (`[1,5)`);
/// - anything else: its binary value as a string when it is UTF-8 text without control
///   characters, otherwise `"\x"` + hex of the bytes.
pub(crate) fn value(ty: &Type, raw: Option<&[u8]>) -> Result<Value, TooDeep> {
    value_at(ty, raw, 0)
}

/// Values nest (records in records, arrays of composites...) at most this deep. A tenant
/// chooses the nesting of what it selects (`row(row(row(...)))`), and decoding recurses on
/// the thread's stack, so the depth is bounded before it can overflow.
pub(crate) const MAX_NESTING: usize = 32;

/// A value nested deeper than [`MAX_NESTING`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a value is nested more than {MAX_NESTING} levels deep")]
pub(crate) struct TooDeep;

fn value_at(ty: &Type, raw: Option<&[u8]>, depth: usize) -> Result<Value, TooDeep> {
    let Some(raw) = raw else { return Ok(Value::Null) };
    if depth > MAX_NESTING {
        return Err(TooDeep);
    }
    match decode(ty, raw, depth) {
        Ok(value) => Ok(value),
        Err(error) if error.is::<TooDeep>() => Err(TooDeep),
        Err(error) => {
            tracing::warn!(r#type = %ty, %error, "undecodable value sent as raw bytes");
            Ok(fallback(raw))
        }
    }
}

fn decode(ty: &Type, raw: &[u8], depth: usize) -> Result<Value, BoxError> {
    if depth > MAX_NESTING {
        return Err(TooDeep.into());
    }
    match ty.kind() {
        Kind::Enum(_) => text(raw),
        Kind::Domain(base) => decode(base, raw, depth + 1),
        Kind::Array(element) => array(element, raw, depth),
        Kind::Composite(fields) => {
            let fields: Vec<(String, Type)> =
                fields.iter().map(|f| (f.name().to_owned(), f.type_().clone())).collect();
            composite(Some(&fields), raw, depth)
        }
        Kind::Range(subtype) => Ok(Value::String(range(subtype, raw, depth)?)),
        Kind::Multirange(subtype) => multirange(subtype, raw, depth),
        _ => simple(ty, raw, depth),
    }
}

fn text(raw: &[u8]) -> Result<Value, BoxError> {
    Ok(Value::String(wire::text_from_sql(raw)?.to_owned()))
}

fn float(value: f64) -> Value {
    match Number::from_f64(value) {
        Some(n) => Value::Number(n),
        None if value.is_nan() => Value::String("NaN".into()),
        None if value > 0.0 => Value::String("Infinity".into()),
        None => Value::String("-Infinity".into()),
    }
}

/// `raw` without its leading version byte (jsonb, jsonpath).
fn versioned(raw: &[u8]) -> Result<&[u8], BoxError> {
    match raw.split_first() {
        Some((1, rest)) => Ok(rest),
        _ => Err("unknown binary format version".into()),
    }
}

/// Types whose value is an OID-sized unsigned number.
const OID_LIKE: &[Type] = &[
    Type::OID,
    Type::XID,
    Type::CID,
    Type::REGPROC,
    Type::REGPROCEDURE,
    Type::REGOPER,
    Type::REGOPERATOR,
    Type::REGCLASS,
    Type::REGTYPE,
    Type::REGCONFIG,
    Type::REGDICTIONARY,
    Type::REGNAMESPACE,
    Type::REGROLE,
    Type::REGCOLLATION,
];

fn simple(ty: &Type, raw: &[u8], depth: usize) -> Result<Value, BoxError> {
    let string = |s: String| Ok(Value::String(s));
    match *ty {
        Type::BOOL => Ok(Value::Bool(wire::bool_from_sql(raw)?)),
        Type::INT2 => Ok(wire::int2_from_sql(raw)?.into()),
        Type::INT4 => Ok(wire::int4_from_sql(raw)?.into()),
        _ if OID_LIKE.contains(ty) => Ok(wire::oid_from_sql(raw)?.into()),
        Type::INT8 => string(wire::int8_from_sql(raw)?.to_string()),
        Type::NUMERIC => string(Numeric::decode(raw)?.to_string()),
        // Shortest float4 text, read back as f64: 0.1 stays 0.1, not 0.10000000149011612.
        Type::FLOAT4 => Ok(float(wire::float4_from_sql(raw)?.to_string().parse()?)),
        Type::FLOAT8 => Ok(float(wire::float8_from_sql(raw)?)),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN | Type::XML => text(raw),
        Type::CHAR => string(char::from(wire::char_from_sql(raw)? as u8).to_string()),
        Type::JSON => Ok(serde_json::from_slice(raw)?),
        Type::JSONB => Ok(serde_json::from_slice(versioned(raw)?)?),
        Type::JSONPATH => string(std::str::from_utf8(versioned(raw)?)?.to_owned()),
        Type::UUID => string(uuid::Uuid::from_bytes(wire::uuid_from_sql(raw)?).hyphenated().to_string()),
        Type::BYTEA => string(format!("\\x{}", hex::encode(raw))),
        Type::DATE | Type::TIME | Type::TIMETZ | Type::TIMESTAMP | Type::TIMESTAMPTZ | Type::INTERVAL => {
            string(temporal(ty, raw)?)
        }
        Type::INET
        | Type::CIDR
        | Type::MACADDR
        | Type::MACADDR8
        | Type::BIT
        | Type::VARBIT
        | Type::PG_LSN => string(text_form(ty, raw)?),
        Type::VOID => Ok(Value::Null),
        Type::RECORD => composite(None, raw, depth),
        _ => Ok(fallback(raw)),
    }
}

/// Dates, times and intervals as ISO 8601 text.
fn temporal(ty: &Type, raw: &[u8]) -> Result<String, BoxError> {
    Ok(match *ty {
        Type::DATE => datetime::format_date(wire::date_from_sql(raw)?),
        Type::TIME => datetime::format_time(wire::time_from_sql(raw)?),
        Type::TIMETZ => {
            let (clock, zone) = raw.split_at_checked(8).ok_or("timetz value too short")?;
            datetime::format_timetz(wire::time_from_sql(clock)?, wire::int4_from_sql(zone)?)
        }
        Type::TIMESTAMP => datetime::format_timestamp(wire::timestamp_from_sql(raw)?, false),
        Type::TIMESTAMPTZ => datetime::format_timestamp(wire::timestamp_from_sql(raw)?, true),
        _ => {
            if raw.len() != 16 {
                return Err("interval value is not 16 bytes".into());
            }
            let micros = wire::int8_from_sql(&raw[..8])?;
            datetime::format_interval(
                micros,
                wire::int4_from_sql(&raw[8..12])?,
                wire::int4_from_sql(&raw[12..])?,
            )
        }
    })
}

/// Addresses, bit strings and LSNs in PostgreSQL's text form.
fn text_form(ty: &Type, raw: &[u8]) -> Result<String, BoxError> {
    Ok(match *ty {
        Type::INET | Type::CIDR => {
            let inet = wire::inet_from_sql(raw)?;
            let full = if inet.addr().is_ipv4() { 32 } else { 128 };
            if *ty == Type::INET && inet.netmask() == full {
                inet.addr().to_string()
            } else {
                format!("{}/{}", inet.addr(), inet.netmask())
            }
        }
        Type::MACADDR | Type::MACADDR8 => {
            raw.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
        }
        Type::BIT | Type::VARBIT => {
            let bits = wire::varbit_from_sql(raw)?;
            let all = bits.bytes().iter().flat_map(|byte| (0..8).rev().map(move |i| (byte >> i) & 1));
            all.take(bits.len()).map(|bit| if bit == 1 { '1' } else { '0' }).collect()
        }
        _ => {
            let lsn = wire::lsn_from_sql(raw)?;
            format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
        }
    })
}

/// Bytes of a type we do not know: UTF-8 text as is, anything else as `\x` hex.
fn fallback(raw: &[u8]) -> Value {
    match std::str::from_utf8(raw) {
        Ok(s) if !s.chars().any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r')) => {
            Value::String(s.to_owned())
        }
        _ => Value::String(format!("\\x{}", hex::encode(raw))),
    }
}

/// Nested JSON arrays, one level per dimension, NULL elements as `null`.
fn array(element: &Type, raw: &[u8], depth: usize) -> Result<Value, BoxError> {
    let array = wire::array_from_sql(raw)?;
    let dimensions: Vec<usize> = array.dimensions().map(|d| Ok(usize::try_from(d.len)?)).collect()?;
    let mut values = array.values();
    if dimensions.is_empty() {
        return Ok(Value::Array(Vec::new()));
    }
    nest(element, &dimensions, &mut values, depth)
}

fn nest(
    element: &Type,
    dimensions: &[usize],
    values: &mut wire::ArrayValues<'_>,
    depth: usize,
) -> Result<Value, BoxError> {
    let (&len, inner) = dimensions.split_first().ok_or("array without dimensions")?;
    let mut out = Vec::with_capacity(len.min(4096));
    for _ in 0..len {
        if inner.is_empty() {
            let raw = values.next()?.ok_or("array has fewer elements than its dimensions")?;
            out.push(value_at(element, raw, depth + 1)?);
        } else {
            out.push(nest(element, inner, values, depth)?);
        }
    }
    Ok(Value::Array(out))
}

/// An object by field name. `fields` is `None` for anonymous records, whose fields are named
/// `f1`, `f2`... (as PostgreSQL names them) and typed by the OIDs in the value.
fn composite(fields: Option<&[(String, Type)]>, mut raw: &[u8], depth: usize) -> Result<Value, BoxError> {
    let mut take = |n: usize| -> Result<&[u8], BoxError> {
        let (head, rest) = raw.split_at_checked(n).ok_or("composite value too short")?;
        raw = rest;
        Ok(head)
    };
    let count = wire::int4_from_sql(take(4)?)?;
    let mut object = Map::new();
    for i in 0..usize::try_from(count)? {
        let oid = wire::oid_from_sql(take(4)?)?;
        let len = wire::int4_from_sql(take(4)?)?;
        let bytes = if len < 0 { None } else { Some(take(usize::try_from(len)?)?) };
        let (name, rendered) = match fields.and_then(|f| f.get(i)) {
            Some((name, ty)) => (name.clone(), value_at(ty, bytes, depth + 1)?),
            None => match Type::from_oid(oid) {
                Some(ty) => (format!("f{}", i + 1), value_at(&ty, bytes, depth + 1)?),
                None => (format!("f{}", i + 1), bytes.map_or(Value::Null, fallback)),
            },
        };
        object.insert(name, rendered);
    }
    Ok(Value::Object(object))
}

/// A bound as text: strings as they are, other JSON as its JSON text.
fn bound_text(subtype: &Type, raw: Option<&[u8]>, depth: usize) -> Result<String, TooDeep> {
    Ok(match value_at(subtype, raw, depth + 1)? {
        Value::String(s) => s,
        other => other.to_string(),
    })
}

/// A range in PostgreSQL's text form: `[1,5)`, `(,3]`, `empty`.
fn range(subtype: &Type, raw: &[u8], depth: usize) -> Result<String, BoxError> {
    use wire::RangeBound;
    let (lower, upper) = match wire::range_from_sql(raw)? {
        wire::Range::Empty => return Ok("empty".to_owned()),
        wire::Range::Nonempty(lower, upper) => (lower, upper),
    };
    let (open, low) = match lower {
        RangeBound::Inclusive(v) => ('[', bound_text(subtype, v, depth)?),
        RangeBound::Exclusive(v) => ('(', bound_text(subtype, v, depth)?),
        RangeBound::Unbounded => ('(', String::new()),
    };
    let (high, close) = match upper {
        RangeBound::Inclusive(v) => (bound_text(subtype, v, depth)?, ']'),
        RangeBound::Exclusive(v) => (bound_text(subtype, v, depth)?, ')'),
        RangeBound::Unbounded => (String::new(), ')'),
    };
    Ok(format!("{open}{low},{high}{close}"))
}

/// A multirange in PostgreSQL's text form: `{[1,3),[5,7)}`.
fn multirange(subtype: &Type, mut raw: &[u8], depth: usize) -> Result<Value, BoxError> {
    let (count, rest) = raw.split_at_checked(4).ok_or("multirange value too short")?;
    raw = rest;
    let mut ranges = Vec::new();
    for _ in 0..wire::int4_from_sql(count)? {
        let (len, rest) = raw.split_at_checked(4).ok_or("multirange value too short")?;
        let (one, rest) = rest
            .split_at_checked(usize::try_from(wire::int4_from_sql(len)?)?)
            .ok_or("multirange value too short")?;
        ranges.push(range(subtype, one, depth)?);
        raw = rest;
    }
    Ok(Value::String(format!("{{{}}}", ranges.join(","))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(ty: &Type, raw: Option<&[u8]>) -> Value {
        value(ty, raw).unwrap()
    }

    #[test]
    fn infinite_timestamps_and_dates_do_not_fail() {
        assert_eq!(v(&Type::TIMESTAMPTZ, Some(&i64::MAX.to_be_bytes())), "infinity");
        assert_eq!(v(&Type::TIMESTAMP, Some(&i64::MIN.to_be_bytes())), "-infinity");
        assert_eq!(v(&Type::DATE, Some(&i32::MIN.to_be_bytes())), "-infinity");
    }

    #[test]
    fn scalars_render_as_documented() {
        assert_eq!(v(&Type::INT8, Some(&i64::MAX.to_be_bytes())), "9223372036854775807");
        assert_eq!(v(&Type::FLOAT4, Some(&0.1f32.to_be_bytes())), serde_json::json!(0.1));
        assert_eq!(v(&Type::FLOAT8, Some(&f64::NAN.to_be_bytes())), "NaN");
        assert_eq!(v(&Type::FLOAT8, Some(&f64::NEG_INFINITY.to_be_bytes())), "-Infinity");
        assert_eq!(v(&Type::BYTEA, Some(&[0xde, 0xad])), "\\xdead");
        assert_eq!(v(&Type::JSONB, Some(b"\x01{\"a\": [1]}")), serde_json::json!({"a": [1]}));
        assert_eq!(v(&Type::INT4, None), Value::Null);
        let interval = [0, 0, 0, 0, 0, 0x0f, 0x42, 0x40, 0, 0, 0, 2, 0, 0, 0, 13];
        assert_eq!(v(&Type::INTERVAL, Some(&interval)), "P1Y1M2DT1S");
    }

    #[test]
    fn unknown_types_fall_back_to_text_or_hex() {
        assert_eq!(fallback(b"plain text"), "plain text");
        assert_eq!(fallback(&[0, 0, 0, 1]), "\\x00000001");
        assert_eq!(fallback(&[0xff]), "\\xff");
    }

    #[test]
    fn records_nested_too_deeply_are_refused_not_recursed_into() {
        // row(row(...row(1)...)): each level is a record holding one record-typed field.
        let nested = |levels: usize| {
            let mut raw = 1i32.to_be_bytes().to_vec(); // innermost: int4 1 ...
            let mut oid = Type::INT4.oid();
            for _ in 0..levels {
                let mut record = 1i32.to_be_bytes().to_vec();
                record.extend(oid.to_be_bytes());
                record.extend(i32::try_from(raw.len()).unwrap().to_be_bytes());
                record.extend(&raw);
                raw = record;
                oid = Type::RECORD.oid();
            }
            raw
        };
        assert_eq!(v(&Type::RECORD, Some(&nested(3))), serde_json::json!({"f1": {"f1": {"f1": 1}}}));
        assert!(value(&Type::RECORD, Some(&nested(MAX_NESTING))).is_ok());
        assert_eq!(value(&Type::RECORD, Some(&nested(MAX_NESTING + 2))), Err(TooDeep));
        assert_eq!(value(&Type::RECORD, Some(&nested(100_000))), Err(TooDeep));
    }
}
