//! The cluster token (SPEC §8): one shared secret carried as `Authorization: Bearer`
//! on every slave↔master call and on the master's admin calls.

use std::sync::Arc;

use axum::{
    Json,
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use subtle::ConstantTimeEq;

use crate::protocol::ErrorBody;

/// The shared secret, or none: then every call is allowed (loopback-only setups).
#[derive(Clone, Default)]
pub struct Token(Option<Arc<str>>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "Token(set)" } else { "Token(none)" })
    }
}

impl Token {
    /// An empty string counts as no token, so `CLUSTER_TOKEN=` cannot lock anyone out by accident.
    pub fn new(secret: Option<String>) -> Self {
        Self(secret.filter(|s| !s.is_empty()).map(Arc::from))
    }

    /// The token from `--token` or from the file `--token-file` names (one of them at
    /// most; clap enforces that). The file's surrounding whitespace (a trailing newline)
    /// is not part of the secret, and an empty file means no token, like an empty value.
    /// The file keeps the secret out of `ps` and out of the environment (SPEC §8).
    pub fn from_flag_or_file(secret: Option<String>, file: Option<&std::path::Path>) -> Result<Self, String> {
        let Some(path) = file else { return Ok(Self::new(secret)) };
        let text = std::fs::read_to_string(path)
            .map_err(|error| format!("cannot read the token file {}: {error}", path.display()))?;
        Ok(Self::new(Some(text.trim().to_owned())))
    }

    /// Whether a secret is configured.
    pub fn is_set(&self) -> bool {
        self.0.is_some()
    }

    /// Whether `headers` carry the right bearer token; compared in constant time.
    pub fn admits(&self, headers: &HeaderMap) -> bool {
        let Some(secret) = &self.0 else { return true };
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .unwrap_or("");
        presented.as_bytes().ct_eq(secret.as_bytes()).into()
    }

    /// The header value for outgoing calls, if a secret is configured.
    pub fn header_value(&self) -> Option<HeaderValue> {
        let secret = self.0.as_ref()?;
        let mut value = HeaderValue::from_str(&format!("Bearer {secret}")).ok()?;
        value.set_sensitive(true);
        Some(value)
    }

    /// Adds the bearer header to an outgoing request when a secret is configured.
    pub fn authorize(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self.header_value() {
            Some(value) => request.header(header::AUTHORIZATION, value),
            None => request,
        }
    }
}

/// Middleware: 401 in the SPEC's error shape before the body is read, unless the token
/// matches. Mount with `route_layer(middleware::from_fn_with_state(token, require_token))`.
pub async fn require_token(State(token): State<Token>, request: Request, next: Next) -> Response {
    if token.admits(request.headers()) { next.run(request).await } else { unauthorized() }
}

/// The 401 answer, with `WWW-Authenticate` as RFC 6750 asks.
pub fn unauthorized() -> Response {
    let body = ErrorBody {
        error: "unauthorized".to_owned(),
        message: "missing or wrong cluster token (Authorization: Bearer <token>)".to_owned(),
    };
    let mut response = (StatusCode::UNAUTHORIZED, Json(body)).into_response();
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bearer(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn no_token_admits_everyone() {
        assert!(Token::new(None).admits(&HeaderMap::new()));
        assert!(Token::new(Some(String::new())).admits(&HeaderMap::new()));
    }

    #[test]
    fn a_token_file_is_read_without_its_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cret\n").unwrap();
        let token = Token::from_flag_or_file(None, Some(&path)).unwrap();
        assert!(token.admits(&bearer("Bearer s3cret")));
        std::fs::write(&path, "").unwrap();
        assert!(!Token::from_flag_or_file(None, Some(&path)).unwrap().is_set());
        let missing = Token::from_flag_or_file(None, Some(&dir.path().join("nope"))).unwrap_err();
        assert!(missing.contains("cannot read the token file"), "{missing}");
    }

    #[test]
    fn a_token_admits_only_its_bearer() {
        let token = Token::new(Some("s3cret".into()));
        assert!(token.admits(&bearer("Bearer s3cret")));
        assert!(!token.admits(&bearer("Bearer s3cre")));
        assert!(!token.admits(&bearer("s3cret")));
        assert!(!token.admits(&HeaderMap::new()));
    }
}
