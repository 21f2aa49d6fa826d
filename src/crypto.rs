//! Sealing of stored secrets (server admin passwords, tenant role passwords) and token hashing.
//!
//! A sealed secret is the text envelope `v1.<key id>.<base64(nonce || ciphertext)>`, encrypted
//! with AES-256-GCM-SIV under a master key, with associated data that binds it to its catalog
//! row (a server's name, a tenant's id): a ciphertext copied into another row does not open.
//! The key id is derived from the key itself, so several keys can be configured during a
//! rotation and each envelope says which one opens it.

use aes_gcm_siv::aead::{Aead, KeyInit, Payload};
use aes_gcm_siv::{Aes256GcmSiv, Nonce};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

const VERSION: &str = "v1";
const NONCE_LEN: usize = 12;

/// Why a key could not be loaded or a secret could not be opened. Never contains the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// The configured master key is not base64 of 32 bytes.
    #[error("{0} must be base64 of exactly 32 bytes")]
    BadKey(&'static str),
    /// The envelope is not of the form `v1.<key id>.<base64>`.
    #[error("sealed value is malformed")]
    Malformed,
    /// No configured key has the envelope's key id.
    #[error("sealed with key {0}, which is not configured (add it to TENANTD_OLD_MASTER_KEYS)")]
    UnknownKey(String),
    /// Authentication failed: wrong key, wrong row, or altered ciphertext.
    #[error("sealed value does not open: altered, copied from another row, or wrong key")]
    Tampered,
}

/// One master key and its derived id.
struct MasterKey {
    id: String,
    cipher: Aes256GcmSiv,
}

impl MasterKey {
    fn from_base64(text: &SecretString, setting: &'static str) -> Result<Self, CryptoError> {
        let bytes = STANDARD.decode(text.expose_secret().trim()).map_err(|_| CryptoError::BadKey(setting))?;
        if bytes.len() != 32 {
            return Err(CryptoError::BadKey(setting));
        }
        let digest = Sha256::new().chain_update(b"tenantd key id v1").chain_update(&bytes).finalize();
        let cipher = Aes256GcmSiv::new_from_slice(&bytes).map_err(|_| CryptoError::BadKey(setting))?;
        Ok(Self { id: hex::encode(&digest[..4]), cipher })
    }
}

/// The master keys: one to seal with, all of them to open with.
pub struct Keyring {
    current: MasterKey,
    previous: Vec<MasterKey>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let previous: Vec<&str> = self.previous.iter().map(|k| k.id.as_str()).collect();
        f.debug_struct("Keyring").field("current", &self.current.id).field("previous", &previous).finish()
    }
}

impl Keyring {
    /// Loads the current key and any earlier ones (all base64 of 32 bytes).
    pub fn new(current: &SecretString, previous: &[SecretString]) -> Result<Self, CryptoError> {
        Ok(Self {
            current: MasterKey::from_base64(current, "TENANTD_MASTER_KEY")?,
            previous: previous
                .iter()
                .map(|k| MasterKey::from_base64(k, "TENANTD_OLD_MASTER_KEYS"))
                .collect::<Result<_, _>>()?,
        })
    }

    /// Id of the key new secrets are sealed with.
    pub fn current_id(&self) -> &str {
        &self.current.id
    }

    /// Seals `plaintext`, bound to `aad` (the row it belongs to).
    pub fn seal(&self, plaintext: &str, aad: &[u8]) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let ciphertext = self
            .current
            .cipher
            .encrypt(&Nonce::from(nonce), Payload { msg: plaintext.as_bytes(), aad })
            .expect("AES-GCM-SIV encryption of an in-memory buffer cannot fail");
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&ciphertext);
        format!("{VERSION}.{}.{}", self.current.id, STANDARD.encode(blob))
    }

    /// Opens an envelope made by [`Keyring::seal`] with the same `aad`.
    pub fn open(&self, envelope: &str, aad: &[u8]) -> Result<SecretString, CryptoError> {
        let mut parts = envelope.splitn(3, '.');
        let (Some(VERSION), Some(key_id), Some(body)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(CryptoError::Malformed);
        };
        let key = std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.id == key_id)
            .ok_or_else(|| CryptoError::UnknownKey(key_id.to_owned()))?;
        let blob = STANDARD.decode(body).map_err(|_| CryptoError::Malformed)?;
        if blob.len() < NONCE_LEN + 16 {
            return Err(CryptoError::Malformed);
        }
        let (nonce, ciphertext) = blob.split_at(NONCE_LEN);
        let nonce = Nonce::try_from(nonce).map_err(|_| CryptoError::Malformed)?;
        let plaintext = key
            .cipher
            .decrypt(&nonce, Payload { msg: ciphertext, aad })
            .map_err(|_| CryptoError::Tampered)?;
        String::from_utf8(plaintext).map(SecretString::from).map_err(|_| CryptoError::Tampered)
    }

    /// True when `id` is one of the configured keys (current or earlier).
    pub fn has_key(&self, id: &str) -> bool {
        std::iter::once(&self.current).chain(&self.previous).any(|k| k.id == id)
    }

    /// True when an envelope was sealed with an earlier key and should be re-sealed.
    pub fn is_stale(&self, envelope: &str) -> bool {
        envelope.split('.').nth(1) != Some(self.current.id.as_str())
    }
}

/// Associated data of a server's sealed admin password: the ciphertext opens only on the row
/// of the server it was sealed for.
pub fn server_aad(name: &str) -> Vec<u8> {
    format!("server:{name}").into_bytes()
}

/// Associated data of a tenant's sealed role password (bound to the tenant's id).
pub fn tenant_aad(id: uuid::Uuid) -> Vec<u8> {
    format!("tenant:{id}").into_bytes()
}
/// Associated data of a webhook's sealed signing secret (bound to the webhook's id).
pub fn webhook_aad(id: uuid::Uuid) -> Vec<u8> {
    format!("webhook:{id}").into_bytes()
}

/// A fresh random master key, base64-encoded (for the embedded default and `tenantd keygen`).
pub fn generate_master_key() -> SecretString {
    let mut key = [0u8; 32];
    rand::rng().fill_bytes(&mut key);
    SecretString::from(STANDARD.encode(key))
}

/// A fresh random secret of `bytes` random bytes, URL-safe (tokens, role passwords).
pub fn random_secret(bytes: usize) -> SecretString {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    SecretString::from(URL_SAFE_NO_PAD.encode(buf))
}

/// The stored form of a bearer token: hex SHA-256. Tokens are random 32 bytes, so a plain
/// hash is enough; the catalog never holds a token in clear.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Compares a presented token with the expected one in constant time.
pub fn token_matches(presented: &str, expected: &SecretString) -> bool {
    let a = Sha256::digest(presented.as_bytes());
    let b = Sha256::digest(expected.expose_secret().as_bytes());
    a.ct_eq(&b).into()
}

/// PBKDF2 iterations of the SCRAM verifiers of tenant roles made by this build. Tenant
/// passwords are 24 random bytes ([`random_secret`]): no iteration count makes them harder to
/// guess (iterations slow down guessing human passwords), while each one costs time at every
/// login (client side) and every `CREATE ROLE` / `ALTER ROLE ... PASSWORD` (PostgreSQL checks
/// the new verifier against the empty password, the full count). Recorded per tenant
/// (`tenants.scram_iterations`, schema V13), as the verifier is computed again from the
/// sealed password.
pub const TENANT_SCRAM_ITERATIONS: i32 = 256;
/// The count of roles made before schema V13 (PostgreSQL's default).
pub const LEGACY_SCRAM_ITERATIONS: i32 = 4096;

/// The SCRAM-SHA-256 verifier tenantd stores for a tenant role's password.
///
/// Its salt is derived from the tenant's id instead of drawn at random, so the verifier can
/// be computed again from the sealed password alone: PgBouncer's `auth_file` must hold the
/// very verifier the server holds (same salt and iterations) to log in to the server with
/// SCRAM pass-through, and tenantd's admin role (no superuser) cannot read `pg_authid`. A
/// salt is public (the server sends it to anyone who starts a login); what it must be is
/// unique per role, and tenant ids are random.
pub fn tenant_scram_verifier(password: &SecretString, tenant: uuid::Uuid, iterations: i32) -> String {
    let digest =
        Sha256::new().chain_update(b"tenantd scram salt v1:").chain_update(tenant.as_bytes()).finalize();
    let iterations =
        u32::try_from(iterations).ok().filter(|i| *i > 0).unwrap_or(LEGACY_SCRAM_ITERATIONS as u32);
    scram_verifier(password.expose_secret(), &digest[..16], iterations)
}

/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (RFC 5802, as PostgreSQL
/// stores it), with the password SASLprep-normalised as libpq and the server do.
fn scram_verifier(password: &str, salt: &[u8], iterations: u32) -> String {
    use hmac::{Hmac, KeyInit, Mac};
    type HmacSha256 = Hmac<Sha256>;
    let mac = |key: &[u8], data: &[u8]| -> [u8; 32] {
        let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
        m.update(data);
        m.finalize().into_bytes().into()
    };
    let prepared = stringprep::saslprep(password)
        .map_or_else(|_| password.as_bytes().to_vec(), |p| p.as_bytes().to_vec());
    // Hi(password, salt, i): PBKDF2-HMAC-SHA-256 with one block.
    let mut block = salt.to_vec();
    block.extend_from_slice(&1u32.to_be_bytes());
    let mut u = mac(&prepared, &block);
    let mut salted = u;
    for _ in 1..iterations {
        u = mac(&prepared, &u);
        salted.iter_mut().zip(u).for_each(|(s, x)| *s ^= x);
    }
    let client_key = mac(&salted, b"Client Key");
    let stored_key = Sha256::digest(client_key);
    let server_key = mac(&salted, b"Server Key");
    format!(
        "SCRAM-SHA-256${iterations}:{}${}:{}",
        STANDARD.encode(salt),
        STANDARD.encode(stored_key),
        STANDARD.encode(server_key)
    )
}

/// Compares a presented token with a stored hash in constant time.
pub fn token_matches_hash(presented: &str, stored_hash: &str) -> bool {
    token_hash(presented).as_bytes().ct_eq(stored_hash.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring() -> Keyring {
        Keyring::new(&generate_master_key(), &[]).unwrap()
    }

    #[test]
    fn round_trip() {
        let k = ring();
        let sealed = k.seal("s3cret-pw", b"server:local");
        assert!(sealed.starts_with(&format!("v1.{}.", k.current_id())));
        assert!(!sealed.contains("s3cret"));
        assert_eq!(k.open(&sealed, b"server:local").unwrap().expose_secret(), "s3cret-pw");
        assert_ne!(sealed, k.seal("s3cret-pw", b"server:local"), "nonce is random");
    }

    #[test]
    fn wrong_aad_fails() {
        let k = ring();
        let sealed = k.seal("pw", b"server:a");
        assert_eq!(k.open(&sealed, b"server:b").unwrap_err(), CryptoError::Tampered);
    }

    #[test]
    fn wrong_key_fails() {
        let sealed = ring().seal("pw", b"x");
        let other = ring();
        assert!(matches!(other.open(&sealed, b"x"), Err(CryptoError::UnknownKey(_))));
        // Same key id cannot be faked: put the other key's id on the envelope.
        let forged = sealed.replacen(sealed.split('.').nth(1).unwrap(), other.current_id(), 1);
        assert_eq!(other.open(&forged, b"x").unwrap_err(), CryptoError::Tampered);
    }

    #[test]
    fn flipped_byte_fails() {
        let k = ring();
        let sealed = k.seal("pw", b"x");
        let (head, body) = sealed.rsplit_once('.').unwrap();
        let mut blob = STANDARD.decode(body).unwrap();
        for i in [0, NONCE_LEN, blob.len() - 1] {
            blob[i] ^= 0x01;
            let tampered = format!("{head}.{}", STANDARD.encode(&blob));
            assert_eq!(k.open(&tampered, b"x").unwrap_err(), CryptoError::Tampered, "byte {i}");
            blob[i] ^= 0x01;
        }
    }

    #[test]
    fn malformed_envelopes() {
        let k = ring();
        for bad in ["", "v1", "v2.abcd.AAAA", "v1.abcd", "v1.x.!!!"] {
            assert!(k.open(bad, b"x").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn rotation_opens_old_and_seals_new() {
        let old = generate_master_key();
        let new = generate_master_key();
        let sealed_old = Keyring::new(&old, &[]).unwrap().seal("pw", b"x");
        let rotated = Keyring::new(&new, &[old]).unwrap();
        assert!(rotated.is_stale(&sealed_old));
        assert_eq!(rotated.open(&sealed_old, b"x").unwrap().expose_secret(), "pw");
        assert!(!rotated.is_stale(&rotated.seal("pw", b"x")));
    }

    #[test]
    fn bad_keys_are_refused_without_echo() {
        for bad in ["", "not base64!", "AAAA"] {
            let err = Keyring::new(&SecretString::from(bad), &[]).unwrap_err();
            assert_eq!(err, CryptoError::BadKey("TENANTD_MASTER_KEY"));
        }
    }

    #[test]
    fn debug_shows_only_key_ids() {
        let k = ring();
        let shown = format!("{k:?}");
        assert!(shown.contains(k.current_id()));
        assert!(!shown.contains("cipher"));
    }

    #[test]
    fn tokens() {
        let t = random_secret(32);
        let h = token_hash(t.expose_secret());
        assert!(token_matches_hash(t.expose_secret(), &h));
        assert!(!token_matches_hash("nope", &h));
        assert!(token_matches(t.expose_secret(), &t));
        assert!(!token_matches("x", &t));
    }

    #[test]
    fn tenant_scram_verifiers_are_stable_and_per_tenant() {
        let pw = SecretString::from("s3cret");
        let (a, b) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
        let v = tenant_scram_verifier(&pw, a, TENANT_SCRAM_ITERATIONS);
        assert_eq!(
            v,
            tenant_scram_verifier(&pw, a, TENANT_SCRAM_ITERATIONS),
            "computed again from the password alone"
        );
        assert_ne!(v, tenant_scram_verifier(&pw, b, TENANT_SCRAM_ITERATIONS), "another tenant, another salt");
        assert!(v.starts_with("SCRAM-SHA-256$256:") && !v.contains("s3cret"), "{v}");
        let legacy = tenant_scram_verifier(&pw, a, LEGACY_SCRAM_ITERATIONS);
        assert!(legacy.starts_with("SCRAM-SHA-256$4096:"), "{legacy}");
        assert_ne!(legacy, v);
    }

    #[test]
    fn scram_verifier_matches_rfc_7677() {
        // RFC 7677's example: "pencil", salt W22ZaJ0SNY7soEsUEjb6gQ==, 4096 iterations; its
        // ServerSignature 6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4= over the AuthMessage
        // below proves the ServerKey.
        let salt = STANDARD.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let v = scram_verifier("pencil", &salt, 4096);
        let server_key = STANDARD.decode(v.rsplit(':').next().unwrap()).unwrap();
        use hmac::{Hmac, KeyInit, Mac};
        let auth = "n=user,r=rOprNGfwEbeRWgbNEkqO,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                    s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let mut m = Hmac::<Sha256>::new_from_slice(&server_key).unwrap();
        m.update(auth.as_bytes());
        let signature = STANDARD.encode(m.finalize().into_bytes());
        assert_eq!(signature, "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=");
    }
}
