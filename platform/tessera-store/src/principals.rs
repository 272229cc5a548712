//! Who is asking: principals, their roles and domains, and bearer tokens.
//!
//! Tokens are 256 random bits, so a plain SHA-256 of the token is a safe
//! thing to store (a slow password hash buys nothing against a brute force of
//! 2^256); only the hash is kept, in the config file and in the database.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tessera_contract::Role;

/// An authenticated caller, or `public` for a request without a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    pub name: String,
    pub roles: Vec<Role>,
    /// The domains this principal is a member of: it may publish and append there.
    pub domains: Vec<String>,
}

impl Principal {
    pub fn public() -> Self {
        Self { name: "public".into(), roles: vec![Role::Public], domains: Vec::new() }
    }

    /// The caller without a token. (`public` is a reserved name: no
    /// configured principal may take it, whatever its roles.)
    pub fn is_public(&self) -> bool {
        self.name == "public"
    }

    pub fn is_member_of(&self, domain: &str) -> bool {
        self.domains.iter().any(|d| d == domain)
    }
}

/// A principal as stored, with the hash of its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrincipalRecord {
    pub principal: Principal,
    pub token_sha256: String,
    /// Where it came from: `config` or `demo`.
    pub origin: String,
}

/// The hex SHA-256 of a token.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The hex SHA-256 of arbitrary bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A new random token: `tsr_` and 64 hex digits from the operating system's CSPRNG.
pub fn new_token() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| format!("the operating system gave no random bytes: {e}"))?;
    Ok(format!("tsr_{}", hex::encode(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_caller_without_a_token_is_public() {
        assert!(Principal::public().is_public());
        let no_roles = Principal { name: "sales-bot".into(), roles: Vec::new(), domains: vec!["sales".into()] };
        assert!(!no_roles.is_public(), "a configured principal without roles is still authenticated");
        assert!(no_roles.is_member_of("sales"));
    }
}
