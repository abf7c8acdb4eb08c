//! Who may do what: password hashing, session and API tokens, and the role -> permission table that
//! every mutating endpoint checks.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};

use crate::names::Role;

/// What an endpoint needs. Reading is allowed to every role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// See everything of one's tenants.
    Read,
    /// Open, update and close outages; override IVR modes.
    ManageOutages,
    /// Acknowledge, shelve and clear alarms.
    HandleAlarms,
    /// Create and work tickets, take calls.
    HandleTickets,
    /// Sites, network, consumers, sensors, imports.
    ManageModel,
    /// Rules and their tests.
    ManageRules,
    /// Users, tenants, the audit log.
    Administer,
}

impl Role {
    pub fn allows(self, p: Permission) -> bool {
        use Permission::*;
        match self {
            Role::Admin => true,
            Role::Engineer => matches!(
                p,
                Read | ManageOutages | HandleAlarms | ManageModel | ManageRules
            ),
            Role::Dispatcher => matches!(p, Read | ManageOutages | HandleAlarms | HandleTickets),
            Role::Operator => matches!(p, Read | HandleTickets),
            Role::Viewer => matches!(p, Read),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("password hashing: {0}")]
pub struct HashError(String);

pub fn hash_password(password: &str) -> Result<String, HashError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| HashError(e.to_string()))
}

pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| {
        Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// A random secret of 32 bytes as 64 hex characters.
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    hex(&bytes)
}

/// A readable random password of 20 characters.
pub fn new_password() -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut bytes = [0u8; 20];
    OsRng.fill_bytes(&mut bytes);
    bytes
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

/// What is stored for a token: its SHA-256, so a leaked database does not leak sessions.
pub fn token_hash(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_verify_and_tokens_differ() {
        let h = hash_password("s3cret").unwrap();
        assert!(verify_password("s3cret", &h));
        assert!(!verify_password("s3cret!", &h));
        assert!(!verify_password("s3cret", "not a hash"));
        assert_ne!(new_token(), new_token());
        assert_eq!(token_hash("a").len(), 64);
        assert_eq!(new_password().len(), 20);
    }

    #[test]
    fn roles_match_the_table() {
        assert!(Role::Viewer.allows(Permission::Read));
        assert!(!Role::Viewer.allows(Permission::ManageOutages));
        assert!(Role::Dispatcher.allows(Permission::ManageOutages));
        assert!(!Role::Dispatcher.allows(Permission::ManageModel));
        assert!(Role::Engineer.allows(Permission::ManageRules));
        assert!(!Role::Operator.allows(Permission::HandleAlarms));
        assert!(!Role::Engineer.allows(Permission::Administer));
        assert!(Role::Admin.allows(Permission::Administer));
    }
}
