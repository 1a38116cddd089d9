//! The scoped Secret of one McpTool: only the keys its credentials reference, each copied under its own
//! key name (the gateway's pod builder mounts `toolwarden-tool-<name>` and reads exactly those keys).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use toolwarden_core::resources::McpTool;

use crate::objects::{tool_object_labels, tool_object_name, tool_owner};

/// Annotation on the scoped Secret listing where each key came from (`secret/key`, comma-separated).
pub const SOURCES_ANNOTATION: &str = "toolwarden.dev/sources";

/// Why the credentials of a tool cannot be provided. Names Secrets and keys, never values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CredentialProblem {
    SecretNotFound { index: usize, secret: String },
    KeyNotFound { index: usize, secret: String, key: String },
    /// Two credentials from different Secrets use the same key: both cannot be copied under it.
    KeyCollision { first: usize, second: usize, key: String, first_secret: String, second_secret: String },
}

impl CredentialProblem {
    /// The `CredentialsReady` condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            CredentialProblem::SecretNotFound { .. } => "SecretNotFound",
            CredentialProblem::KeyNotFound { .. } => "KeyNotFound",
            CredentialProblem::KeyCollision { .. } => "KeyCollision",
        }
    }
}

impl fmt::Display for CredentialProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CredentialProblem::SecretNotFound { index, secret } => {
                write!(f, "credentials[{index}]: Secret {secret} does not exist in this namespace")
            }
            CredentialProblem::KeyNotFound { index, secret, key } => {
                write!(f, "credentials[{index}]: Secret {secret} has no key {key}")
            }
            CredentialProblem::KeyCollision { first, second, key, first_secret, second_secret } => write!(
                f,
                "credentials[{first}] (Secret {first_secret}) and credentials[{second}] (Secret {second_secret}) both use key \
                 {key}; the scoped Secret holds each key once, so rename the key in one of the Secrets"
            ),
        }
    }
}

/// The distinct Secrets a tool's credentials reference, in order.
pub fn referenced_secrets(tool: &McpTool) -> Vec<String> {
    let mut seen = BTreeSet::new();
    tool.spec.credentials.iter().map(|c| c.secret_ref.name.clone()).filter(|n| seen.insert(n.clone())).collect()
}

/// Key collisions between credentials of different Secrets (a pure check of the spec).
pub fn key_collisions(tool: &McpTool) -> Vec<CredentialProblem> {
    let mut first_use: BTreeMap<&str, (usize, &str)> = BTreeMap::new();
    let mut problems = Vec::new();
    for (i, c) in tool.spec.credentials.iter().enumerate() {
        let (key, secret) = (c.secret_ref.key.as_str(), c.secret_ref.name.as_str());
        match first_use.get(key) {
            Some((first, first_secret)) if *first_secret != secret => problems.push(CredentialProblem::KeyCollision {
                first: *first,
                second: i,
                key: key.to_owned(),
                first_secret: (*first_secret).to_owned(),
                second_secret: secret.to_owned(),
            }),
            Some(_) => {}
            None => {
                first_use.insert(key, (i, secret));
            }
        }
    }
    problems
}

/// The desired scoped Secret: `Ok(None)` when the tool uses no credentials. `sources` maps each
/// referenced Secret name to its data (`None`: the Secret does not exist).
pub fn build_scoped_secret(
    tool: &McpTool,
    sources: &BTreeMap<String, Option<BTreeMap<String, ByteString>>>,
) -> Result<Option<Secret>, Vec<CredentialProblem>> {
    if tool.spec.credentials.is_empty() {
        return Ok(None);
    }
    let mut problems = key_collisions(tool);
    let mut data = BTreeMap::new();
    let mut origins = Vec::new();
    for (index, c) in tool.spec.credentials.iter().enumerate() {
        let (secret, key) = (&c.secret_ref.name, &c.secret_ref.key);
        match sources.get(secret) {
            None | Some(None) => {
                let problem = CredentialProblem::SecretNotFound { index, secret: secret.clone() };
                if !problems.contains(&problem) {
                    problems.push(problem);
                }
            }
            Some(Some(source)) => match source.get(key) {
                Some(value) => {
                    data.insert(key.clone(), value.clone());
                    origins.push(format!("{secret}/{key}"));
                }
                None => problems.push(CredentialProblem::KeyNotFound { index, secret: secret.clone(), key: key.clone() }),
            },
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    origins.dedup();
    let resource = tool.name_any();
    Ok(Some(Secret {
        metadata: ObjectMeta {
            name: Some(tool_object_name(&resource)),
            namespace: tool.namespace(),
            labels: Some(tool_object_labels(&resource, "credentials")),
            annotations: Some(BTreeMap::from([(SOURCES_ANNOTATION.to_owned(), origins.join(","))])),
            owner_references: tool_owner(tool).map(|o| vec![o]),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(data),
        ..Default::default()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tool(credentials: serde_json::Value) -> McpTool {
        serde_json::from_value(json!({
            "apiVersion": "toolwarden.dev/v1alpha1", "kind": "McpTool",
            "metadata": {"name": "create-pull-request", "namespace": "dev", "uid": "u1"},
            "spec": {
                "description": "Opens a pull request.", "effect": "write",
                "inputSchema": {"type": "object"},
                "runtime": {"http": {"url": "https://api.github.com/repos"}},
                "credentials": credentials
            }
        }))
        .unwrap()
    }

    fn source(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, ByteString>> {
        Some(pairs.iter().map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec()))).collect())
    }

    #[test]
    fn copies_only_the_referenced_keys() {
        let t = tool(json!([{"secretRef": {"name": "gh", "key": "token"}, "env": "GH_TOKEN"}]));
        let sources = BTreeMap::from([("gh".to_owned(), source(&[("token", "s3cret"), ("admin-token", "root")]))]);
        let secret = build_scoped_secret(&t, &sources).unwrap().unwrap();
        let data = secret.data.unwrap();
        assert_eq!(data.keys().collect::<Vec<_>>(), vec!["token"]);
        assert_eq!(data["token"].0, b"s3cret");
        assert_eq!(secret.metadata.name.as_deref(), Some("toolwarden-tool-create-pull-request"));
        assert_eq!(secret.metadata.annotations.unwrap()[SOURCES_ANNOTATION], "gh/token");
    }

    #[test]
    fn keys_from_two_secrets_are_merged() {
        let t = tool(json!([
            {"secretRef": {"name": "gh", "key": "token"}, "env": "GH_TOKEN"},
            {"secretRef": {"name": "signing", "key": "key.pem"}, "file": "key.pem"}
        ]));
        let sources = BTreeMap::from([
            ("gh".to_owned(), source(&[("token", "a")])),
            ("signing".to_owned(), source(&[("key.pem", "b"), ("other", "c")])),
        ]);
        let data = build_scoped_secret(&t, &sources).unwrap().unwrap().data.unwrap();
        assert_eq!(data.keys().collect::<Vec<_>>(), vec!["key.pem", "token"]);
    }

    #[test]
    fn no_credentials_means_no_secret() {
        assert_eq!(build_scoped_secret(&tool(json!([])), &BTreeMap::new()).unwrap(), None);
    }

    #[test]
    fn missing_secret_and_missing_key_are_reported_with_names_and_no_values() {
        let t = tool(json!([
            {"secretRef": {"name": "gh", "key": "token"}, "env": "GH_TOKEN"},
            {"secretRef": {"name": "absent", "key": "x"}, "env": "X"}
        ]));
        let sources = BTreeMap::from([("gh".to_owned(), source(&[("other", "s3cret")])), ("absent".to_owned(), None)]);
        let problems = build_scoped_secret(&t, &sources).unwrap_err();
        assert_eq!(problems[0].to_string(), "credentials[0]: Secret gh has no key token");
        assert_eq!(problems[0].reason(), "KeyNotFound");
        assert_eq!(problems[1].to_string(), "credentials[1]: Secret absent does not exist in this namespace");
        assert_eq!(problems[1].reason(), "SecretNotFound");
        assert!(!problems.iter().any(|p| p.to_string().contains("s3cret")));
    }

    #[test]
    fn same_key_from_two_secrets_is_refused_as_a_collision() {
        let t = tool(json!([
            {"secretRef": {"name": "gh", "key": "token"}, "env": "GH_TOKEN"},
            {"secretRef": {"name": "gitlab", "key": "token"}, "env": "GL_TOKEN"}
        ]));
        let sources = BTreeMap::from([("gh".to_owned(), source(&[("token", "a")])), ("gitlab".to_owned(), source(&[("token", "b")]))]);
        let problems = build_scoped_secret(&t, &sources).unwrap_err();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].reason(), "KeyCollision");
        assert!(problems[0].to_string().contains("credentials[0] (Secret gh) and credentials[1] (Secret gitlab) both use key token"));
    }

    #[test]
    fn same_key_of_the_same_secret_twice_is_fine() {
        let t = tool(json!([
            {"secretRef": {"name": "gh", "key": "token"}, "env": "GH_TOKEN"},
            {"secretRef": {"name": "gh", "key": "token"}, "file": "token"}
        ]));
        let sources = BTreeMap::from([("gh".to_owned(), source(&[("token", "a")]))]);
        assert_eq!(build_scoped_secret(&t, &sources).unwrap().unwrap().data.unwrap().len(), 1);
        assert_eq!(referenced_secrets(&t), vec!["gh"]);
    }

    #[test]
    fn secret_is_owned_by_the_tool_and_labelled() {
        let t = tool(json!([{"secretRef": {"name": "gh", "key": "token"}, "env": "GH_TOKEN"}]));
        let sources = BTreeMap::from([("gh".to_owned(), source(&[("token", "a")]))]);
        let secret = build_scoped_secret(&t, &sources).unwrap().unwrap();
        let owner = &secret.metadata.owner_references.unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str(), owner.controller), ("McpTool", "create-pull-request", "u1", Some(true)));
        let labels = secret.metadata.labels.unwrap();
        assert_eq!(labels["app.kubernetes.io/managed-by"], "toolwarden-operator");
        assert_eq!(labels["toolwarden.dev/tool"], "create-pull-request");
    }
}
