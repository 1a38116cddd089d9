//! Confirm tokens: single-use, short-lived, HMAC-bound to session + tool + hash of the canonical
//! arguments. Pure: the caller passes the key, the clock and the nonce, and keeps the [`UsedTokens`].

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

const PREFIX: &str = "twc1";

/// What a token is bound to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenBinding<'a> {
    pub session: &'a str,
    pub tool: &'a str,
    /// [`crate::canonical::arguments_hash`] of the arguments.
    pub arguments_hash: &'a str,
}

#[derive(Serialize, Deserialize)]
struct Payload {
    s: String,
    t: String,
    h: String,
    /// Expiry, milliseconds since the Unix epoch.
    e: u64,
    /// Nonce (hex): the token's identity for single use.
    n: String,
}

/// Why a token was refused; each message tells the agent what to do.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the confirm token is malformed: repeat the call without confirm_token to get a new one")]
    Malformed,
    #[error("the confirm token was not issued by this gateway (nor by another replica of it): repeat the call without confirm_token to get a new one")]
    BadSignature,
    #[error("the confirm token has expired: repeat the call without confirm_token to get a new one")]
    Expired,
    #[error("the confirm token belongs to another session")]
    OtherSession,
    #[error("the confirm token was issued for another tool")]
    OtherTool,
    #[error("the confirm token was issued for other arguments: confirm exactly the call that was previewed")]
    OtherArguments,
    #[error("the confirm token was already used: each confirmation runs one call")]
    Reused,
}

impl TokenError {
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::Malformed => "malformed",
            TokenError::BadSignature => "bad_signature",
            TokenError::Expired => "expired",
            TokenError::OtherSession => "other_session",
            TokenError::OtherTool => "other_tool",
            TokenError::OtherArguments => "other_arguments",
            TokenError::Reused => "reused",
        }
    }
}

fn mac(key: &[u8]) -> Hmac<Sha256> {
    Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length")
}

/// Issues a token valid until `now_ms + ttl_ms`.
pub fn issue_token(key: &[u8], binding: TokenBinding<'_>, now_ms: u64, ttl_ms: u64, nonce: [u8; 16]) -> String {
    let payload = Payload {
        s: binding.session.to_string(),
        t: binding.tool.to_string(),
        h: binding.arguments_hash.to_string(),
        e: now_ms.saturating_add(ttl_ms),
        n: crate::canonical::hex(&nonce),
    };
    let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&payload).expect("payload serialises"));
    let mut m = mac(key);
    m.update(body.as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(m.finalize().into_bytes());
    format!("{PREFIX}.{body}.{sig}")
}

/// A verified token: its nonce and expiry, to be consumed through [`UsedTokens`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedToken {
    pub nonce: String,
    pub expires_ms: u64,
}

/// Checks signature, expiry and binding. Does not consume the token: see [`UsedTokens::consume`].
pub fn verify_token(key: &[u8], token: &str, binding: TokenBinding<'_>, now_ms: u64) -> Result<VerifiedToken, TokenError> {
    let mut parts = token.split('.');
    let (Some(PREFIX), Some(body), Some(sig), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(TokenError::Malformed);
    };
    let sig = URL_SAFE_NO_PAD.decode(sig).map_err(|_| TokenError::Malformed)?;
    let mut m = mac(key);
    m.update(body.as_bytes());
    m.verify_slice(&sig).map_err(|_| TokenError::BadSignature)?;
    let payload: Payload = URL_SAFE_NO_PAD
        .decode(body)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(TokenError::Malformed)?;
    if now_ms >= payload.e {
        return Err(TokenError::Expired);
    }
    if payload.s != binding.session {
        return Err(TokenError::OtherSession);
    }
    if payload.t != binding.tool {
        return Err(TokenError::OtherTool);
    }
    if payload.h != binding.arguments_hash {
        return Err(TokenError::OtherArguments);
    }
    Ok(VerifiedToken { nonce: payload.n, expires_ms: payload.e })
}

/// Nonces of tokens already used, kept until they expire.
#[derive(Debug, Default)]
pub struct UsedTokens {
    used: HashMap<String, u64>,
}

impl UsedTokens {
    /// Marks the token used; refuses a second use.
    pub fn consume(&mut self, token: &VerifiedToken, now_ms: u64) -> Result<(), TokenError> {
        self.used.retain(|_, expires| *expires > now_ms);
        if self.used.contains_key(&token.nonce) {
            return Err(TokenError::Reused);
        }
        self.used.insert(token.nonce.clone(), token.expires_ms);
        Ok(())
    }

    /// Forgets a use that did not happen after all (its record could not be written, nothing ran): the
    /// token may be presented again.
    pub fn release(&mut self, nonce: &str) {
        self.used.remove(nonce);
    }

    /// Marks a nonce used elsewhere (another gateway replica, read from the session's record).
    pub fn load(&mut self, nonce: &str, expires_ms: u64, now_ms: u64) {
        if expires_ms > now_ms {
            self.used.insert(nonce.to_owned(), expires_ms);
        }
    }

    pub fn len(&self) -> usize {
        self.used.len()
    }

    pub fn is_empty(&self) -> bool {
        self.used.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canonical::arguments_hash;
    use serde_json::json;

    const KEY: &[u8] = b"test-key-test-key-test-key-32byt";

    fn binding<'a>(session: &'a str, tool: &'a str, hash: &'a str) -> TokenBinding<'a> {
        TokenBinding { session, tool, arguments_hash: hash }
    }

    #[test]
    fn token_binding_refuses_every_mismatch() {
        let hash = arguments_hash(&json!({"branch": "ai-blog/x", "repo": "acme/blog"}));
        let same_reordered = arguments_hash(&json!({"repo": "acme/blog", "branch": "ai-blog/x"}));
        let changed = arguments_hash(&json!({"repo": "acme/blog", "branch": "main"}));
        let token = issue_token(KEY, binding("s1", "delete_branch", &hash), 1_000, 60_000, [7; 16]);

        let ok = verify_token(KEY, &token, binding("s1", "delete_branch", &same_reordered), 2_000).unwrap();
        let cases = [
            (verify_token(KEY, &token, binding("s1", "delete_branch", &changed), 2_000), TokenError::OtherArguments),
            (verify_token(KEY, &token, binding("s2", "delete_branch", &hash), 2_000), TokenError::OtherSession),
            (verify_token(KEY, &token, binding("s1", "delete_repo", &hash), 2_000), TokenError::OtherTool),
            (verify_token(KEY, &token, binding("s1", "delete_branch", &hash), 61_000), TokenError::Expired),
            (verify_token(b"other-key", &token, binding("s1", "delete_branch", &hash), 2_000), TokenError::BadSignature),
            (verify_token(KEY, "garbage", binding("s1", "delete_branch", &hash), 2_000), TokenError::Malformed),
        ];
        for (result, expected) in cases {
            assert_eq!(result, Err(expected));
        }

        let mut used = UsedTokens::default();
        assert_eq!(used.consume(&ok, 2_000), Ok(()));
        assert_eq!(used.consume(&ok, 3_000), Err(TokenError::Reused));
    }

    #[test]
    fn tampered_payload_is_refused() {
        let hash = arguments_hash(&json!({}));
        let token = issue_token(KEY, binding("s1", "t", &hash), 0, 60_000, [1; 16]);
        let forged_body = URL_SAFE_NO_PAD.encode(
            serde_json::to_vec(&Payload { s: "s1".into(), t: "t".into(), h: hash.clone(), e: u64::MAX, n: "00".into() }).unwrap(),
        );
        let sig = token.rsplit('.').next().unwrap();
        let forged = format!("{PREFIX}.{forged_body}.{sig}");
        assert_eq!(verify_token(KEY, &forged, binding("s1", "t", &hash), 1), Err(TokenError::BadSignature));
    }

    #[test]
    fn a_nonce_used_elsewhere_is_refused_and_a_released_one_counts_again() {
        let hash = arguments_hash(&json!({}));
        let token = issue_token(KEY, binding("s1", "t", &hash), 0, 60_000, [3; 16]);
        let verified = verify_token(KEY, &token, binding("s1", "t", &hash), 1).unwrap();
        let mut used = UsedTokens::default();
        used.load(&verified.nonce, verified.expires_ms, 1);
        assert_eq!(used.consume(&verified, 2), Err(TokenError::Reused), "used on another replica");
        let mut fresh = UsedTokens::default();
        fresh.consume(&verified, 2).unwrap();
        fresh.release(&verified.nonce);
        assert_eq!(fresh.consume(&verified, 3), Ok(()), "a use that was not recorded did not count");
        fresh.load("old", 5, 10);
        assert_eq!(fresh.len(), 1, "an expired record is not loaded");
    }

    #[test]
    fn used_nonces_are_forgotten_after_expiry() {
        let mut used = UsedTokens::default();
        used.consume(&VerifiedToken { nonce: "a".into(), expires_ms: 10 }, 0).unwrap();
        used.consume(&VerifiedToken { nonce: "b".into(), expires_ms: 100 }, 50).unwrap();
        assert_eq!(used.len(), 1);
    }
}
