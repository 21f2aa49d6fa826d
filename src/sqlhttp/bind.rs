//! Parameters: JSON values bound by the types PostgreSQL inferred for `$1`, `$2`...
//!
//! The statement is prepared first, so every parameter has a type; each JSON value is
//! checked against it and turned into a [`Param`], which writes PostgreSQL's binary format.
//! A value that does not fit its type is the client's mistake and says which `$n` it was.

use std::error::Error;
use std::net::IpAddr;

use postgres_protocol::types::{self as wire, ArrayDimension};
use serde_json::Value;
use tokio_postgres::types::{IsNull, Kind, ToSql, Type};
use tokio_util::bytes::{BufMut, BytesMut};

use super::numeric::Numeric;
use super::render::type_label;
use super::{SqlError, datetime};

type BoxError = Box<dyn Error + Sync + Send>;

/// PostgreSQL's array dimension limit (`MAXDIM`).
const MAX_DIMENSIONS: usize = 6;

/// One parameter value, checked against its type and ready to be written.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Param {
    /// SQL NULL (JSON `null`, for any type).
    Null,
    Bool(bool),
    Int2(i16),
    Int4(i32),
    Int8(i64),
    Oid(u32),
    Float4(f32),
    Float8(f64),
    Numeric(Numeric),
    /// text, varchar, bpchar, name, xml, citext and enum labels: the same wire format.
    Text(String),
    /// JSON text, for `json`.
    Json(String),
    /// JSON text, for `jsonb` (written after a version byte).
    Jsonb(String),
    Uuid([u8; 16]),
    Bytea(Vec<u8>),
    /// Days since 2000-01-01.
    Date(i32),
    /// Microseconds since midnight.
    Time(i64),
    /// Microseconds since 2000-01-01 00:00 (UTC for timestamptz).
    Timestamp(i64),
    Inet(IpAddr, u8),
    /// Elements in row-major order; `dims` empty for an empty array.
    Array {
        element: u32,
        dims: Vec<i32>,
        elements: Vec<Param>,
    },
}

impl Param {
    /// Writes the binary format; `false` for NULL, which has no bytes.
    fn encode(&self, out: &mut BytesMut) -> Result<bool, BoxError> {
        match self {
            Param::Null => return Ok(false),
            Param::Bool(v) => wire::bool_to_sql(*v, out),
            Param::Int2(v) => wire::int2_to_sql(*v, out),
            Param::Int4(v) => wire::int4_to_sql(*v, out),
            Param::Int8(v) => wire::int8_to_sql(*v, out),
            Param::Oid(v) => wire::oid_to_sql(*v, out),
            Param::Float4(v) => wire::float4_to_sql(*v, out),
            Param::Float8(v) => wire::float8_to_sql(*v, out),
            Param::Numeric(v) => v.encode(out),
            Param::Text(v) | Param::Json(v) => wire::text_to_sql(v, out),
            Param::Jsonb(v) => {
                out.put_u8(1);
                out.put_slice(v.as_bytes());
            }
            Param::Uuid(v) => wire::uuid_to_sql(*v, out),
            Param::Bytea(v) => wire::bytea_to_sql(v, out),
            Param::Date(v) => wire::date_to_sql(*v, out),
            Param::Time(v) => wire::time_to_sql(*v, out),
            Param::Timestamp(v) => wire::timestamp_to_sql(*v, out),
            Param::Inet(addr, bits) => wire::inet_to_sql(*addr, *bits, out),
            Param::Array { element, dims, elements } => wire::array_to_sql(
                dims.iter().map(|&len| ArrayDimension { len, lower_bound: 1 }),
                *element,
                elements.iter(),
                |e, buf| match e.encode(buf)? {
                    true => Ok(postgres_protocol::IsNull::No),
                    false => Ok(postgres_protocol::IsNull::Yes),
                },
                out,
            )?,
        }
        Ok(true)
    }
}

impl ToSql for Param {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        Ok(if self.encode(out)? { IsNull::No } else { IsNull::Yes })
    }

    /// Values are checked against their type when they are built, by [`bind`].
    fn accepts(_: &Type) -> bool {
        true
    }

    tokio_postgres::types::to_sql_checked!();
}

/// Checks the JSON `values` against the prepared parameter `types` and builds the params.
pub(crate) fn bind(types: &[Type], values: &[Value]) -> Result<Vec<Param>, SqlError> {
    if types.len() != values.len() {
        return Err(SqlError::BadRequest(format!(
            "expected {} parameters, got {}",
            types.len(),
            values.len()
        )));
    }
    let convert_one = |(i, (value, ty)): (usize, (&Value, &Type))| {
        let (n, label) = (i + 1, type_label(ty));
        convert(value, ty).map_err(|refusal| match refusal {
            Refusal::Unsupported => SqlError::BadRequest(format!(
                "parameter ${n} has type {label}, which cannot be bound from JSON; \
                 cast it in SQL, e.g. ${n}::text::{label}"
            )),
            Refusal::Invalid(why) => SqlError::BadRequest(format!("parameter ${n} has type {label}: {why}")),
        })
    };
    values.iter().zip(types).enumerate().map(convert_one).collect()
}

/// Why a value cannot be bound.
#[derive(Debug)]
enum Refusal {
    /// No JSON value can be bound to this type.
    Unsupported,
    /// This value does not fit the type.
    Invalid(String),
}

/// A short description of a JSON value for error messages.
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) if s.chars().count() > 40 => {
            format!("the string {:?}...", s.chars().take(40).collect::<String>())
        }
        Value::String(s) => format!("the string {s:?}"),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

fn expected(what: &str, got: &Value) -> Refusal {
    Refusal::Invalid(format!("expected {what}, got {}", describe(got)))
}

fn convert(value: &Value, ty: &Type) -> Result<Param, Refusal> {
    if value.is_null() {
        return Ok(Param::Null);
    }
    match ty.kind() {
        Kind::Domain(base) => convert(value, base),
        Kind::Enum(_) => match value {
            Value::String(label) => Ok(Param::Text(label.clone())),
            other => Err(expected("a string (an enum label)", other)),
        },
        Kind::Array(element) => array(value, element),
        Kind::Simple => scalar(value, ty),
        _ => Err(Refusal::Unsupported),
    }
}

fn scalar(value: &Value, ty: &Type) -> Result<Param, Refusal> {
    let string = || value.as_str().ok_or_else(|| expected("a string", value));
    Ok(match *ty {
        Type::BOOL => Param::Bool(value.as_bool().ok_or_else(|| expected("true or false", value))?),
        Type::INT2 => Param::Int2(integer(value)?),
        Type::INT4 => Param::Int4(integer(value)?),
        Type::INT8 => Param::Int8(integer(value)?),
        Type::OID => Param::Oid(integer(value)?),
        Type::FLOAT4 => {
            let v = float(value)?;
            let narrowed = v as f32;
            if narrowed.is_infinite() && v.is_finite() {
                return Err(Refusal::Invalid(format!("{v} is out of range")));
            }
            Param::Float4(narrowed)
        }
        Type::FLOAT8 => Param::Float8(float(value)?),
        Type::NUMERIC => Param::Numeric(match value {
            Value::Number(n) => parsed(Numeric::parse(&n.to_string()))?,
            Value::String(s) => parsed(Numeric::parse(s))?,
            other => return Err(expected("a number or a string of a decimal number", other)),
        }),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN | Type::XML => text(value)?,
        _ if ty.name() == "citext" => text(value)?,
        Type::JSON => Param::Json(value.to_string()),
        Type::JSONB => Param::Jsonb(value.to_string()),
        Type::UUID => match uuid::Uuid::parse_str(string()?) {
            Ok(id) => Param::Uuid(id.into_bytes()),
            Err(_) => return Err(expected("a UUID string", value)),
        },
        Type::BYTEA => {
            let hex =
                string()?.strip_prefix("\\x").ok_or_else(|| expected("a string \\x<hex digits>", value))?;
            Param::Bytea(hex::decode(hex).map_err(|_| expected("a string \\x<hex digits>", value))?)
        }
        Type::DATE => Param::Date(parsed(datetime::parse_date(string()?))?),
        Type::TIME => Param::Time(parsed(datetime::parse_time(string()?))?),
        Type::TIMESTAMP => Param::Timestamp(parsed(datetime::parse_timestamp(string()?))?),
        Type::TIMESTAMPTZ => Param::Timestamp(parsed(datetime::parse_timestamptz(string()?))?),
        Type::INET | Type::CIDR => inet(string()?)?,
        _ => return Err(Refusal::Unsupported),
    })
}

fn parsed<T>(result: Result<T, super::ValueError>) -> Result<T, Refusal> {
    result.map_err(|e| Refusal::Invalid(e.to_string()))
}

/// A text-like value: strings as they are, numbers and booleans as their JSON text.
fn text(value: &Value) -> Result<Param, Refusal> {
    match value {
        Value::String(s) => Ok(Param::Text(s.clone())),
        Value::Number(_) | Value::Bool(_) => Ok(Param::Text(value.to_string())),
        other => Err(expected("a string", other)),
    }
}

/// An integer from a JSON integer (or a float with no fraction) or a string of digits,
/// range-checked for the target type.
fn integer<T: TryFrom<i128>>(value: &Value) -> Result<T, Refusal> {
    const EXACT_FLOAT: f64 = 9_007_199_254_740_992.0; // 2^53
    let wide: i128 = match value {
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => i128::from(i),
            (_, Some(u), _) => i128::from(u),
            (_, _, Some(f)) if f.fract() == 0.0 && f.abs() <= EXACT_FLOAT => f as i128,
            _ => return Err(expected("an integer", value)),
        },
        Value::String(s) => match s.trim().parse::<i128>() {
            Ok(i) => i,
            Err(e)
                if matches!(
                    e.kind(),
                    std::num::IntErrorKind::PosOverflow | std::num::IntErrorKind::NegOverflow
                ) =>
            {
                return Err(Refusal::Invalid(format!("{s} is out of range")));
            }
            Err(_) => return Err(expected("an integer or a string of an integer", value)),
        },
        other => return Err(expected("an integer or a string of an integer", other)),
    };
    T::try_from(wide).map_err(|_| Refusal::Invalid(format!("{wide} is out of range")))
}

/// A float from a JSON number or a string (`"1.5"`, `"NaN"`, `"Infinity"`, `"-Infinity"`).
fn float(value: &Value) -> Result<f64, Refusal> {
    match value {
        Value::Number(n) => n.as_f64().ok_or_else(|| expected("a number", value)),
        Value::String(s) => {
            s.trim().parse::<f64>().map_err(|_| expected("a number or a string of a number", value))
        }
        other => Err(expected("a number or a string of a number", other)),
    }
}

/// `inet`/`cidr` from `addr` or `addr/bits`.
fn inet(text: &str) -> Result<Param, Refusal> {
    let invalid = || Refusal::Invalid(format!("{text:?} is not an IP address (optionally with /bits)"));
    let (addr, bits) = match text.trim().split_once('/') {
        Some((addr, bits)) => (addr, Some(bits)),
        None => (text.trim(), None),
    };
    let addr: IpAddr = addr.parse().map_err(|_| invalid())?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let bits = match bits {
        Some(b) => b.parse::<u8>().ok().filter(|b| *b <= max).ok_or_else(invalid)?,
        None => max,
    };
    Ok(Param::Inet(addr, bits))
}

/// A (possibly nested, rectangular) JSON array for an array type. Arrays of json/jsonb are
/// one-dimensional: an inner JSON array is an element there, not a dimension.
fn array(value: &Value, element: &Type) -> Result<Param, Refusal> {
    if !value.is_array() {
        return Err(expected("a JSON array", value));
    }
    let nested = !matches!(*element, Type::JSON | Type::JSONB);
    let mut dims = Vec::new();
    let mut level = value;
    while let Value::Array(items) = level {
        dims.push(items.len());
        match items.first() {
            Some(first) if nested && first.is_array() => level = first,
            _ => break,
        }
    }
    if dims.len() > MAX_DIMENSIONS {
        return Err(Refusal::Invalid(format!("arrays have at most {MAX_DIMENSIONS} dimensions")));
    }
    let mut elements = Vec::new();
    flatten(value, &dims, element, nested, &mut Vec::new(), &mut elements)?;
    let dims = if elements.is_empty() {
        Vec::new()
    } else {
        let lens = dims.into_iter().map(i32::try_from).collect::<Result<Vec<_>, _>>();
        lens.map_err(|_| Refusal::Invalid("the array is too large".into()))?
    };
    Ok(Param::Array { element: element.oid(), dims, elements })
}

fn show_path(path: &[usize]) -> String {
    path.iter().map(|i| format!("[{i}]")).collect()
}

fn flatten(
    value: &Value,
    dims: &[usize],
    element: &Type,
    nested: bool,
    path: &mut Vec<usize>,
    out: &mut Vec<Param>,
) -> Result<(), Refusal> {
    let not_rectangular = |path: &[usize]| {
        Refusal::Invalid(format!("the array is not rectangular (at element {})", show_path(path)))
    };
    let (&len, inner) = dims.split_first().ok_or_else(|| not_rectangular(path))?;
    let items = match value {
        Value::Array(items) if items.len() == len => items,
        _ => return Err(not_rectangular(path)),
    };
    for (i, item) in items.iter().enumerate() {
        path.push(i);
        if !inner.is_empty() {
            flatten(item, inner, element, nested, path, out)?;
        } else if nested && item.is_array() {
            return Err(not_rectangular(path));
        } else {
            let param = convert(item, element).map_err(|refusal| match refusal {
                Refusal::Invalid(why) => Refusal::Invalid(format!("element {}: {why}", show_path(path))),
                unsupported => unsupported,
            })?;
            out.push(param);
        }
        path.pop();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn one(value: Value, ty: Type) -> Result<Param, String> {
        match bind(&[ty], &[value]) {
            Ok(mut params) => Ok(params.remove(0)),
            Err(e) => Err(e.to_string()),
        }
    }

    #[test]
    fn integers_are_range_checked_and_name_the_parameter() {
        assert_eq!(one(json!(7), Type::INT2), Ok(Param::Int2(7)));
        assert_eq!(one(json!("-9223372036854775808"), Type::INT8), Ok(Param::Int8(i64::MIN)));
        assert_eq!(one(json!(2.0), Type::INT4), Ok(Param::Int4(2)));
        let error = one(json!(40000), Type::INT2).unwrap_err();
        assert!(error.contains("$1") && error.contains("int2") && error.contains("out of range"), "{error}");
        let error = one(json!("99999999999999999999999999999999999999999"), Type::INT8).unwrap_err();
        assert!(error.contains("out of range"), "{error}");
        assert!(one(json!(1.5), Type::INT4).unwrap_err().contains("expected an integer"));
        assert!(one(json!(true), Type::INT4).unwrap_err().contains("got true"));
    }

    #[test]
    fn arrays_must_be_rectangular() {
        let ty = Type::INT4_ARRAY;
        let Ok(Param::Array { dims, elements, .. }) = one(json!([[1, null], [3, 4]]), ty.clone()) else {
            panic!("2-D array refused");
        };
        assert_eq!((dims, elements.len()), (vec![2, 2], 4));
        assert_eq!(
            one(json!([]), ty.clone()),
            Ok(Param::Array { element: 23, dims: vec![], elements: vec![] })
        );
        let error = one(json!([[1, 2], [3]]), ty.clone()).unwrap_err();
        assert!(error.contains("not rectangular"), "{error}");
        let error = one(json!([1, "x"]), ty).unwrap_err();
        assert!(error.contains("element [1]") && error.contains("int4[]"), "{error}");
        // For jsonb[], inner arrays are JSON values, not dimensions.
        let Ok(Param::Array { dims, .. }) = one(json!([[1, 2], 3]), Type::JSONB_ARRAY) else { panic!() };
        assert_eq!(dims, vec![2]);
    }

    #[test]
    fn unsupported_types_suggest_a_cast() {
        let error = one(json!("1 day"), Type::INTERVAL).unwrap_err();
        assert!(error.contains("$1::text::interval"), "{error}");
        assert_eq!(one(Value::Null, Type::INTERVAL), Ok(Param::Null));
        let error = bind(&[Type::INT4, Type::INT4], &[json!(1)]).unwrap_err().to_string();
        assert!(error.contains("expected 2 parameters, got 1"), "{error}");
    }

    #[test]
    fn strings_bind_to_their_types() {
        assert_eq!(one(json!(12), Type::TEXT), Ok(Param::Text("12".into())));
        assert_eq!(one(json!("\\xDEad"), Type::BYTEA), Ok(Param::Bytea(vec![0xde, 0xad])));
        assert!(one(json!("dead"), Type::BYTEA).is_err());
        assert_eq!(one(json!("NaN"), Type::FLOAT8).map(|p| format!("{p:?}")), Ok("Float8(NaN)".into()));
        assert!(one(json!(1e300), Type::FLOAT4).unwrap_err().contains("out of range"));
        assert_eq!(one(json!("10.0.0.0/8"), Type::CIDR), Ok(Param::Inet([10, 0, 0, 0].into(), 8)));
        assert!(one(json!("2020-01-01T00:00:00"), Type::TIMESTAMPTZ).unwrap_err().contains("offset"));
    }
}
