//! Kubernetes service-account callers, authenticated with the TokenReview API (`--token-review-audience`).
//!
//! The agent's pod mounts a projected service-account token whose audience is this gateway's, and sends
//! it as its bearer token. The gateway asks the API server whether the token is valid for that audience
//! (`authentication.k8s.io/v1` TokenReview, the RBAC rule `tokenreviews: create`), and the subject is the
//! reviewed user: `system:serviceaccount:<namespace>:<name>` with its groups, which policies match with
//! `subjects.serviceAccounts: [<namespace>/<name>]`.
//!
//! Answers are cached by the token's SHA-256 (never the token): valid ones for [`VALID_FOR`], refusals
//! for [`REFUSED_FOR`], so one agent does not cost an API request per call. API errors are not cached.
//! Concurrent requests with the same new token wait for one review instead of each sending their own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kube::api::{Api, PostParams};
use sha2::{Digest, Sha256};

use super::{AuthError, Principal};

/// How long a reviewed token is trusted without asking again (a deleted pod's token stops working
/// within this time).
pub const VALID_FOR: Duration = Duration::from_secs(60);
/// How long a refused token is refused without asking again.
pub const REFUSED_FOR: Duration = Duration::from_secs(10);
/// Cached answers at most; past it, expired ones are dropped, then all.
const MAX_CACHED: usize = 10_000;

/// A review's answer (the principal, or why the token is refused) and until when it holds.
type Cached = (Instant, Result<Principal, String>);

pub struct TokenReviewer {
    api: Api<TokenReview>,
    audience: String,
    /// By the token's SHA-256.
    cache: Mutex<HashMap<[u8; 32], Cached>>,
    /// Reviews under way, by the token's SHA-256: later requests with that token wait for its answer.
    reviewing: Mutex<HashMap<[u8; 32], Arc<tokio::sync::Mutex<()>>>>,
}

impl TokenReviewer {
    pub fn new(client: kube::Client, audience: String) -> TokenReviewer {
        TokenReviewer { api: Api::all(client), audience, cache: Mutex::new(HashMap::new()), reviewing: Mutex::new(HashMap::new()) }
    }

    /// The caller behind `token`, as the API server sees it for this gateway's audience.
    pub async fn review(&self, token: &str) -> Result<Principal, AuthError> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(cached) = self.cached(&key) {
            return cached.map_err(AuthError::Invalid);
        }
        let turn = self.reviewing.lock().unwrap_or_else(|e| e.into_inner()).entry(key).or_default().clone();
        let Ok(_reviewer) = turn.try_lock() else {
            // Another request is reviewing this token: its answer is this one's too. When it failed (an
            // API error, or its client left), this one fails as well instead of queueing another review.
            let _waited = turn.lock().await;
            let answer = self.cached(&key).unwrap_or_else(|| Err("TokenReview failed for a concurrent request with this token; retry".into()));
            return answer.map_err(AuthError::Invalid);
        };
        let _under_way = UnderWay { reviewing: &self.reviewing, key };
        self.ask(token, key).await
    }

    /// One TokenReview; its answer is cached, an API error is not.
    async fn ask(&self, token: &str, key: [u8; 32]) -> Result<Principal, AuthError> {
        let review = TokenReview {
            spec: TokenReviewSpec { token: Some(token.to_owned()), audiences: Some(vec![self.audience.clone()]) },
            ..TokenReview::default()
        };
        let answer = match self.api.create(&PostParams::default(), &review).await {
            Ok(reviewed) => principal(reviewed.status.as_ref(), &self.audience),
            // Not cached: the next request asks again. The error names no token.
            Err(e) => return Err(AuthError::Invalid(format!("TokenReview failed: {e}"))),
        };
        self.remember(key, answer.clone());
        answer.map_err(AuthError::Invalid)
    }

    fn cached(&self, key: &[u8; 32]) -> Option<Result<Principal, String>> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let (until, answer) = cache.get(key)?;
        (Instant::now() < *until).then(|| answer.clone())
    }

    fn remember(&self, key: [u8; 32], answer: Result<Principal, String>) {
        let until = Instant::now() + if answer.is_ok() { VALID_FOR } else { REFUSED_FOR };
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= MAX_CACHED {
            let now = Instant::now();
            cache.retain(|_, (until, _)| *until > now);
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
        }
        cache.insert(key, (until, answer));
    }
}

/// Takes a token's entry out of the reviews under way when its review ends, however it ends.
struct UnderWay<'a> {
    reviewing: &'a Mutex<HashMap<[u8; 32], Arc<tokio::sync::Mutex<()>>>>,
    key: [u8; 32],
}

impl Drop for UnderWay<'_> {
    fn drop(&mut self) {
        self.reviewing.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.key);
    }
}

/// The principal of a review's status, or why it is refused. The API server must confirm `audience`:
/// one that ignores audiences would accept tokens minted for anything else.
pub fn principal(status: Option<&TokenReviewStatus>, audience: &str) -> Result<Principal, String> {
    let Some(status) = status else { return Err("the TokenReview has no status".into()) };
    if status.authenticated != Some(true) {
        return Err(format!("the API server did not authenticate the token: {}", status.error.as_deref().unwrap_or("no reason given")));
    }
    if !status.audiences.as_deref().unwrap_or_default().iter().any(|a| a == audience) {
        return Err(format!("the API server did not confirm the audience {audience}"));
    }
    let user = status.user.as_ref().ok_or("the TokenReview names no user")?;
    let subject = user.username.clone().filter(|u| !u.is_empty()).ok_or("the TokenReview names no user")?;
    // A pod's bound token names the pod: its own stateless sessions, apart from its siblings'.
    let pod = user.extra.as_ref().and_then(|e| e.get("authentication.kubernetes.io/pod-uid")).and_then(|v| v.first());
    let credential_id = match pod {
        Some(pod) => format!("k8s:{subject}#{pod}"),
        None => format!("k8s:{subject}"),
    };
    Ok(Principal { subject, groups: user.groups.clone().unwrap_or_default(), credential_id })
}

/// Test support: a reviewer in front of a scripted API server.
#[cfg(test)]
pub(crate) mod scripted {
    use super::TokenReviewer;
    use http::{Request, Response};
    use kube::client::Body;
    use serde_json::{Value, json};

    /// A reviewer in front of a scripted API server that answers every TokenReview with `answer` and
    /// counts the requests.
    pub(crate) fn reviewer(answer: Result<Value, u16>) -> (TokenReviewer, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = seen.clone();
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                assert_eq!(request.method(), "POST");
                assert!(request.uri().path().ends_with("/apis/authentication.k8s.io/v1/tokenreviews"), "{}", request.uri());
                let body: Value = serde_json::from_slice(&request.into_body().collect_bytes().await.unwrap()).unwrap();
                assert_eq!(body["spec"]["audiences"], json!(["toolwarden"]));
                let (code, text) = match &answer {
                    Ok(status) => (200, json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": body["spec"], "status": status}).to_string()),
                    Err(code) => (*code, json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": "boom", "code": code}).to_string()),
                };
                send.send_response(Response::builder().status(code).body(Body::from(text.into_bytes())).unwrap());
            }
        });
        (TokenReviewer::new(kube::Client::new(service, "default"), "toolwarden".into()), seen)
    }
}

#[cfg(test)]
mod tests {
    use super::scripted::reviewer;
    use super::*;
    use k8s_openapi::api::authentication::v1::UserInfo;

    fn status(authenticated: bool, audiences: &[&str]) -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated: Some(authenticated),
            audiences: Some(audiences.iter().map(|a| a.to_string()).collect()),
            user: Some(UserInfo {
                username: Some("system:serviceaccount:team-a:agent".into()),
                groups: Some(vec!["system:serviceaccounts".into(), "system:serviceaccounts:team-a".into()]),
                extra: Some([("authentication.kubernetes.io/pod-uid".to_owned(), vec!["p-1".to_owned()])].into()),
                uid: Some("u-1".into()),
            }),
            error: None,
        }
    }

    #[test]
    fn service_accounts_become_subjects_with_their_groups() {
        let p = principal(Some(&status(true, &["toolwarden"])), "toolwarden").unwrap();
        assert_eq!(p.subject, "system:serviceaccount:team-a:agent");
        assert_eq!(p.groups, ["system:serviceaccounts", "system:serviceaccounts:team-a"]);
        assert_eq!(p.credential_id, "k8s:system:serviceaccount:team-a:agent#p-1");
    }

    #[test]
    fn unauthenticated_unaudienced_or_anonymous_reviews_are_refused() {
        let refused = principal(Some(&TokenReviewStatus { error: Some("token expired".into()), ..status(false, &[]) }), "toolwarden").unwrap_err();
        assert!(refused.contains("token expired"), "{refused}");
        let other = principal(Some(&status(true, &["https://kubernetes.default.svc"])), "toolwarden").unwrap_err();
        assert!(other.contains("audience"), "{other}");
        let mut nobody = status(true, &["toolwarden"]);
        nobody.user = Some(UserInfo::default());
        assert!(principal(Some(&nobody), "toolwarden").is_err());
        assert!(principal(None, "toolwarden").is_err());
    }

    #[tokio::test]
    async fn answers_are_cached_by_token_and_api_errors_are_not() {
        let valid = serde_json::to_value(status(true, &["toolwarden"])).unwrap();
        let (ok, asked) = reviewer(Ok(valid));
        assert_eq!(ok.review("token-a").await.unwrap().subject, "system:serviceaccount:team-a:agent");
        ok.review("token-a").await.unwrap();
        assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 1, "the second request used the cache");
        ok.review("token-b").await.unwrap();
        assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 2, "another token is reviewed");

        let (refusing, asked) = reviewer(Ok(serde_json::to_value(status(false, &[])).unwrap()));
        assert!(refusing.review("bad").await.is_err());
        assert!(refusing.review("bad").await.is_err());
        assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 1, "refusals are cached too");

        let (failing, asked) = reviewer(Err(500));
        let AuthError::Invalid(reason) = failing.review("secret-token-value").await.unwrap_err() else { panic!("invalid") };
        assert!(reason.contains("TokenReview failed") && !reason.contains("secret-token-value"), "{reason}");
        assert!(failing.review("secret-token-value").await.is_err());
        assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 2, "API errors are asked again");
    }

    #[tokio::test]
    async fn concurrent_requests_with_one_new_token_share_one_review() {
        let valid = serde_json::to_value(status(true, &["toolwarden"])).unwrap();
        let (reviewer, asked) = reviewer(Ok(valid));
        let answers = futures::future::join_all((0..8).map(|_| reviewer.review("token-a"))).await;
        assert!(answers.iter().all(|a| a.as_ref().is_ok_and(|p| p.subject == "system:serviceaccount:team-a:agent")));
        assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 1, "one review for eight requests");
        assert!(reviewer.reviewing.lock().unwrap().is_empty(), "nothing left under way");

        let (failing, asked) = super::scripted::reviewer(Err(500));
        let answers = futures::future::join_all((0..4).map(|_| failing.review("token-c"))).await;
        assert!(answers.iter().all(Result::is_err), "a failed review fails the requests that waited for it");
        assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 1, "no queue of reviews behind a failing API");
        assert!(failing.review("token-c").await.is_err());
        assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 2, "the next request asks again");
    }
}
