//! Bearer-token authentication of the API: loading (or generating on first start) the API
//! tokens, comparing presented tokens in constant time, and the middleware guarding `/api/`.
//! Tokens are never logged; only SHA-256 digests are kept in memory.

use crate::api_error::ApiError;
use crate::private_files::{read_text, write_private, PrivateFileError};
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(transparent)]
    File(#[from] PrivateFileError),
    #[error("the token file {path} holds no token and CLONEPOOL_API_TOKEN is unset; put a token in it or delete it to have one generated")]
    NoToken { path: PathBuf },
}

/// Digests of the tokens the API accepts.
#[derive(Clone)]
pub struct ApiTokens {
    digests: Arc<Vec<[u8; 32]>>,
}

impl std::fmt::Debug for ApiTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiTokens({} token(s))", self.digests.len())
    }
}

/// Where the API tokens came from, for the start-up message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSource {
    pub path: PathBuf,
    /// The file was created by this start.
    pub generated: bool,
}

impl ApiTokens {
    pub fn from_tokens<S: AsRef<str>>(tokens: &[S]) -> Self {
        Self {
            digests: Arc::new(tokens.iter().map(|t| digest(t.as_ref())).collect()),
        }
    }

    /// Reads the token file (one token per line, `#` comments) plus `env_tokens`. When the file
    /// does not exist and no env token is given, generates a token into it (mode 0600).
    pub fn load_or_generate(
        path: &Path,
        env_tokens: &[String],
    ) -> Result<(Self, TokenSource), AuthError> {
        let mut tokens: Vec<String> = env_tokens.to_vec();
        let mut generated = false;
        if path.exists() {
            tokens.extend(parse_token_file(&read_text(path)?));
        } else if tokens.is_empty() {
            let token = generate_token();
            write_private(path, format!("{token}\n").as_bytes())?;
            tokens.push(token);
            generated = true;
        }
        if tokens.is_empty() {
            return Err(AuthError::NoToken {
                path: path.to_path_buf(),
            });
        }
        Ok((
            Self::from_tokens(&tokens),
            TokenSource {
                path: path.to_path_buf(),
                generated,
            },
        ))
    }

    /// True when `presented` is one of the tokens. Compares digests in constant time, so
    /// neither the length nor a matching prefix of a token leaks through timing.
    pub fn accepts(&self, presented: &str) -> bool {
        let presented = digest(presented);
        self.digests.iter().fold(false, |found, known| {
            found | constant_time_eq(known, &presented)
        })
    }
}

/// Token lines of a token file: trimmed, without blanks and `#` comments.
pub fn parse_token_file(contents: &str) -> Vec<String> {
    contents
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_string)
        .collect()
}

/// 32 random bytes as 64 hex characters.
pub fn generate_token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// The bearer token of a request, if it has a well-formed `Authorization: Bearer` header.
pub fn bearer_token(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Middleware: 401 unless the request carries an accepted bearer token.
pub async fn require_api_token(
    State(tokens): State<ApiTokens>,
    request: Request,
    next: Next,
) -> Response {
    match check(&tokens, request.headers()) {
        Ok(()) => next.run(request).await,
        Err(err) => err.into_response(),
    }
}

/// Checks a request's bearer token against `tokens`.
pub fn check(tokens: &ApiTokens, headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
    match bearer_token(headers) {
        None => Err(ApiError::unauthorized(
            "missing bearer token: send the header `Authorization: Bearer <token>`",
        )),
        Some(token) if tokens.accepts(token) => Ok(()),
        Some(_) => Err(ApiError::unauthorized("the bearer token is not valid")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, HeaderValue};
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn only_configured_tokens_are_accepted() {
        let tokens = ApiTokens::from_tokens(&["alpha", "beta"]);
        assert!(tokens.accepts("alpha"));
        assert!(tokens.accepts("beta"));
        assert!(!tokens.accepts("alph"));
        assert!(!tokens.accepts("alphaa"));
        assert!(!tokens.accepts(""));
    }

    #[test]
    fn a_token_is_generated_0600_on_first_start_and_reused_after() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api-token");
        let (tokens, source) = ApiTokens::load_or_generate(&path, &[]).unwrap();
        assert!(source.generated);
        let written = std::fs::read_to_string(&path).unwrap();
        assert_eq!(written.trim().len(), 64);
        assert!(tokens.accepts(written.trim()));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (again, source) = ApiTokens::load_or_generate(&path, &[]).unwrap();
        assert!(!source.generated);
        assert!(again.accepts(written.trim()));
    }

    #[test]
    fn env_tokens_need_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api-token");
        let (tokens, source) =
            ApiTokens::load_or_generate(&path, &["from-env".to_string()]).unwrap();
        assert!(!source.generated);
        assert!(!path.exists());
        assert!(tokens.accepts("from-env"));
    }

    #[test]
    fn an_empty_token_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api-token");
        std::fs::write(&path, "# no tokens\n\n").unwrap();
        let err = ApiTokens::load_or_generate(&path, &[]).unwrap_err();
        assert!(err.to_string().contains("holds no token"), "{err}");
    }

    #[test]
    fn bearer_headers_are_parsed_strictly() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer_token(&headers), None);
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer_token(&headers), None);
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer abc"),
        );
        assert_eq!(bearer_token(&headers), Some("abc"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(bearer_token(&headers), None);
    }
}
