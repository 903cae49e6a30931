//! Identifiers used across clonepool (pods, clones, nodes) and their validation rules.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{kind} must not be empty")]
    Empty { kind: &'static str },
    #[error("{kind} is {len} characters long; at most {max} are allowed")]
    TooLong {
        kind: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{kind} {value:?} must be a DNS label: lowercase letters, digits and '-', not starting or ending with '-'")]
    NotDnsLabel { kind: &'static str, value: String },
}

/// Checks that `value` is an RFC 1123 DNS label of at most `max` characters.
pub fn validate_dns_label(kind: &'static str, value: &str, max: usize) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if value.len() > max {
        return Err(IdError::TooLong {
            kind,
            len: value.len(),
            max,
        });
    }
    let bytes = value.as_bytes();
    let allowed = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-';
    if !bytes.iter().all(allowed) || bytes[0] == b'-' || bytes[bytes.len() - 1] == b'-' {
        return Err(IdError::NotDnsLabel {
            kind,
            value: value.to_string(),
        });
    }
    Ok(())
}

macro_rules! dns_label_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $max:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// The longest value accepted.
            pub const MAX_LEN: usize = $max;

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                validate_dns_label($kind, s, $max)?;
                Ok(Self(s.to_string()))
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                validate_dns_label($kind, &s, $max)?;
                Ok(Self(s))
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

dns_label_id!(
    /// A pod on one node: `cp-` followed by random lowercase hex, used in container names and labels.
    PodId,
    "pod id",
    40
);
dns_label_id!(
    /// A clone's name; it becomes the first label of the clone's host name.
    CloneId,
    "clone id",
    40
);
dns_label_id!(
    /// A node (Kubernetes node name or the standalone host's name, lower-cased).
    NodeName,
    "node name",
    63
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels_are_accepted() {
        for ok in ["a", "test-clone-001", "0abc", &"x".repeat(40)] {
            assert!(ok.parse::<CloneId>().is_ok(), "{ok}");
        }
    }

    #[test]
    fn non_labels_are_refused_with_a_reason() {
        assert_eq!(
            "".parse::<CloneId>(),
            Err(IdError::Empty { kind: "clone id" })
        );
        assert!(matches!(
            "x".repeat(41).parse::<CloneId>(),
            Err(IdError::TooLong {
                len: 41,
                max: 40,
                ..
            })
        ));
        for bad in ["-a", "a-", "A", "a_b", "a.b", "a b", "ä", "../x"] {
            assert!(
                matches!(bad.parse::<CloneId>(), Err(IdError::NotDnsLabel { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn ids_refuse_bad_values_when_deserialized() {
        assert!(serde_json::from_str::<PodId>("\"cp-1f\"").is_ok());
        let err = serde_json::from_str::<PodId>("\"Bad/Id\"").unwrap_err();
        assert!(err.to_string().contains("DNS label"), "{err}");
    }
}
