//! JWT bearer tokens: the signature is checked against the issuer's JWKS (a file, or a URL fetched and
//! cached), then `iss`, `aud`, `exp`, `nbf` and `sub`. Only asymmetric algorithms are accepted, so a
//! public key can never be used as an HMAC secret and `none` never passes.
//!
//! The issuer is chosen by the token's (unverified) `iss`, then verified like every other claim. Keys are
//! looked up by `kid`; an unknown `kid` re-reads the JWKS (at most every [`MIN_REFRESH`]) so key rotation
//! needs no restart, and a URL's JWKS is also re-fetched when older than [`MAX_AGE`]. A failed re-fetch
//! keeps the previous keys.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::{AuthError, JwksSource, JwtIssuerConfig, Principal};

/// Asymmetric algorithms only.
pub const ALGORITHMS: &[Algorithm] =
    &[Algorithm::RS256, Algorithm::RS384, Algorithm::RS512, Algorithm::PS256, Algorithm::PS384, Algorithm::PS512, Algorithm::ES256, Algorithm::ES384];
/// Least time between two JWKS reads caused by unknown key ids (a flood of made-up kids costs one read).
pub const MIN_REFRESH: Duration = Duration::from_secs(10);
/// Age after which a JWKS URL is fetched again.
pub const MAX_AGE: Duration = Duration::from_secs(15 * 60);
/// Clock skew allowed on `exp` and `nbf`.
pub const LEEWAY_SECONDS: u64 = 30;
const MAX_JWKS_BYTES: usize = 1024 * 1024;

struct Key {
    kid: Option<String>,
    /// The JWK's `alg`, when it names one.
    alg: Option<Algorithm>,
    key: DecodingKey,
}

struct Keys {
    keys: Vec<Key>,
    fetched: Option<Instant>,
}

pub(super) struct Issuer {
    pub(super) config: JwtIssuerConfig,
    keys: RwLock<Arc<Keys>>,
    /// Serialises refreshes; holds when the last one was tried.
    refresh: tokio::sync::Mutex<Option<Instant>>,
    http: Option<reqwest::Client>,
}

impl Issuer {
    pub(super) async fn new(mut config: JwtIssuerConfig) -> anyhow::Result<Self> {
        let name = config.issuer.clone();
        if config.issuer.trim().is_empty() {
            anyhow::bail!("JWT issuer: issuer is empty");
        }
        if config.audience.trim().is_empty() {
            anyhow::bail!("JWT issuer {name}: audience is empty (tokens for other services would be accepted)");
        }
        if config.groups_claim.trim().is_empty() {
            config.groups_claim = "groups".into();
        }
        let http = match &config.jwks {
            JwksSource::Url(url) => {
                if !(url.starts_with("https://") || url.starts_with("http://")) {
                    anyhow::bail!("JWT issuer {name}: jwks URL {url} must start with https:// (or http://)");
                }
                Some(super::http_client(Duration::from_secs(5)).with_context(|| format!("JWT issuer {name}"))?)
            }
            JwksSource::File(_) => None,
        };
        let issuer = Issuer {
            config,
            keys: RwLock::new(Arc::new(Keys { keys: Vec::new(), fetched: None })),
            refresh: tokio::sync::Mutex::new(None),
            http,
        };
        match issuer.fetch().await {
            Ok(keys) => issuer.store(keys),
            // A file is ours to fix now; an identity provider may be down for a moment.
            Err(e) if matches!(issuer.config.jwks, JwksSource::File(_)) => return Err(e.context(format!("JWT issuer {name}"))),
            Err(e) => tracing::warn!(issuer = %name, "JWKS not fetched yet, will retry on first use: {e:#}"),
        }
        Ok(issuer)
    }

    fn current(&self) -> Arc<Keys> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn store(&self, keys: Vec<Key>) {
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(Keys { keys, fetched: Some(Instant::now()) });
    }

    async fn fetch(&self) -> anyhow::Result<Vec<Key>> {
        let text = match (&self.config.jwks, &self.http) {
            (JwksSource::File(path), _) => {
                std::fs::read_to_string(path).with_context(|| format!("JWKS file {}", path.display()))?
            }
            (JwksSource::Url(url), Some(http)) => {
                let response = http.get(url).send().await.with_context(|| format!("JWKS {url}"))?;
                if !response.status().is_success() {
                    anyhow::bail!("JWKS {url} answered {}", response.status());
                }
                let bytes = response.bytes().await.with_context(|| format!("JWKS {url}"))?;
                if bytes.len() > MAX_JWKS_BYTES {
                    anyhow::bail!("JWKS {url} is larger than {MAX_JWKS_BYTES} bytes");
                }
                String::from_utf8(bytes.to_vec()).with_context(|| format!("JWKS {url} is not UTF-8"))?
            }
            (JwksSource::Url(_), None) => unreachable!("URL issuers always have a client"),
        };
        parse_jwks(&text)
    }

    /// Re-reads the JWKS unless that was tried less than [`MIN_REFRESH`] ago. Returns whether it did.
    async fn refresh(&self) -> bool {
        let mut last = self.refresh.lock().await;
        if last.is_some_and(|t| t.elapsed() < MIN_REFRESH) {
            return false;
        }
        *last = Some(Instant::now());
        match self.fetch().await {
            Ok(keys) => {
                self.store(keys);
                true
            }
            Err(e) => {
                tracing::warn!(issuer = %self.config.issuer, "JWKS refresh failed, keeping the previous keys: {e:#}");
                false
            }
        }
    }

    async fn key_for(&self, kid: Option<&str>, alg: Algorithm) -> Result<DecodingKey, AuthError> {
        let keys = self.current();
        let stale = matches!(self.config.jwks, JwksSource::Url(_)) && keys.fetched.is_none_or(|t| t.elapsed() > MAX_AGE);
        if !stale && let Some(key) = find_key(&keys.keys, kid, alg) {
            return Ok(key);
        }
        // Stale keys are still used when the re-fetch fails (or was tried less than MIN_REFRESH ago).
        let refreshed = self.refresh().await;
        if (refreshed || stale)
            && let Some(key) = find_key(&self.current().keys, kid, alg)
        {
            return Ok(key);
        }
        Err(AuthError::Invalid(match kid {
            Some(kid) => format!("JWT key id {kid:?} is not in the JWKS of {}", self.config.issuer),
            None => format!("JWT has no kid and no {alg:?} key of {} fits", self.config.issuer),
        }))
    }
}

fn find_key(keys: &[Key], kid: Option<&str>, alg: Algorithm) -> Option<DecodingKey> {
    let fits = |k: &&Key| k.alg.is_none_or(|a| a == alg) && k.key.family() == alg.family();
    match kid {
        Some(kid) => keys.iter().filter(|k| k.kid.as_deref() == Some(kid)).find(fits),
        // Without a kid, only an unambiguous key is used.
        None => {
            let mut fitting = keys.iter().filter(fits);
            let first = fitting.next();
            if fitting.next().is_some() { None } else { first }
        }
    }
    .map(|k| k.key.clone())
}

/// Parses a JWKS, keeping the signature keys this gateway can use and skipping (with a log line) the rest.
fn parse_jwks(text: &str) -> anyhow::Result<Vec<Key>> {
    #[derive(Deserialize)]
    struct Set {
        keys: Vec<serde_json::Value>,
    }
    let set: Set = serde_json::from_str(text).context("not a JWKS (`{\"keys\": [...]}`)")?;
    let mut keys = Vec::new();
    for (i, value) in set.keys.into_iter().enumerate() {
        let jwk: Jwk = match serde_json::from_value(value) {
            Ok(jwk) => jwk,
            Err(e) => {
                tracing::debug!("JWKS key {i} skipped: {e}");
                continue;
            }
        };
        if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
            continue;
        }
        let alg = match jwk.common.key_algorithm {
            Some(a) => match a.to_string().parse::<Algorithm>() {
                Ok(a) if ALGORITHMS.contains(&a) => Some(a),
                _ => continue,
            },
            None => None,
        };
        match DecodingKey::from_jwk(&jwk) {
            Ok(key) if key.family() != jsonwebtoken::AlgorithmFamily::Hmac => {
                keys.push(Key { kid: jwk.common.key_id.clone(), alg, key })
            }
            Ok(_) => continue,
            Err(e) => tracing::debug!("JWKS key {i} skipped: {e}"),
        }
    }
    Ok(keys)
}

#[derive(Deserialize)]
struct Peek {
    iss: Option<String>,
}

pub(super) async fn authenticate(issuers: &[Issuer], token: &str) -> Result<Principal, AuthError> {
    let invalid = |reason: &str| AuthError::Invalid(reason.to_owned());
    let header = jsonwebtoken::decode_header(token).map_err(|_| invalid("malformed JWT header"))?;
    if !ALGORITHMS.contains(&header.alg) {
        return Err(AuthError::Invalid(format!("JWT algorithm {:?} is not accepted", header.alg)));
    }
    let peek: Peek = jsonwebtoken::dangerous::insecure_decode_claims(token).map_err(|_| invalid("malformed JWT claims"))?;
    let iss = peek.iss.ok_or_else(|| invalid("JWT has no iss claim"))?;
    let issuer = issuers
        .iter()
        .find(|i| i.config.issuer == iss)
        .ok_or_else(|| AuthError::Invalid(format!("JWT issuer {iss:?} is not trusted")))?;
    let key = issuer.key_for(header.kid.as_deref(), header.alg).await?;

    let mut validation = Validation::new(header.alg);
    validation.set_issuer(&[&issuer.config.issuer]);
    validation.set_audience(&[&issuer.config.audience]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    validation.validate_nbf = true;
    validation.leeway = LEEWAY_SECONDS;
    let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(token, &key, &validation)
        .map_err(|e| AuthError::Invalid(reason(e.kind())))?;
    let claims = data.claims;
    let subject = match claims.get("sub") {
        Some(serde_json::Value::String(s)) if !s.is_empty() => s.clone(),
        _ => return Err(invalid("JWT sub is not a non-empty string")),
    };
    let groups = groups_at(&claims, &issuer.config.groups_claim);
    Ok(Principal { credential_id: format!("jwt:{}#{subject}", issuer.config.issuer), subject, groups })
}

fn reason(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::ExpiredSignature => "JWT expired".into(),
        ErrorKind::ImmatureSignature => "JWT not valid yet (nbf)".into(),
        ErrorKind::InvalidAudience => "JWT audience is not this gateway".into(),
        ErrorKind::InvalidIssuer => "JWT issuer mismatch".into(),
        ErrorKind::InvalidSignature => "JWT signature does not verify".into(),
        ErrorKind::InvalidAlgorithm => "JWT algorithm does not fit the key".into(),
        ErrorKind::MissingRequiredClaim(c) => format!("JWT lacks the {c} claim"),
        ErrorKind::InvalidClaimFormat(c) => format!("JWT claim {c} has the wrong type"),
        other => format!("JWT rejected ({other:?})"),
    }
}

/// Groups from a claim (dotted path for nested objects): an array of strings, or one string.
fn groups_at(claims: &serde_json::Map<String, serde_json::Value>, path: &str) -> Vec<String> {
    let mut parts = path.split('.');
    let mut value = parts.next().and_then(|first| claims.get(first));
    for part in parts {
        value = value.and_then(|v| v.get(part));
    }
    match value {
        Some(serde_json::Value::Array(items)) => items.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect(),
        Some(serde_json::Value::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    }
}

#[cfg(test)]
#[path = "jwt_tests.rs"]
mod tests;
