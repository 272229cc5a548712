//! Personal values sealed per data subject (crypto-shredding).
//!
//! Every classified value of an event is stored as a [`Token`]: the value,
//! encrypted with AES-256-GCM under a data key of its subject, named by the
//! key's id. Destroying a subject's data keys makes every token of that
//! subject unreadable, in the immutable log and in every table and version
//! built from it, without rewriting any of them.
//!
//! - A [`DataKey`] is 32 random bytes. It is stored only wrapped (encrypted)
//!   under the [`Kek`], the key-encryption key that lives outside the
//!   database; the wrapping is bound to the key's id, domain and subject, so
//!   a wrapped key moved to another row does not unwrap. Rotating the
//!   key-encryption key re-wraps data keys and never touches a token.
//! - Sealing is deterministic: the nonce is an HMAC of the value under the
//!   data key (a synthetic nonce, as in AES-SIV), so the same value of the
//!   same subject seals to the same token and an idempotent resend of an
//!   event still compares equal to what was stored. What that reveals,
//!   equality of a subject's values, is what the `hash` masking shows
//!   analysts anyway.
//! - A token names its key, so a reader opens a batch of tokens with one
//!   lookup per distinct key ([`Keys`]).
//!
//! This crate holds no keys of its own and knows nothing of databases: the
//! store keeps the wrapped keys and the ledger of forgotten subjects, and is
//! the only place that builds [`Sealer`]s. No other code path may.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hmac;
use ring::rand::{SecureRandom as _, SystemRandom};

/// What a text token starts with; the version of the format follows.
pub const TOKEN_PREFIX: &str = "tsr1.";

/// Bytes of a key id in a token.
const ID_LEN: usize = 8;

/// Why a key or a token could not be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("the key-encryption key must be 32 bytes, given as 64 hex digits or 43 base64url characters: {0}")]
    BadKek(String),
    #[error("not a sealed token: {0}")]
    NotAToken(&'static str),
    #[error("the token does not open with its key: it was altered, or sealed under another key")]
    Tampered,
    #[error(
        "the wrapped data key does not unwrap: it was altered, belongs to another subject, or the key-encryption key is not the one it was wrapped with"
    )]
    Unwrap,
    #[error("the system's random source failed")]
    Random,
    #[error("the sealed value is not JSON: {0}")]
    NotJson(String),
}

/// A subject's data key: 32 random bytes. Never stored or logged in clear.
pub struct DataKey([u8; 32]);

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(…)")
    }
}

impl DataKey {
    /// A new random key.
    pub fn generate() -> Result<Self, SealError> {
        let mut key = [0u8; 32];
        SystemRandom::new().fill(&mut key).map_err(|_| SealError::Random)?;
        Ok(Self(key))
    }
}

/// What a wrapped data key is bound to: it unwraps only for the same id,
/// domain and subject.
#[derive(Debug, Clone, Copy)]
pub struct KeyContext<'a> {
    pub id: i64,
    pub domain: &'a str,
    pub subject: &'a str,
}

impl KeyContext<'_> {
    fn aad(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ID_LEN + self.domain.len() + self.subject.len() + 2);
        out.extend_from_slice(&self.id.to_be_bytes());
        out.extend_from_slice(self.domain.as_bytes());
        out.push(0);
        out.extend_from_slice(self.subject.as_bytes());
        out
    }
}

/// The key-encryption key: wraps and unwraps data keys. It lives outside
/// the database (configuration or a file beside it).
pub struct Kek {
    key: LessSafeKey,
    /// A fingerprint that names the key without revealing it.
    fingerprint: String,
}

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kek").field("fingerprint", &self.fingerprint).finish()
    }
}

impl Kek {
    /// A key from its text form: 64 hex digits, or 32 bytes in base64url.
    pub fn parse(text: &str) -> Result<Self, SealError> {
        let text = text.trim();
        let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            (0..32)
                .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16))
                .collect::<Result<Vec<u8>, _>>()
                .map_err(|e| SealError::BadKek(e.to_string()))?
        } else {
            URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')).map_err(|e| SealError::BadKek(e.to_string()))?
        };
        let bytes: [u8; 32] = bytes.try_into().map_err(|v: Vec<u8>| SealError::BadKek(format!("it has {} bytes", v.len())))?;
        Ok(Self::from_bytes(&bytes))
    }

    fn from_bytes(bytes: &[u8; 32]) -> Self {
        let fingerprint = {
            let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, bytes), b"tessera kek fingerprint");
            tag.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect()
        };
        // AES_256_GCM takes exactly 32 bytes: this cannot fail.
        #[expect(clippy::expect_used, reason = "AES_256_GCM takes exactly 32 bytes")]
        let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, bytes).expect("a 32-byte AES-256 key"));
        Self { key, fingerprint }
    }

    /// A new random key, in the text form [`Kek::parse`] reads.
    pub fn generate_text() -> Result<String, SealError> {
        let mut bytes = [0u8; 32];
        SystemRandom::new().fill(&mut bytes).map_err(|_| SealError::Random)?;
        Ok(URL_SAFE_NO_PAD.encode(bytes))
    }

    /// Names this key (stored beside each wrapped key, to say which key
    /// wrapped it) without revealing it.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// `key` encrypted under this key, bound to `context`: nonce ‖ ciphertext ‖ tag.
    pub fn wrap(&self, key: &DataKey, context: KeyContext<'_>) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).map_err(|_| SealError::Random)?;
        let mut out = key.0.to_vec();
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(context.aad()), &mut out)
            .map_err(|_| SealError::Random)?;
        let mut wrapped = nonce.to_vec();
        wrapped.extend_from_slice(&out);
        Ok(wrapped)
    }

    /// The data key in `wrapped`, if this key wrapped it for `context`.
    pub fn unwrap(&self, wrapped: &[u8], context: KeyContext<'_>) -> Result<DataKey, SealError> {
        if wrapped.len() != NONCE_LEN + 32 + AES_256_GCM.tag_len() {
            return Err(SealError::Unwrap);
        }
        let (nonce, sealed) = wrapped.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Unwrap)?;
        let mut buf = sealed.to_vec();
        let plain = self.key.open_in_place(nonce, Aad::from(context.aad()), &mut buf).map_err(|_| SealError::Unwrap)?;
        let key: [u8; 32] = plain.try_into().map_err(|_| SealError::Unwrap)?;
        buf.fill(0);
        Ok(DataKey(key))
    }
}

/// Seals and opens the values of one subject, under one data key.
pub struct Sealer {
    id: i64,
    key: LessSafeKey,
    nonces: hmac::Key,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer").field("key_id", &self.id).finish()
    }
}

impl Sealer {
    /// The sealer of data key `id`.
    pub fn new(id: i64, key: &DataKey) -> Self {
        // Two keys from the one: one encrypts, one makes nonces.
        let root = hmac::Key::new(hmac::HMAC_SHA256, &key.0);
        let derive = |label: &[u8]| hmac::sign(&root, label);
        let enc = derive(b"tessera seal encrypt");
        let nonce = derive(b"tessera seal nonce");
        #[expect(clippy::expect_used, reason = "an HMAC-SHA256 tag is 32 bytes, the AES-256 key length")]
        let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, enc.as_ref()).expect("a 32-byte AES-256 key"));
        Self { id, key, nonces: hmac::Key::new(hmac::HMAC_SHA256, nonce.as_ref()) }
    }

    pub fn key_id(&self) -> i64 {
        self.id
    }

    /// `value` sealed: the same value (objects compare whatever the order
    /// of their keys) always gives the same token. The text is padded with
    /// spaces to a multiple of [`PAD`] bytes, so that a token's length says
    /// little about its value's (a boolean's, a short name's).
    pub fn seal(&self, value: &serde_json::Value) -> Token {
        let mut plain = Vec::new();
        canonical(value, &mut plain);
        plain.resize(plain.len().div_ceil(PAD).max(1) * PAD, b' ');
        let header = self.id.to_be_bytes();
        let tag = hmac::sign(&self.nonces, &[&header[..], &plain[..]].concat());
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&tag.as_ref()[..NONCE_LEN]);
        let mut body = plain;
        // Sealing in memory fails only for inputs over ring's limit (2^36 bytes), far beyond any event.
        if self.key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(header), &mut body).is_err() {
            body.clear();
        }
        let mut bytes = Vec::with_capacity(ID_LEN + NONCE_LEN + body.len());
        bytes.extend_from_slice(&header);
        bytes.extend_from_slice(&nonce);
        bytes.extend_from_slice(&body);
        Token { bytes }
    }

    /// The value sealed in `token`, which must name this sealer's key.
    pub fn open(&self, token: &Token) -> Result<serde_json::Value, SealError> {
        if token.key_id() != self.id {
            return Err(SealError::Tampered);
        }
        let (header, rest) = token.bytes.split_at(ID_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Tampered)?;
        let mut buf = sealed.to_vec();
        let plain = self.key.open_in_place(nonce, Aad::from(header), &mut buf).map_err(|_| SealError::Tampered)?;
        serde_json::from_slice(plain).map_err(|e| SealError::NotJson(e.to_string()))
    }
}

/// Sealed values are padded to a multiple of this many bytes.
pub const PAD: usize = 32;

/// The JSON text of `value` with every object's keys in order.
fn canonical(value: &serde_json::Value, out: &mut Vec<u8>) {
    match value {
        serde_json::Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(serde_json::Value::String(k.clone()).to_string().as_bytes());
                out.push(b':');
                canonical(&map[k], out);
            }
            out.push(b'}');
        }
        serde_json::Value::Array(items) => {
            out.push(b'[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical(v, out);
            }
            out.push(b']');
        }
        other => out.extend_from_slice(other.to_string().as_bytes()),
    }
}

/// A sealed value: key id ‖ nonce ‖ ciphertext ‖ tag. In event payloads it
/// is text (`tsr1.` and base64url); in tables, these bytes.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Token {
    bytes: Vec<u8>,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token(key {})", self.key_id())
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(&self.bytes))
    }
}

impl Token {
    /// The smallest token: an empty value still has a tag.
    const MIN_LEN: usize = ID_LEN + NONCE_LEN + 16;

    /// A token from its bytes (a table's sealed column).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SealError> {
        if bytes.len() < Self::MIN_LEN {
            return Err(SealError::NotAToken("too short"));
        }
        Ok(Self { bytes: bytes.to_vec() })
    }

    /// A token from its text (an event payload's sealed field).
    pub fn parse(text: &str) -> Result<Self, SealError> {
        let body = text.strip_prefix(TOKEN_PREFIX).ok_or(SealError::NotAToken("it does not start with `tsr1.`"))?;
        let bytes = URL_SAFE_NO_PAD.decode(body).map_err(|_| SealError::NotAToken("not base64url"))?;
        Self::from_bytes(&bytes)
    }

    /// Whether `text` has the form of a token (it may still not open).
    pub fn looks_like(text: &str) -> bool {
        Self::parse(text).is_ok()
    }

    /// The id of the data key that sealed it.
    pub fn key_id(&self) -> i64 {
        let mut id = [0u8; ID_LEN];
        id.copy_from_slice(&self.bytes[..ID_LEN]);
        i64::from_be_bytes(id)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// Opens tokens a batch at a time: one key lookup per distinct key id.
/// `lookup` answers `None` for a destroyed key (a forgotten subject), and
/// such tokens open as `None`: the value is gone.
#[derive(Debug)]
pub struct Keys<F> {
    lookup: F,
    cache: std::collections::HashMap<i64, Option<Sealer>>,
}

impl<F, E> Keys<F>
where
    F: FnMut(i64) -> Result<Option<Sealer>, E>,
{
    pub fn new(lookup: F) -> Self {
        Self { lookup, cache: std::collections::HashMap::new() }
    }

    /// The value in `token`, or `None` when its key is destroyed.
    pub fn open(&mut self, token: &Token) -> Result<Option<serde_json::Value>, OpenError<E>> {
        let id = token.key_id();
        if !self.cache.contains_key(&id) {
            let sealer = (self.lookup)(id).map_err(OpenError::Lookup)?;
            self.cache.insert(id, sealer);
        }
        match self.cache.get(&id) {
            Some(Some(sealer)) => sealer.open(token).map(Some).map_err(OpenError::Seal),
            _ => Ok(None),
        }
    }
}

/// Why a token of a batch could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError<E> {
    #[error("looking up its key: {0}")]
    Lookup(E),
    #[error(transparent)]
    Seal(SealError),
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn context(id: i64) -> KeyContext<'static> {
        KeyContext { id, domain: "customers", subject: "CUS-0001" }
    }

    #[test]
    fn a_value_seals_to_the_same_token_and_opens() {
        let key = DataKey::generate().unwrap();
        let sealer = Sealer::new(7, &key);
        for value in [json!("ada@example.com"), json!(1815), json!({"street": "1 Main St"}), json!(null), json!("")] {
            let a = sealer.seal(&value);
            assert_eq!(a, sealer.seal(&value), "deterministic");
            assert_eq!(a.key_id(), 7);
            let text = a.to_string();
            assert!(text.starts_with(TOKEN_PREFIX));
            assert!(!text.contains("ada") && !text.contains("example"), "{text}");
            let back = Token::parse(&text).unwrap();
            assert_eq!(sealer.open(&back).unwrap(), value);
            assert_eq!(sealer.open(&Token::from_bytes(back.as_bytes()).unwrap()).unwrap(), value);
        }
        assert_ne!(sealer.seal(&json!("a")), sealer.seal(&json!("b")));
        // Key order does not matter; lengths are padded.
        let a: serde_json::Value = serde_json::from_str(r#"{"street": "1 Main St", "city": "Oslo"}"#).unwrap();
        let b: serde_json::Value = serde_json::from_str(r#"{"city": "Oslo", "street": "1 Main St"}"#).unwrap();
        assert_eq!(sealer.seal(&a), sealer.seal(&b));
        assert_eq!(sealer.seal(&json!(true)).as_bytes().len(), sealer.seal(&json!(false)).as_bytes().len());
        assert_eq!(sealer.seal(&json!("Al")).as_bytes().len(), sealer.seal(&json!("Alexandra")).as_bytes().len());
        // Another subject's key seals the same value differently, and cannot open it.
        let other = Sealer::new(8, &DataKey::generate().unwrap());
        assert_ne!(other.seal(&json!("a")).as_bytes()[8..], sealer.seal(&json!("a")).as_bytes()[8..]);
        assert_eq!(other.open(&sealer.seal(&json!("a"))), Err(SealError::Tampered));
    }

    #[test]
    fn an_altered_token_does_not_open() {
        let sealer = Sealer::new(1, &DataKey::generate().unwrap());
        let token = sealer.seal(&json!("secret"));
        for i in 0..token.as_bytes().len() {
            let mut bytes = token.as_bytes().to_vec();
            bytes[i] ^= 1;
            let altered = Token::from_bytes(&bytes).unwrap();
            assert!(sealer.open(&altered).is_err(), "byte {i}");
        }
        for bad in ["", "tsr1.", "tsr1.!!!", "tsr2.AAAA", "ada@example.com", "tsr1.AAAA"] {
            assert!(Token::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn data_keys_wrap_under_the_kek_bound_to_their_subject() {
        let kek = Kek::parse(&Kek::generate_text().unwrap()).unwrap();
        let key = DataKey::generate().unwrap();
        let token = Sealer::new(3, &key).seal(&json!("x"));
        let wrapped = kek.wrap(&key, context(3)).unwrap();
        let back = kek.unwrap(&wrapped, context(3)).unwrap();
        assert_eq!(Sealer::new(3, &back).open(&token).unwrap(), json!("x"));
        // Bound to id, domain and subject; only this KEK opens it.
        assert_eq!(kek.unwrap(&wrapped, context(4)).unwrap_err(), SealError::Unwrap);
        assert!(kek.unwrap(&wrapped, KeyContext { subject: "CUS-0002", ..context(3) }).is_err());
        let other = Kek::parse(&Kek::generate_text().unwrap()).unwrap();
        assert!(other.unwrap(&wrapped, context(3)).is_err());
        assert_ne!(kek.fingerprint(), other.fingerprint());
        // Rotation: re-wrapped under a new KEK, the same tokens open.
        let rewrapped = other.wrap(&kek.unwrap(&wrapped, context(3)).unwrap(), context(3)).unwrap();
        assert_eq!(Sealer::new(3, &other.unwrap(&rewrapped, context(3)).unwrap()).open(&token).unwrap(), json!("x"));
    }

    #[test]
    fn kek_text_forms() {
        let hex = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        let a = Kek::parse(hex).unwrap();
        let bytes: Vec<u8> = (0..32).map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap()).collect();
        let b = Kek::parse(&URL_SAFE_NO_PAD.encode(&bytes)).unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        for bad in ["", "short", &"z".repeat(64), &URL_SAFE_NO_PAD.encode([0u8; 16])] {
            assert!(matches!(Kek::parse(bad), Err(SealError::BadKek(_))), "{bad}");
        }
        assert!(!format!("{a:?}").contains("0011"), "Debug shows only the fingerprint");
    }

    #[test]
    fn a_batch_opens_with_one_lookup_per_key_and_forgotten_keys_open_as_none() {
        let keys: Vec<DataKey> = (0..3).map(|_| DataKey::generate().unwrap()).collect();
        let tokens: Vec<Token> = (0..30).map(|i| Sealer::new(i % 3, &keys[i as usize % 3]).seal(&json!(i))).collect();
        let mut lookups = Vec::new();
        let mut opener = Keys::new(|id: i64| -> Result<Option<Sealer>, String> {
            lookups.push(id);
            // Key 2 was destroyed: its subject was forgotten.
            Ok((id != 2).then(|| Sealer::new(id, &keys[id as usize])))
        });
        let opened: Vec<Option<serde_json::Value>> = tokens.iter().map(|t| opener.open(t).unwrap()).collect();
        for (i, v) in opened.iter().enumerate() {
            if i % 3 == 2 { assert_eq!(v, &None) } else { assert_eq!(v, &Some(json!(i))) }
        }
        drop(opener);
        assert_eq!(lookups, [0, 1, 2]);
    }
}
