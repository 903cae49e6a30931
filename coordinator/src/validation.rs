//! Validating API requests before any job exists: field rules (customer_id a DNS label of at
//! most 40 characters, ttl bounds, credential lengths), all problems reported at once, then the
//! URL checks of [`crate::url_guard`].

use crate::api_error::ApiError;
use crate::url_guard::{Lookup, UrlError, UrlPolicy};
use clonepool_common::api::{
    is_backup_id, CloneRequest, RestoreRequest, RestoreSource, RollbackRequest, SiteLogin,
    MAX_RESTORE_TABLES, MAX_TTL_MINUTES, MIN_TTL_MINUTES,
};
use clonepool_common::ids::CloneId;
use reqwest::StatusCode;
use std::time::Duration;

/// Longest accepted username.
pub const MAX_USERNAME_LEN: usize = 200;
/// Longest accepted password.
pub const MAX_PASSWORD_LEN: usize = 1024;

/// A clone request that passed validation.
#[derive(Clone)]
pub struct ValidClone {
    /// `None`: the coordinator names the clone.
    pub clone_id: Option<CloneId>,
    pub ttl_minutes: u32,
    pub source_url: String,
    pub source_username: String,
    pub source_password: String,
}

/// Checks every field of a clone request that needs no network; all problems at once.
pub fn check_clone_fields(
    request: &CloneRequest,
    default_ttl: u32,
) -> Result<ValidClone, Vec<String>> {
    let mut problems = Vec::new();
    let clone_id = match &request.customer_id {
        None => None,
        Some(raw) => match raw.parse::<CloneId>() {
            Ok(id) => Some(id),
            Err(err) => {
                problems.push(format!("customer_id: {err}"));
                None
            }
        },
    };
    let ttl_minutes = request.ttl_minutes.unwrap_or(default_ttl);
    if !(MIN_TTL_MINUTES..=MAX_TTL_MINUTES).contains(&ttl_minutes) {
        problems.push(format!(
            "ttl_minutes is {ttl_minutes}; it must be between {MIN_TTL_MINUTES} and {MAX_TTL_MINUTES}"
        ));
    }
    check_login_fields(
        "source_username",
        &request.source_username,
        "source_password",
        &request.source_password,
        &mut problems,
    );
    if request.source_url.trim().is_empty() {
        problems.push("source_url must not be empty".into());
    }
    if problems.is_empty() {
        Ok(ValidClone {
            clone_id,
            ttl_minutes,
            source_url: request.source_url.trim().to_string(),
            source_username: request.source_username.clone(),
            source_password: request.source_password.clone(),
        })
    } else {
        Err(problems)
    }
}

fn check_login_fields(
    user_field: &str,
    username: &str,
    password_field: &str,
    password: &str,
    problems: &mut Vec<String>,
) {
    if username.trim().is_empty() {
        problems.push(format!("{user_field} must not be empty"));
    } else if username.len() > MAX_USERNAME_LEN {
        problems.push(format!(
            "{user_field} is longer than {MAX_USERNAME_LEN} characters"
        ));
    } else if username.chars().any(char::is_control) {
        problems.push(format!("{user_field} must not contain control characters"));
    }
    if password.is_empty() {
        problems.push(format!("{password_field} must not be empty"));
    } else if password.len() > MAX_PASSWORD_LEN {
        problems.push(format!(
            "{password_field} is longer than {MAX_PASSWORD_LEN} characters"
        ));
    }
}

/// Checks the fields of a restore request that need no network; all problems at once.
pub fn check_restore_fields(request: &RestoreRequest) -> Result<(), Vec<String>> {
    let mut problems = Vec::new();
    let login = |prefix: &str, login: &SiteLogin, problems: &mut Vec<String>| {
        if login.url.trim().is_empty() {
            problems.push(format!("{prefix}.url must not be empty"));
        }
        check_login_fields(
            &format!("{prefix}.username"),
            &login.username,
            &format!("{prefix}.password"),
            &login.password,
            problems,
        );
    };
    match &request.source {
        RestoreSource::Site(site) => login("source", site, &mut problems),
        RestoreSource::Clone(clone) => {
            if let Err(err) = clone.clone_id.parse::<CloneId>() {
                problems.push(format!("source.clone_id: {err}"));
            }
        }
    }
    login("target", &request.target, &mut problems);
    if request.database == Some(false) && request.files == Some(false) {
        problems.push("database and files are both false: nothing to restore".into());
    }
    if let Some(tables) = &request.tables {
        if tables.is_empty() {
            problems
                .push("tables must not be empty when given (leave it out for all tables)".into());
        }
        if tables.len() > MAX_RESTORE_TABLES {
            problems.push(format!(
                "tables lists more than {MAX_RESTORE_TABLES} tables"
            ));
        }
        if request.database == Some(false) {
            problems.push("tables needs database to be true".into());
        }
        for table in tables {
            let ok = !table.is_empty()
                && table.len() <= 64
                && table
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$');
            if !ok {
                problems.push(format!(
                    "tables: {table:?} is not a table name (1 to 64 letters, digits, _ or $)"
                ));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// Checks the fields of a rollback request that need no network; all problems at once.
pub fn check_rollback_fields(request: &RollbackRequest) -> Result<(), Vec<String>> {
    let mut problems = Vec::new();
    if request.target.url.trim().is_empty() {
        problems.push("target.url must not be empty".into());
    }
    check_login_fields(
        "target.username",
        &request.target.username,
        "target.password",
        &request.target.password,
        &mut problems,
    );
    if !is_backup_id(&request.backup_id) {
        problems.push(format!(
            "backup_id {:?} is not a migrator backup id (YYYYMMDDTHHMMSSZ- and 16 hex digits, as a restore's result names it)",
            request.backup_id
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// The 400 answer for field problems.
pub fn field_problems(problems: Vec<String>) -> ApiError {
    ApiError::bad_request(problems.join("; "))
}

/// The answer for a refused URL: 400 with `invalid_url` or `forbidden_url`.
pub fn url_refused(err: UrlError) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, err.code(), err.to_string())
}

/// Runs the URL check of `field`.
pub async fn check_url(
    policy: &UrlPolicy,
    lookup: &dyn Lookup,
    timeout: Duration,
    field: &str,
    raw: &str,
) -> Result<String, ApiError> {
    policy
        .check(field, raw, lookup, timeout)
        .await
        .map(|url| url.to_string())
        .map_err(url_refused)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(customer_id: Option<&str>, ttl: Option<u32>) -> CloneRequest {
        CloneRequest {
            source_url: "https://mysite.com".into(),
            source_username: "admin".into(),
            source_password: "secret".into(),
            customer_id: customer_id.map(str::to_string),
            ttl_minutes: ttl,
        }
    }

    #[test]
    fn clone_request_validation_table() {
        let forty = "a".repeat(40);
        let forty_one = "a".repeat(41);
        let table: Vec<(CloneRequest, Option<&str>)> = vec![
            (request(Some("test-clone-001"), Some(30)), None),
            (request(None, None), None),
            (request(Some(&forty), Some(5)), None),
            (request(Some("x"), Some(1440)), None),
            (request(Some(&forty_one), None), Some("at most 40")),
            (request(Some("Upper"), None), Some("DNS label")),
            (request(Some("-lead"), None), Some("DNS label")),
            (request(Some("trail-"), None), Some("DNS label")),
            (request(Some("dot.ted"), None), Some("DNS label")),
            (request(Some("../etc"), None), Some("DNS label")),
            (request(Some(""), None), Some("must not be empty")),
            (request(None, Some(4)), Some("ttl_minutes is 4")),
            (request(None, Some(1441)), Some("ttl_minutes is 1441")),
            (request(None, Some(0)), Some("ttl_minutes is 0")),
            (
                CloneRequest {
                    source_username: " ".into(),
                    ..request(None, None)
                },
                Some("source_username must not be empty"),
            ),
            (
                CloneRequest {
                    source_password: String::new(),
                    ..request(None, None)
                },
                Some("source_password must not be empty"),
            ),
            (
                CloneRequest {
                    source_password: "p".repeat(MAX_PASSWORD_LEN + 1),
                    ..request(None, None)
                },
                Some("source_password is longer"),
            ),
            (
                CloneRequest {
                    source_url: String::new(),
                    ..request(None, None)
                },
                Some("source_url must not be empty"),
            ),
        ];
        for (req, expected) in table {
            let got = check_clone_fields(&req, 30);
            match expected {
                None => assert!(got.is_ok(), "{req:?}: {:?}", got.err()),
                Some(needle) => {
                    let problems = got.err().unwrap_or_else(|| panic!("{req:?} must fail"));
                    assert!(
                        problems.iter().any(|p| p.contains(needle)),
                        "{req:?}: {problems:?} lacks {needle:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_default_ttl_applies_when_none_is_given() {
        let valid = check_clone_fields(&request(None, None), 30).unwrap();
        assert_eq!(valid.ttl_minutes, 30);
        assert!(valid.clone_id.is_none());
    }

    #[test]
    fn all_problems_are_reported_together() {
        let bad = CloneRequest {
            source_url: String::new(),
            source_username: String::new(),
            source_password: String::new(),
            customer_id: Some("BAD".into()),
            ttl_minutes: Some(1),
        };
        assert_eq!(check_clone_fields(&bad, 30).err().unwrap().len(), 5);
    }
}
