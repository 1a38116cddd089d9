//! Authentication of MCP callers: static bearer tokens (kept as SHA-256 hashes, from a file or a mounted
//! Secret), JWT bearer tokens verified against configured issuers' JWKS, Kubernetes service-account
//! tokens checked with the TokenReview API, and the OAuth protected resource metadata (RFC 9728) that
//! lets OAuth-capable clients discover the issuers.
//!
//! Callers learn nothing beyond "401": the reason an [`AuthError::Invalid`] carries is for logs only, and
//! no token (or part of one) ever reaches a log line or an error.

use std::path::PathBuf;

use http::HeaderMap;
use http::header::AUTHORIZATION;

pub mod jwt;
pub mod static_tokens;
pub mod token_review;

/// The authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub subject: String,
    pub groups: Vec<String>,
    /// Stable, non-secret id of the credential used: the first 16 hex digits of a static token's hash,
    /// or `jwt:<iss>#<sub>`. Stateless sessions are keyed on it.
    pub credential_id: String,
}

/// Why a request is not authenticated. Both become a plain 401.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no bearer token")]
    Missing,
    /// The reason is for the gateway's log, never for the caller.
    #[error("invalid bearer token: {0}")]
    Invalid(String),
}

/// Where credentials come from. `Debug` never shows a plain static token.
#[derive(Clone, Debug, Default)]
pub struct AuthConfig {
    /// YAML tokens file (`--tokens FILE`, or a mounted Secret); re-read when it changes.
    pub tokens_file: Option<PathBuf>,
    /// Tokens given in memory (`dev` makes one); hashed at start.
    pub static_tokens: Vec<StaticToken>,
    pub jwt: Vec<JwtIssuerConfig>,
    /// Kubernetes service-account tokens for this audience are checked with the TokenReview API.
    pub token_review_audience: Option<String>,
}

#[derive(Clone)]
pub struct StaticToken {
    pub token: String,
    pub subject: String,
    pub groups: Vec<String>,
}

impl std::fmt::Debug for StaticToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticToken")
            .field("token", &"<redacted>")
            .field("subject", &self.subject)
            .field("groups", &self.groups)
            .finish()
    }
}

/// One trusted JWT issuer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwtIssuerConfig {
    /// Exact `iss` value, such as `https://login.example.com/realms/agents`.
    pub issuer: String,
    /// Required `aud` value (this gateway's resource identifier).
    pub audience: String,
    pub jwks: JwksSource,
    /// Claim holding the caller's groups (`groups` by default); a dotted path such as `realm_access.roles`
    /// reaches into nested objects.
    pub groups_claim: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JwksSource {
    File(PathBuf),
    Url(String),
}

/// Checks bearer tokens. Cheap to share behind an `Arc`.
pub struct Authenticator {
    tokens: static_tokens::StaticTokens,
    issuers: Vec<jwt::Issuer>,
    reviewer: Option<token_review::TokenReviewer>,
}

impl Authenticator {
    /// Loads the tokens file and every issuer's JWKS. Refuses a configuration that could never
    /// authenticate anyone, and any malformed tokens file or JWKS, with the file or URL named.
    pub async fn new(config: AuthConfig) -> anyhow::Result<Self> {
        let tokens = static_tokens::StaticTokens::new(config.tokens_file, &config.static_tokens)?;
        let mut issuers = Vec::with_capacity(config.jwt.len());
        for issuer in config.jwt {
            issuers.push(jwt::Issuer::new(issuer).await?);
        }
        let reviewer = match config.token_review_audience {
            Some(audience) => {
                let client = kube::Client::try_default().await.map_err(|e| {
                    anyhow::anyhow!("--token-review-audience needs a cluster (a pod's service account or KUBECONFIG): {e}")
                })?;
                Some(token_review::TokenReviewer::new(client, audience))
            }
            None => None,
        };
        if tokens.is_empty() && issuers.is_empty() && reviewer.is_none() {
            anyhow::bail!(
                "no credentials are configured (no static tokens, no tokens file entries, no JWT issuers, no \
                 TokenReview audience): every request would be refused; give --tokens FILE, a JWT issuer or \
                 --token-review-audience"
            );
        }
        Ok(Authenticator { tokens, issuers, reviewer })
    }

    /// Authenticates a request from its `Authorization: Bearer ...` header.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, AuthError> {
        let token = bearer_token(headers)?;
        if let Some(principal) = self.tokens.lookup(token) {
            return Ok(principal);
        }
        if !looks_like_jwt(token) {
            return Err(AuthError::Invalid("unknown static token".into()));
        }
        // Service-account tokens are JWTs too: one no configured issuer vouches for goes to TokenReview.
        // Both are boxed: their futures are kilobytes, and a static token's request would otherwise
        // carry (and copy) that space too.
        let from_issuer = if self.issuers.is_empty() { None } else { Some(Box::pin(jwt::authenticate(&self.issuers, token)).await) };
        match (from_issuer, &self.reviewer) {
            (Some(Ok(principal)), _) => Ok(principal),
            (_, Some(reviewer)) => Box::pin(reviewer.review(token)).await,
            (Some(Err(e)), None) => Err(e),
            (None, None) => Err(AuthError::Invalid("unknown static token".into())),
        }
    }

    /// The `WWW-Authenticate` value of a 401 answer (RFC 6750 + RFC 9728 §5.1).
    pub fn www_authenticate(&self, resource_metadata_url: &str) -> String {
        format!(r#"Bearer realm="toolwarden", resource_metadata="{}""#, quote_safe(resource_metadata_url))
    }

    /// The OAuth protected resource metadata document (RFC 9728) for `resource` (the MCP endpoint URL).
    pub fn protected_resource_metadata(&self, resource: &str) -> serde_json::Value {
        let servers: Vec<&str> = self.issuers.iter().map(|i| i.config.issuer.as_str()).collect();
        serde_json::json!({
            "resource": resource,
            "authorization_servers": servers,
            "bearer_methods_supported": ["header"],
            "resource_name": "Toolwarden MCP gateway",
        })
    }
}

/// The token of the single `Authorization: Bearer` header.
fn bearer_token(headers: &HeaderMap) -> Result<&str, AuthError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Err(AuthError::Missing);
    };
    if values.next().is_some() {
        return Err(AuthError::Invalid("more than one Authorization header".into()));
    }
    let value = value.to_str().map_err(|_| AuthError::Invalid("Authorization header is not visible ASCII".into()))?;
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Invalid("Authorization scheme is not Bearer".into()));
    }
    let token = token.trim_matches(' ');
    if token.is_empty() {
        return Err(AuthError::Missing);
    }
    if token.contains(' ') {
        return Err(AuthError::Invalid("bearer token contains a space".into()));
    }
    Ok(token)
}

/// An HTTP(S) client for the gateway's own outbound calls (JWKS, the approvals CLI): rustls with ring and
/// the platform's roots, set explicitly so it works whichever rustls providers other crates enable.
pub(crate) fn http_client(timeout: std::time::Duration) -> anyhow::Result<reqwest::Client> {
    use rustls_platform_verifier::BuilderVerifierExt as _;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_platform_verifier()?
        .with_no_client_auth();
    Ok(reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(timeout)
        .connect_timeout(std::time::Duration::from_secs(5))
        .build()?)
}

fn looks_like_jwt(token: &str) -> bool {
    token.split('.').count() == 3
}

/// Keeps a URL inside a quoted-string.
fn quote_safe(value: &str) -> String {
    value.chars().filter(|c| *c != '"' && *c != '\\' && !c.is_control()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    async fn alice() -> Authenticator {
        Authenticator::new(AuthConfig {
            static_tokens: vec![StaticToken { token: "s3cret-alice".into(), subject: "alice".into(), groups: vec!["team-leads".into()] }],
            ..Default::default()
        })
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn good_static_token_gives_subject_groups_and_a_non_secret_credential_id() {
        let p = alice().await.authenticate(&headers("Bearer s3cret-alice")).await.unwrap();
        assert_eq!(p.subject, "alice");
        assert_eq!(p.groups, vec!["team-leads"]);
        assert_eq!(p.credential_id.len(), 16);
        assert!(!p.credential_id.contains("s3cret"));
        // The scheme is case-insensitive.
        assert_eq!(alice().await.authenticate(&headers("bearer s3cret-alice")).await.unwrap(), p);
    }

    #[tokio::test]
    async fn missing_header_is_missing_and_other_schemes_are_invalid() {
        let auth = alice().await;
        assert_eq!(auth.authenticate(&HeaderMap::new()).await, Err(AuthError::Missing));
        assert_eq!(auth.authenticate(&headers("Bearer ")).await, Err(AuthError::Missing));
        assert!(matches!(auth.authenticate(&headers("Basic YWxpY2U6eA==")).await, Err(AuthError::Invalid(_))));
        let mut two = headers("Bearer s3cret-alice");
        two.append(AUTHORIZATION, HeaderValue::from_static("Bearer s3cret-alice"));
        assert!(matches!(auth.authenticate(&two).await, Err(AuthError::Invalid(_))));
    }

    #[tokio::test]
    async fn bad_token_is_invalid_and_the_reason_never_contains_the_token() {
        let err = alice().await.authenticate(&headers("Bearer s3cret-alicf")).await.unwrap_err();
        let AuthError::Invalid(reason) = &err else { panic!("{err:?}") };
        assert!(!reason.contains("s3cret"), "{reason}");
        assert!(!format!("{err} {err:?}").contains("s3cret"));
        // A JWT-shaped token with no issuer configured is just an unknown token.
        assert!(matches!(alice().await.authenticate(&headers("Bearer a.b.c")).await, Err(AuthError::Invalid(_))));
    }

    #[tokio::test]
    async fn service_account_tokens_go_to_token_review_and_static_tokens_do_not() {
        let reviewed = serde_json::json!({
            "authenticated": true, "audiences": ["toolwarden"],
            "user": {"username": "system:serviceaccount:team-a:agent", "groups": ["system:serviceaccounts"]}});
        let (reviewer, asked) = token_review::scripted::reviewer(Ok(reviewed));
        let mut auth = alice().await;
        auth.reviewer = Some(reviewer);
        let p = auth.authenticate(&headers("Bearer eyJhbGciOi.eyJpc3Mi.c2ln")).await.unwrap();
        assert_eq!((p.subject.as_str(), p.groups.as_slice()), ("system:serviceaccount:team-a:agent", &["system:serviceaccounts".to_owned()][..]));
        assert_eq!(auth.authenticate(&headers("Bearer s3cret-alice")).await.unwrap().subject, "alice");
        assert!(auth.authenticate(&headers("Bearer not-a-jwt")).await.is_err(), "only JWT-shaped tokens are reviewed");
        assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 1);

        let (refusing, _) = token_review::scripted::reviewer(Ok(serde_json::json!({"authenticated": false, "error": "token expired"})));
        auth.reviewer = Some(refusing);
        assert!(matches!(auth.authenticate(&headers("Bearer eyJhbGciOi.eyJpc3Mi.c2xx")).await, Err(AuthError::Invalid(_))));
    }

    #[tokio::test]
    async fn a_configuration_that_can_authenticate_no_one_is_refused() {
        let err = Authenticator::new(AuthConfig::default()).await.err().unwrap();
        assert!(err.to_string().contains("no credentials are configured"), "{err}");
    }

    #[test]
    fn static_token_debug_hides_the_token() {
        let t = StaticToken { token: "s3cret".into(), subject: "a".into(), groups: vec![] };
        assert!(!format!("{t:?}").contains("s3cret"));
    }

    #[tokio::test]
    async fn www_authenticate_points_at_the_resource_metadata() {
        let auth = alice().await;
        assert_eq!(
            auth.www_authenticate("http://127.0.0.1:8080/.well-known/oauth-protected-resource/mcp/default"),
            r#"Bearer realm="toolwarden", resource_metadata="http://127.0.0.1:8080/.well-known/oauth-protected-resource/mcp/default""#
        );
        let doc = auth.protected_resource_metadata("http://127.0.0.1:8080/mcp/default");
        assert_eq!(doc["resource"], "http://127.0.0.1:8080/mcp/default");
        assert_eq!(doc["authorization_servers"], serde_json::json!([]));
        assert_eq!(doc["bearer_methods_supported"], serde_json::json!(["header"]));
    }
}
