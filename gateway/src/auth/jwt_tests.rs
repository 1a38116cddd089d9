//! JWT paths with the test-only keys in `gateway/tests/fixtures/auth`.

use std::path::PathBuf;

use http::HeaderMap;
use http::header::AUTHORIZATION;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;

use super::*;
use crate::auth::{AuthConfig, Authenticator};

const ISS: &str = "https://idp.example.com/realms/agents";
const AUD: &str = "https://gateway.example.com/mcp/default";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/auth").join(name)
}

fn rsa_key() -> EncodingKey {
    EncodingKey::from_rsa_pem(&std::fs::read(fixture("rsa-private.pem")).unwrap()).unwrap()
}

fn other_rsa_key() -> EncodingKey {
    EncodingKey::from_rsa_pem(&std::fs::read(fixture("other-rsa-private.pem")).unwrap()).unwrap()
}

fn now() -> i64 {
    jsonwebtoken::get_current_timestamp() as i64
}

fn claims() -> serde_json::Value {
    json!({"iss": ISS, "aud": AUD, "sub": "alice", "exp": now() + 300, "iat": now(), "groups": ["team-leads", "developers"]})
}

fn sign(alg: Algorithm, kid: Option<&str>, claims: &serde_json::Value, key: &EncodingKey) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn rs256(claims: &serde_json::Value) -> String {
    sign(Algorithm::RS256, Some("rsa-1"), claims, &rsa_key())
}

fn issuer_config(jwks: JwksSource) -> JwtIssuerConfig {
    JwtIssuerConfig { issuer: ISS.into(), audience: AUD.into(), jwks, groups_claim: "groups".into() }
}

async fn issuers() -> Vec<Issuer> {
    vec![Issuer::new(issuer_config(JwksSource::File(fixture("jwks.json")))).await.unwrap()]
}

async fn check(token: &str) -> Result<Principal, AuthError> {
    authenticate(&issuers().await, token).await
}

fn assert_invalid(result: Result<Principal, AuthError>, expected: &str) {
    match result {
        Err(AuthError::Invalid(reason)) => assert!(reason.contains(expected), "expected {expected:?} in {reason:?}"),
        other => panic!("expected Invalid({expected:?}), got {other:?}"),
    }
}

#[tokio::test]
async fn good_rs256_token_gives_subject_groups_and_credential_id() {
    let p = check(&rs256(&claims())).await.unwrap();
    assert_eq!(p.subject, "alice");
    assert_eq!(p.groups, vec!["team-leads", "developers"]);
    assert_eq!(p.credential_id, format!("jwt:{ISS}#alice"));
}

#[tokio::test]
async fn good_es256_token_is_accepted() {
    let key = EncodingKey::from_ec_pem(&std::fs::read(fixture("ec-private.pem")).unwrap()).unwrap();
    let p = check(&sign(Algorithm::ES256, Some("ec-1"), &claims(), &key)).await.unwrap();
    assert_eq!(p.subject, "alice");
}

#[tokio::test]
async fn signature_by_another_key_is_refused() {
    assert_invalid(check(&sign(Algorithm::RS256, Some("rsa-1"), &claims(), &other_rsa_key())).await, "signature");
}

#[tokio::test]
async fn wrong_audience_is_refused() {
    let mut c = claims();
    c["aud"] = json!("https://other-service.example.com");
    assert_invalid(check(&rs256(&c)).await, "audience");
}

#[tokio::test]
async fn untrusted_issuer_is_refused() {
    let mut c = claims();
    c["iss"] = json!("https://evil.example.com");
    assert_invalid(check(&rs256(&c)).await, "not trusted");
}

#[tokio::test]
async fn expired_and_not_yet_valid_tokens_are_refused() {
    let mut c = claims();
    c["exp"] = json!(now() - 120);
    assert_invalid(check(&rs256(&c)).await, "expired");
    let mut c = claims();
    c["nbf"] = json!(now() + 600);
    assert_invalid(check(&rs256(&c)).await, "nbf");
}

#[tokio::test]
async fn unknown_kid_is_refused() {
    assert_invalid(check(&sign(Algorithm::RS256, Some("rsa-9"), &claims(), &rsa_key())).await, "key id \"rsa-9\"");
}

#[tokio::test]
async fn missing_sub_or_exp_is_refused() {
    let mut c = claims();
    c.as_object_mut().unwrap().remove("sub");
    assert_invalid(check(&rs256(&c)).await, "sub");
    let mut c = claims();
    c.as_object_mut().unwrap().remove("exp");
    assert_invalid(check(&rs256(&c)).await, "exp");
}

#[tokio::test]
async fn hmac_and_none_algorithms_are_refused() {
    // An attacker signing with HS256 and the public key's bytes as the secret.
    let hs = sign(Algorithm::HS256, Some("rsa-1"), &claims(), &EncodingKey::from_secret(&std::fs::read(fixture("rsa-public.pem")).unwrap()));
    assert_invalid(check(&hs).await, "not accepted");
    let b64 = |v: serde_json::Value| {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let none = format!("{}.{}.", b64(json!({"alg": "none", "typ": "JWT"})), b64(claims()));
    assert_invalid(check(&none).await, "malformed");
}

#[tokio::test]
async fn a_rotated_key_is_found_after_the_jwks_file_changes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::copy(fixture("jwks.json"), &path).unwrap();
    let issuers = vec![Issuer::new(issuer_config(JwksSource::File(path.clone()))).await.unwrap()];
    let token = sign(Algorithm::RS256, Some("rsa-2"), &claims(), &other_rsa_key());
    assert_invalid(authenticate(&issuers, &token).await, "rsa-2");

    let mut set: JwkSet = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut jwk = Jwk::from_encoding_key(&other_rsa_key(), Algorithm::RS256).unwrap();
    jwk.common.key_id = Some("rsa-2".into());
    set.keys.push(jwk);
    std::fs::write(&path, serde_json::to_string(&set).unwrap()).unwrap();
    // Unknown kids re-read at most every MIN_REFRESH: a flood of made-up kids costs one read.
    assert_invalid(authenticate(&issuers, &token).await, "rsa-2");
    *issuers[0].refresh.lock().await = None;
    assert_eq!(authenticate(&issuers, &token).await.unwrap().subject, "alice");
}

#[tokio::test]
async fn jwks_is_fetched_from_a_url() {
    let jwks = std::fs::read_to_string(fixture("jwks.json")).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks", listener.local_addr().unwrap());
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        for _ in 0..4 {
            let Ok((mut stream, _)) = listener.accept().await else { return };
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf).await;
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{jwks}",
                jwks.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        }
    });
    let issuers = vec![Issuer::new(issuer_config(JwksSource::Url(url))).await.unwrap()];
    assert_eq!(authenticate(&issuers, &rs256(&claims())).await.unwrap().subject, "alice");
}

#[tokio::test]
async fn a_missing_jwks_file_is_refused_at_start_with_its_path() {
    let err = Issuer::new(issuer_config(JwksSource::File("/nonexistent/jwks.json".into()))).await.err().unwrap();
    assert!(format!("{err:#}").contains("/nonexistent/jwks.json"), "{err:#}");
}

#[tokio::test]
async fn nested_groups_claims_are_read_by_dotted_path() {
    let mut config = issuer_config(JwksSource::File(fixture("jwks.json")));
    config.groups_claim = "realm_access.roles".into();
    let issuers = vec![Issuer::new(config).await.unwrap()];
    let mut c = claims();
    c["realm_access"] = json!({"roles": ["approvers"]});
    assert_eq!(authenticate(&issuers, &rs256(&c)).await.unwrap().groups, vec!["approvers"]);
}

#[tokio::test]
async fn authenticator_routes_jwts_and_advertises_the_issuer() {
    let auth = Authenticator::new(AuthConfig { jwt: vec![issuer_config(JwksSource::File(fixture("jwks.json")))], ..Default::default() })
        .await
        .unwrap();
    let mut headers = HeaderMap::new();
    headers.insert(AUTHORIZATION, format!("Bearer {}", rs256(&claims())).parse().unwrap());
    assert_eq!(auth.authenticate(&headers).await.unwrap().subject, "alice");
    assert_eq!(auth.protected_resource_metadata(AUD)["authorization_servers"], json!([ISS]));
}
