//! PostgreSQL `numeric` in its binary wire format, to and from exact decimal strings.
//!
//! On the wire a numeric is a header (`ndigits`, `weight`, `sign`, `dscale`) followed by
//! base-10000 digits; `weight` is the power of 10000 of the first digit and `dscale` the
//! number of decimal digits after the point. No floating point is involved either way, so
//! a 40-digit value survives the round trip exactly.

use super::ValueError;
use std::fmt;

use tokio_util::bytes::{BufMut, BytesMut};

const SIGN_POSITIVE: u16 = 0x0000;
const SIGN_NEGATIVE: u16 = 0x4000;
const SIGN_NAN: u16 = 0xC000;
const SIGN_POS_INFINITY: u16 = 0xD000;
const SIGN_NEG_INFINITY: u16 = 0xF000;
/// Largest `dscale` PostgreSQL stores (`NUMERIC_DSCALE_MAX`).
const MAX_DSCALE: usize = 0x3FFF;
/// Largest decimal exponent PostgreSQL accepts in input (`NUMERIC_MAX_PRECISION`).
const MAX_EXPONENT: i64 = 1000;

/// A numeric value as PostgreSQL sends and receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Numeric {
    /// `NaN`.
    NaN,
    /// `Infinity`.
    PosInfinity,
    /// `-Infinity`.
    NegInfinity,
    /// A finite value: `digits` in base 10000, the first one worth 10000^`weight`.
    Finite { negative: bool, weight: i16, dscale: u16, digits: Vec<i16> },
}

impl Numeric {
    /// Parses a decimal string (`-12.50`, `1e-20`, `NaN`, `Infinity`, `-inf`) exactly; the
    /// number of digits after the point is kept as the display scale, as PostgreSQL does.
    pub(crate) fn parse(text: &str) -> Result<Numeric, ValueError> {
        let text = text.trim();
        match text.to_ascii_lowercase().as_str() {
            "nan" => return Ok(Numeric::NaN),
            "infinity" | "+infinity" | "inf" | "+inf" => return Ok(Numeric::PosInfinity),
            "-infinity" | "-inf" => return Ok(Numeric::NegInfinity),
            _ => {}
        }
        let invalid = || ValueError::new(format!("{text:?} is not a decimal number"));
        let (negative, unsigned) = match text.as_bytes().first() {
            Some(b'-') => (true, &text[1..]),
            Some(b'+') => (false, &text[1..]),
            _ => (false, text),
        };
        let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
            Some(at) => {
                let exponent: i64 = unsigned[at + 1..].parse().map_err(|_| invalid())?;
                if exponent.abs() > MAX_EXPONENT {
                    return Err(ValueError::new(format!("{text:?}: exponent out of range")));
                }
                (&unsigned[..at], exponent)
            }
            None => (unsigned, 0),
        };
        let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if int_part.len() + frac_part.len() == 0 || !all_digits(int_part) || !all_digits(frac_part) {
            return Err(invalid());
        }
        let dscale = (frac_part.len() as i64 - exponent).max(0) as usize;
        if dscale > MAX_DSCALE {
            return Err(ValueError::new(format!("{text:?}: too many digits after the decimal point")));
        }
        // All digits, and how many of them stand before the point once the exponent applies.
        let digits = format!("{int_part}{frac_part}");
        let point = int_part.len() as i64 + exponent;
        let (int_digits, frac_digits) = if point <= 0 {
            (String::new(), format!("{}{digits}", "0".repeat(point.unsigned_abs() as usize)))
        } else if point as usize >= digits.len() {
            (format!("{digits}{}", "0".repeat(point as usize - digits.len())), String::new())
        } else {
            (digits[..point as usize].to_owned(), digits[point as usize..].to_owned())
        };
        Self::from_parts(negative, &int_digits, &frac_digits, dscale)
    }

    /// Groups decimal digits (ASCII, before and after the point) into base-10000 digits.
    fn from_parts(
        negative: bool,
        int_digits: &str,
        frac_digits: &str,
        dscale: usize,
    ) -> Result<Numeric, ValueError> {
        let int_pad = (4 - int_digits.len() % 4) % 4;
        let frac_pad = (4 - frac_digits.len() % 4) % 4;
        let padded = format!("{}{int_digits}{frac_digits}{}", "0".repeat(int_pad), "0".repeat(frac_pad));
        let mut groups: Vec<i16> = padded
            .as_bytes()
            .chunks(4)
            .map(|c| c.iter().fold(0i16, |acc, d| acc * 10 + i16::from(d - b'0')))
            .collect();
        let mut weight = ((int_digits.len() + int_pad) / 4) as i64 - 1;
        let leading = groups.iter().take_while(|g| **g == 0).count();
        groups.drain(..leading);
        weight -= leading as i64;
        while groups.last() == Some(&0) {
            groups.pop();
        }
        if groups.is_empty() {
            return Ok(Numeric::Finite { negative: false, weight: 0, dscale: dscale as u16, digits: groups });
        }
        let weight = i16::try_from(weight).map_err(|_| ValueError::new("value out of range for numeric"))?;
        if groups.len() > i16::MAX as usize {
            return Err(ValueError::new("value has too many digits for numeric"));
        }
        Ok(Numeric::Finite { negative, weight, dscale: dscale as u16, digits: groups })
    }

    /// Writes the binary wire format.
    pub(crate) fn encode(&self, out: &mut BytesMut) {
        let (sign, weight, dscale, digits): (u16, i16, u16, &[i16]) = match self {
            Numeric::NaN => (SIGN_NAN, 0, 0, &[]),
            Numeric::PosInfinity => (SIGN_POS_INFINITY, 0, 0, &[]),
            Numeric::NegInfinity => (SIGN_NEG_INFINITY, 0, 0, &[]),
            Numeric::Finite { negative, weight, dscale, digits } => {
                (if *negative { SIGN_NEGATIVE } else { SIGN_POSITIVE }, *weight, *dscale, digits)
            }
        };
        // `from_parts` keeps the digit count within i16.
        out.put_i16(digits.len() as i16);
        out.put_i16(weight);
        out.put_u16(sign);
        out.put_u16(dscale);
        for digit in digits {
            out.put_i16(*digit);
        }
    }

    /// Reads the binary wire format.
    pub(crate) fn decode(raw: &[u8]) -> Result<Numeric, ValueError> {
        let word = |i: usize| raw.get(i..i + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
        let header = (word(0), word(2), word(4), word(6));
        let (Some(ndigits), Some(weight), Some(sign), Some(dscale)) = header else {
            return Err(ValueError::new("numeric value shorter than its header"));
        };
        let ndigits = ndigits as usize;
        if raw.len() != 8 + 2 * ndigits {
            return Err(ValueError::new("numeric value length does not match its digit count"));
        }
        let digits: Vec<i16> = raw[8..].chunks(2).map(|b| i16::from_be_bytes([b[0], b[1]])).collect();
        if digits.iter().any(|d| !(0..10000).contains(d)) {
            return Err(ValueError::new("numeric digit out of range"));
        }
        match sign {
            SIGN_NAN => Ok(Numeric::NaN),
            SIGN_POS_INFINITY => Ok(Numeric::PosInfinity),
            SIGN_NEG_INFINITY => Ok(Numeric::NegInfinity),
            SIGN_POSITIVE | SIGN_NEGATIVE => {
                Ok(Numeric::Finite { negative: sign == SIGN_NEGATIVE, weight: weight as i16, dscale, digits })
            }
            other => Err(ValueError::new(format!("unknown numeric sign {other:#06x}"))),
        }
    }
}

/// The text PostgreSQL would print: plain decimal notation with exactly `dscale` digits
/// after the point, `NaN`, `Infinity` or `-Infinity`.
impl fmt::Display for Numeric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (negative, weight, dscale, digits) = match self {
            Numeric::NaN => return f.write_str("NaN"),
            Numeric::PosInfinity => return f.write_str("Infinity"),
            Numeric::NegInfinity => return f.write_str("-Infinity"),
            Numeric::Finite { negative, weight, dscale, digits } => {
                (*negative, i64::from(*weight), usize::from(*dscale), digits)
            }
        };
        // Digit at base-10000 position `p` (worth 10000^p); zero outside the stored digits.
        let digit_at = |p: i64| -> i16 {
            let index = weight - p;
            usize::try_from(index).ok().and_then(|i| digits.get(i)).copied().unwrap_or(0)
        };
        let mut text = String::with_capacity(digits.len() * 4 + dscale + 2);
        if negative && !digits.is_empty() {
            text.push('-');
        }
        if weight < 0 {
            text.push('0');
        } else {
            text.push_str(&digit_at(weight).to_string());
            for p in (0..weight).rev() {
                text.push_str(&format!("{:04}", digit_at(p)));
            }
        }
        if dscale > 0 {
            text.push('.');
            let mut fraction = String::with_capacity(dscale + 4);
            let mut p = -1;
            while fraction.len() < dscale {
                fraction.push_str(&format!("{:04}", digit_at(p)));
                p -= 1;
            }
            fraction.truncate(dscale);
            text.push_str(&fraction);
        }
        f.write_str(&text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(text: &str) -> String {
        let parsed = Numeric::parse(text).expect("parses");
        let mut buf = BytesMut::new();
        parsed.encode(&mut buf);
        let decoded = Numeric::decode(&buf).expect("decodes");
        assert_eq!(decoded, parsed, "{text}");
        decoded.to_string()
    }

    #[test]
    fn decimal_strings_survive_the_wire_format_exactly() {
        assert_eq!(round_trip("0"), "0");
        assert_eq!(round_trip("-0"), "0");
        assert_eq!(round_trip("0.000"), "0.000");
        assert_eq!(round_trip("-0.0012"), "-0.0012");
        assert_eq!(
            round_trip("123456789012345678901234567890.123456789"),
            "123456789012345678901234567890.123456789"
        );
        assert_eq!(round_trip("1e-20"), "0.00000000000000000001");
        assert_eq!(round_trip("1.50e1"), "15.0");
        assert_eq!(round_trip("1E3"), "1000");
        assert_eq!(round_trip("+10000"), "10000");
        assert_eq!(round_trip("12.50"), "12.50");
        assert_eq!(round_trip(".5"), "0.5");
        assert_eq!(round_trip("-99999999.00000001"), "-99999999.00000001");
        assert_eq!(round_trip("NaN"), "NaN");
        assert_eq!(round_trip("Infinity"), "Infinity");
        assert_eq!(round_trip("-inf"), "-Infinity");
    }

    #[test]
    fn encodes_like_postgresql() {
        // -0.0012 is one base-10000 digit (12) worth 10000^-1, with 4 decimal places.
        let mut buf = BytesMut::new();
        Numeric::parse("-0.0012").unwrap().encode(&mut buf);
        assert_eq!(&buf[..], &[0, 1, 0xff, 0xff, 0x40, 0, 0, 4, 0, 12]);
        // 10000.5 = [1, 0, 5000], weight 1, dscale 1.
        let mut buf = BytesMut::new();
        Numeric::parse("10000.5").unwrap().encode(&mut buf);
        assert_eq!(&buf[..], &[0, 3, 0, 1, 0, 0, 0, 1, 0, 1, 0, 0, 0x13, 0x88]);
        let mut buf = BytesMut::new();
        Numeric::NaN.encode(&mut buf);
        assert_eq!(&buf[..], &[0, 0, 0, 0, 0xc0, 0, 0, 0]);
    }

    #[test]
    fn decodes_what_postgresql_sends() {
        // SELECT '-1234.5678'::numeric: digits [1234, 5678], weight 0, dscale 4.
        let raw = [0, 2, 0, 0, 0x40, 0, 0, 4, 0x04, 0xd2, 0x16, 0x2e];
        assert_eq!(Numeric::decode(&raw).unwrap().to_string(), "-1234.5678");
        // Trailing zero digits are not sent: 20000 = [2], weight 1.
        let raw = [0, 1, 0, 1, 0, 0, 0, 0, 0, 2];
        assert_eq!(Numeric::decode(&raw).unwrap().to_string(), "20000");
        assert_eq!(Numeric::decode(&[0, 0, 0, 0, 0xd0, 0, 0, 0]).unwrap().to_string(), "Infinity");
        assert_eq!(Numeric::decode(&[0, 0, 0, 0, 0xf0, 0, 0, 0]).unwrap().to_string(), "-Infinity");
        assert!(Numeric::decode(&[0, 1, 0, 0]).is_err());
        assert!(Numeric::decode(&[0, 2, 0, 0, 0, 0, 0, 0, 0, 1]).is_err());
    }

    #[test]
    fn rejects_what_is_not_a_decimal() {
        for bad in ["", "-", "1.2.3", "12a", "1e", "e5", "0x10", "1e5000", " . "] {
            assert!(Numeric::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
