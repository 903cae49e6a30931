//! Generated secrets (passwords, the agent token) and the `Secret` wrapper that keeps them out of
//! `Debug` output and logs.

use rand::distr::{Alphanumeric, SampleString};
use std::fmt;

/// A secret string. `Debug` and `Display` never show it; call [`Secret::expose`] where the value
/// really has to go (a container's stdin, a response body, the state file).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// A fresh random secret of `len` ASCII letters and digits, safe in SQL literals, key=value
    /// lines and shell words.
    pub fn generate(len: usize) -> Self {
        Self(Alphanumeric.sample_string(&mut rand::rng(), len))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Length of generated passwords (DB user, WordPress admin).
pub const PASSWORD_LEN: usize = 24;
/// Length of the generated agent token.
pub const TOKEN_LEN: usize = 48;

/// Compares two byte strings in time independent of where they first differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Replaces every occurrence of each secret in `text` (e.g. a command's stderr) with `<redacted>`.
pub fn scrub(text: &str, secrets: &[&Secret]) -> String {
    let mut out = text.to_string();
    for secret in secrets {
        if !secret.expose().is_empty() {
            out = out.replace(secret.expose(), "<redacted>");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_are_fresh_alphanumeric_and_never_debug_printed() {
        let a = Secret::generate(PASSWORD_LEN);
        let b = Secret::generate(PASSWORD_LEN);
        assert_ne!(a, b);
        assert_eq!(a.expose().len(), PASSWORD_LEN);
        assert!(a.expose().bytes().all(|c| c.is_ascii_alphanumeric()));
        assert!(!format!("{a:?}").contains(a.expose()));
    }

    #[test]
    fn scrub_removes_secrets_from_text() {
        let s = Secret::new("hunter2");
        assert_eq!(
            scrub("ERROR near 'hunter2' at line 1", &[&s]),
            "ERROR near '<redacted>' at line 1"
        );
    }

    #[test]
    fn constant_time_eq_compares_contents() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
