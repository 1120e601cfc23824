//! The HTTP API's bearer token: a request that writes or changes roles
//! (any method but GET, HEAD and OPTIONS: `PUT`/`DELETE /kv/{key}`,
//! `POST /promote`, `POST`/`DELETE /maintenance`) must carry
//! `Authorization: Bearer <token>`, else 401 and nothing happens. Reads,
//! the health probes (`/health`, `/primary`, `/replica` ..., also as
//! `OPTIONS`, HAProxy's usual check) and `/metrics` stay open: load
//! balancers and Prometheus probe them without secrets, and they change
//! nothing (metrics hold counters, never data).
//!
//! The token is read from a file (`--http-token-file`), so it is not in
//! the process list or the environment.

use crate::error::DaemonError;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::path::Path;
use std::sync::Arc;

/// Shortest token accepted: a guessable one protects nothing.
pub const MIN_TOKEN_LEN: usize = 16;

/// A bearer token, compared in constant time.
#[derive(Clone)]
pub struct HttpToken(Arc<str>);

impl std::fmt::Debug for HttpToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HttpToken(..)")
    }
}

impl HttpToken {
    /// Reads the token from `path`: its content without surrounding
    /// whitespace, at least `MIN_TOKEN_LEN` visible ASCII characters.
    pub fn from_file(path: &Path) -> Result<HttpToken, DaemonError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            DaemonError::Config(format!(
                "cannot read http_token_file {}: {e}",
                path.display()
            ))
        })?;
        HttpToken::new(text.trim()).map_err(|why| {
            DaemonError::Config(format!("http_token_file {}: {why}", path.display()))
        })
    }

    pub fn new(token: &str) -> Result<HttpToken, String> {
        if token.len() < MIN_TOKEN_LEN {
            return Err(format!(
                "the token has {} characters, fewer than {MIN_TOKEN_LEN}; use e.g. `head -c 32 /dev/urandom | base64`",
                token.len()
            ));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("the token must be visible ASCII without spaces".into());
        }
        Ok(HttpToken(token.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `header` is `Bearer <this token>`, in time independent of
    /// where they differ.
    fn accepts(&self, header: &[u8]) -> bool {
        let Some(given) = header.strip_prefix(b"Bearer ") else {
            return false;
        };
        let want = self.0.as_bytes();
        let mut diff = (given.len() != want.len()) as u8;
        for (i, w) in want.iter().enumerate() {
            diff |= w ^ given.get(i).copied().unwrap_or(0);
        }
        diff == 0
    }
}

/// Whether a request of `method` needs the token.
pub fn needs_token(method: &Method) -> bool {
    method != Method::GET && method != Method::HEAD && method != Method::OPTIONS
}

/// The middleware: 401 with a JSON error for a write without the token.
pub async fn require_token(
    State((token, rejected)): State<(HttpToken, Arc<dyn Fn() + Send + Sync>)>,
    request: Request,
    next: Next,
) -> Response {
    if needs_token(request.method()) {
        let ok = request
            .headers()
            .get(header::AUTHORIZATION)
            .is_some_and(|h| token.accepts(h.as_bytes()));
        if !ok {
            rejected();
            let reply = crate::api::ErrorReply {
                error: "this request writes or changes roles: send `Authorization: Bearer <token>` with the node's http token (--http-token-file); nothing was done".into(),
                leader: None,
                kind: Some("unauthorized".into()),
            };
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                axum::Json(reply),
            )
                .into_response();
        }
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_bearer_token_is_accepted() {
        let t = HttpToken::new("0123456789abcdef").unwrap();
        assert!(t.accepts(b"Bearer 0123456789abcdef"));
        for bad in [
            &b"Bearer 0123456789abcde"[..],
            b"Bearer 0123456789abcdefg",
            b"Bearer 0123456789abcdeF",
            b"0123456789abcdef",
            b"Basic 0123456789abcdef",
            b"",
        ] {
            assert!(!t.accepts(bad), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn a_short_or_spaced_token_is_refused() {
        assert!(
            HttpToken::new("short")
                .unwrap_err()
                .contains("fewer than 16")
        );
        assert!(HttpToken::new("with a space inside!").is_err());
    }
}
