//! Validated names: tenant slugs, server names and the PostgreSQL identifiers derived from them.
//!
//! A value of these types has passed its rules on construction, so code that holds one never
//! checks again. Derived database and role names are `prefix + slug` with `-` turned into `_`;
//! they are at most 63 bytes (PostgreSQL's limit) by construction: the slug is at most 48 bytes
//! and the prefix at most 15, so nothing is ever silently truncated.

use std::fmt;

use serde::Serialize;
use uuid::Uuid;

/// Longest prefix of tenant database/role names.
pub const MAX_PREFIX_LEN: usize = 15;
/// Longest slug.
pub const MAX_SLUG_LEN: usize = 48;

/// A name rejected by its rules; the message says which rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NameError(pub String);

/// Names a tenant may not take: they are PostgreSQL's own databases or look like them.
const RESERVED_SLUGS: &[&str] = &["postgres", "template0", "template1", "tenantd", "public"];

/// The public, stable name of a tenant: `^[a-z][a-z0-9_-]{2,47}$`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct TenantSlug(String);

impl TenantSlug {
    /// Validates a slug.
    pub fn parse(text: &str) -> Result<Self, NameError> {
        let rule = "slug must be 3 to 48 characters: a lowercase letter, then lowercase letters, \
                    digits, '-' or '_'";
        let bytes = text.as_bytes();
        let valid_len = (3..=MAX_SLUG_LEN).contains(&bytes.len());
        let valid_first = bytes.first().is_some_and(u8::is_ascii_lowercase);
        let valid_rest =
            bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-' || *b == b'_');
        if !(valid_len && valid_first && valid_rest) {
            return Err(NameError(format!("{rule} (got {})", printable(text))));
        }
        if RESERVED_SLUGS.contains(&text) || text.starts_with("pg_") {
            return Err(NameError(format!("slug {text:?} is reserved")));
        }
        Ok(Self(text.to_owned()))
    }

    /// The slug as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantSlug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The name of a database server in the catalog: `^[a-z][a-z0-9_-]{0,62}$`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct ServerName(String);

impl ServerName {
    /// Validates a server name.
    pub fn parse(text: &str) -> Result<Self, NameError> {
        let bytes = text.as_bytes();
        let ok = (1..=63).contains(&bytes.len())
            && bytes[0].is_ascii_lowercase()
            && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-' || *b == b'_');
        if !ok {
            return Err(NameError(format!(
                "server name must be 1 to 63 characters: a lowercase letter, then lowercase \
                 letters, digits, '-' or '_' (got {})",
                printable(text)
            )));
        }
        Ok(Self(text.to_owned()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ServerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A PostgreSQL identifier (database or role name) that tenantd derived and may create.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct PgIdent(String);

impl PgIdent {
    /// Database and role name of a tenant: prefix + slug, `-` as `_`.
    pub fn for_tenant(prefix: &str, slug: &TenantSlug) -> Self {
        Self(format!("{prefix}{}", slug.as_str().replace('-', "_")))
    }

    /// Staging database name of a tenant: only tenantd ever uses it, derived from the id.
    pub fn staging(id: Uuid) -> Self {
        Self(format!("tenantd_staging_{}", id.simple()))
    }

    /// Database and role name of a warm spare: derived from its id, used by nobody else
    /// (`tenantd_spare_<id>`, 46 bytes).
    pub fn spare(id: Uuid) -> Self {
        Self(format!("tenantd_spare_{}", id.simple()))
    }

    /// The name a move gives the source database it keeps: derived from the tenant and the
    /// move, used by nobody else (`tenantd_moved_<move>_<tenant>`, 56 bytes).
    pub fn moved(id: Uuid, operation: Uuid) -> Self {
        Self(format!("tenantd_moved_{}_{}", &operation.simple().to_string()[..8], id.simple()))
    }

    /// Checks a database or role name read back from the catalog (or from a server) as
    /// strictly as names tenantd derives: 1 to 63 bytes of lowercase letters, digits and
    /// `_`, not starting with a digit. The catalog may be written by hand (a direct INSERT
    /// is a documented way to ask for a tenant), so nothing read there is trusted as is.
    pub fn from_catalog(text: &str) -> Result<Self, NameError> {
        let bytes = text.as_bytes();
        let ok = (1..=63).contains(&bytes.len())
            && (bytes[0].is_ascii_lowercase() || bytes[0] == b'_')
            && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_');
        if ok {
            Ok(Self(text.to_owned()))
        } else {
            Err(NameError(format!(
                "name {} is not one tenantd uses: 1 to 63 lowercase letters, digits or '_', \
                 not starting with a digit",
                printable(text)
            )))
        }
    }

    /// The identifier as text (unquoted).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PgIdent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks the prefix of tenant database/role names.
pub fn validate_prefix(prefix: &str) -> Result<(), NameError> {
    let ok = prefix.len() <= MAX_PREFIX_LEN
        && prefix.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && prefix.bytes().next().is_none_or(|b| b.is_ascii_lowercase() || b == b'_')
        && !prefix.starts_with("pg_");
    if ok {
        Ok(())
    } else {
        Err(NameError(format!(
            "must be at most {MAX_PREFIX_LEN} characters of lowercase letters, digits and '_', \
             not starting with a digit or pg_ (got {})",
            printable(prefix)
        )))
    }
}

/// Shows a rejected name safely: quoted, escaped and cut to a readable length.
fn printable(text: &str) -> String {
    let cut: String = text.chars().take(64).collect();
    if cut.len() < text.len() { format!("{cut:?}… ({} bytes)", text.len()) } else { format!("{cut:?}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_slugs() {
        for s in ["acme", "a-b", "abc_123", "x".repeat(48).as_str()] {
            assert_eq!(TenantSlug::parse(s).unwrap().as_str(), s);
        }
    }

    #[test]
    fn hostile_slugs_are_rejected() {
        let long = "a".repeat(49);
        for s in [
            "",
            "ab",
            "Acme",
            "1abc",
            "-abc",
            "acme\"; DROP DATABASE x; --",
            "acme'",
            "ac me",
            "acme\n",
            "écume",
            "acmé",
            long.as_str(),
            "postgres",
            "template0",
            "template1",
            "pg_catalog",
        ] {
            assert!(TenantSlug::parse(s).is_err(), "{s:?} accepted");
        }
    }

    #[test]
    fn derived_names_fit_postgres() {
        let slug = TenantSlug::parse(&"a".repeat(48)).unwrap();
        let db = PgIdent::for_tenant(&"p".repeat(MAX_PREFIX_LEN), &slug);
        assert!(db.as_str().len() <= 63);
        assert_eq!(PgIdent::for_tenant("tenant_", &TenantSlug::parse("a-b").unwrap()).as_str(), "tenant_a_b");
        assert!(PgIdent::staging(Uuid::new_v4()).as_str().len() <= 63);
    }

    #[test]
    fn catalog_names_are_checked_like_derived_ones() {
        assert_eq!(PgIdent::from_catalog("tenant_acme").unwrap().as_str(), "tenant_acme");
        assert!(PgIdent::from_catalog(&PgIdent::staging(Uuid::new_v4()).to_string()).is_ok());
        let long = "a".repeat(64);
        for bad in ["", "host=evil.example user=x", "Acme", "1db", "a-b", "x\"; DROP", "é", long.as_str()] {
            assert!(PgIdent::from_catalog(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn prefixes() {
        assert!(validate_prefix("tenant_").is_ok());
        assert!(validate_prefix("").is_ok());
        assert!(validate_prefix("Tenant").is_err());
        assert!(validate_prefix("pg_x").is_err());
        assert!(validate_prefix("1x").is_err());
        assert!(validate_prefix(&"a".repeat(16)).is_err());
    }

    #[test]
    fn server_names() {
        assert!(ServerName::parse("local").is_ok());
        assert!(ServerName::parse("eu-1").is_ok());
        assert!(ServerName::parse("").is_err());
        assert!(ServerName::parse("a b").is_err());
        assert!(ServerName::parse("x'; --").is_err());
    }
}
