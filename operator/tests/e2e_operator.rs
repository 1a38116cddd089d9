//! End to end against a real cluster (runs only when KUBECONFIG is set): apply the CRDs and `examples/`
//! into a fresh namespace, run the operator in-process, and check what it builds and reports; flip
//! `disabled`, delete a tool, break a credential. The namespace is deleted at the end, pass or fail.
//!
//! The operator under test takes its Lease in the test namespace; run it where no other Toolwarden
//! operator reconciles the same namespace (a cluster without the chart, or with the chart's operator
//! scaled to zero).

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};
use toolwarden_core::config::{CONFIG_GENERATION_ANNOTATION, CONFIG_MAP_KEY, CONFIG_MAP_NAME, GatewayConfig};
use toolwarden_core::resources::{McpTool, ToolPolicy};
use toolwarden_operator::cli::run_until_shutdown;
use toolwarden_operator::context::Settings;
use toolwarden_operator::leader::LeaseConfig;
use toolwarden_operator::metrics::Metrics;

const MANAGER: &str = "toolwarden-e2e";
const DEADLINE: Duration = Duration::from_secs(90);

fn repo(path: &str) -> String {
    format!("{}/../{path}", env!("CARGO_MANIFEST_DIR"))
}

fn yaml_documents(path: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_saphyr::from_multiple::<Value>(&text).unwrap_or_else(|e| panic!("{path}: {e}")).into_iter().filter(|d| !d.is_null()).collect()
}

/// Polls `check` until it returns `Some`, or fails the test naming `what`.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(started.elapsed() < DEADLINE, "timed out after {DEADLINE:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn apply_crds(client: &Client) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for file in ["crds/mcptools.toolwarden.dev.yaml", "crds/toolpolicies.toolwarden.dev.yaml", "crds/mcpsessions.toolwarden.dev.yaml"] {
        for doc in yaml_documents(file) {
            let crd: CustomResourceDefinition = serde_json::from_value(doc).unwrap();
            let name = crd.name_any();
            api.patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&crd)).await.unwrap_or_else(|e| panic!("apply CRD {name}: {e}"));
            eventually(&format!("CRD {name} established"), || {
                let api = api.clone();
                let name = name.clone();
                async move {
                    let crd = api.get(&name).await.ok()?;
                    let conditions = crd.status?.conditions?;
                    conditions.iter().any(|c| c.type_ == "Established" && c.status == "True").then_some(())
                }
            })
            .await;
        }
    }
}

async fn apply_examples(client: &Client, ns: &str) {
    for file in ["examples/secrets.yaml", "examples/tools.yaml", "examples/policies.yaml"] {
        for mut doc in yaml_documents(file) {
            doc["metadata"]["namespace"] = json!(ns);
            let name = doc["metadata"]["name"].as_str().unwrap().to_owned();
            let params = PatchParams::apply(MANAGER).force();
            let result = match doc["kind"].as_str().unwrap() {
                "Secret" => Api::<Secret>::namespaced(client.clone(), ns).patch(&name, &params, &Patch::Apply(&doc)).await.map(|_| ()),
                "McpTool" => Api::<McpTool>::namespaced(client.clone(), ns).patch(&name, &params, &Patch::Apply(&doc)).await.map(|_| ()),
                "ToolPolicy" => Api::<ToolPolicy>::namespaced(client.clone(), ns).patch(&name, &params, &Patch::Apply(&doc)).await.map(|_| ()),
                other => panic!("{file}: unexpected kind {other}"),
            };
            result.unwrap_or_else(|e| panic!("{file}: apply {name}: {e}"));
        }
    }
}

fn condition(status: &Value, type_: &str) -> Option<(String, String)> {
    let c = status["conditions"].as_array()?.iter().find(|c| c["type"] == type_)?;
    Some((c["status"].as_str()?.to_owned(), c["reason"].as_str()?.to_owned()))
}

async fn config(client: &Client, ns: &str) -> Option<(u64, GatewayConfig)> {
    let cm = Api::<ConfigMap>::namespaced(client.clone(), ns).get_opt(CONFIG_MAP_NAME).await.ok()??;
    let generation = cm.annotations().get(CONFIG_GENERATION_ANNOTATION)?.parse().ok()?;
    let config = GatewayConfig::from_json(cm.data?.get(CONFIG_MAP_KEY)?).ok()?;
    Some((generation, config))
}

/// `kind/name` → resourceVersion of everything the operator writes or reports on in `ns`.
async fn versions(client: &Client, ns: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    versions_of::<NetworkPolicy>(client, ns, &mut out).await;
    versions_of::<Secret>(client, ns, &mut out).await;
    versions_of::<ConfigMap>(client, ns, &mut out).await;
    versions_of::<McpTool>(client, ns, &mut out).await;
    versions_of::<ToolPolicy>(client, ns, &mut out).await;
    out
}

async fn versions_of<K>(client: &Client, ns: &str, out: &mut BTreeMap<String, String>)
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    for object in Api::<K>::namespaced(client.clone(), ns).list(&ListParams::default()).await.unwrap() {
        out.insert(format!("{}/{}", K::kind(&()), object.name_any()), object.resource_version().unwrap_or_default());
    }
}

async fn scenario(client: Client, ns: String) {
    apply_examples(&client, &ns).await;
    let tools_api: Api<McpTool> = Api::namespaced(client.clone(), &ns);
    let policies_api: Api<ToolPolicy> = Api::namespaced(client.clone(), &ns);
    let nps: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let tool_names: Vec<String> = yaml_documents("examples/tools.yaml").iter().map(|d| d["metadata"]["name"].as_str().unwrap().to_owned()).collect();

    // Every tool: its NetworkPolicy, and Ready (or Disabled, for the example that is switched off).
    for name in &tool_names {
        let np = eventually(&format!("NetworkPolicy of {name}"), || {
            let nps = nps.clone();
            let name = name.clone();
            async move { nps.get_opt(&format!("toolwarden-tool-{name}")).await.ok()? }
        })
        .await;
        let spec = serde_json::to_value(np.spec.unwrap()).unwrap();
        assert_eq!(spec["podSelector"]["matchLabels"]["toolwarden.dev/tool"], name.as_str());
        assert_eq!(spec["policyTypes"], json!(["Ingress", "Egress"]));
        let (status, reason) = eventually(&format!("{name} Ready settled"), || {
            let api = tools_api.clone();
            let name = name.clone();
            async move {
                let tool = api.get(&name).await.ok()?;
                let status = serde_json::to_value(tool.status?).ok()?;
                condition(&status, "Ready").filter(|(_, r)| r != "ConfigPending")
            }
        })
        .await;
        let expected = if name == "purge-cache" { ("False", "Disabled") } else { ("True", "Ready") };
        assert_eq!((status.as_str(), reason.as_str()), expected, "{name}");
    }
    // With `Egress` among the policy types, no rule at all is what denies every destination.
    let list_notes = serde_json::to_value(nps.get("toolwarden-tool-list-notes").await.unwrap().spec).unwrap();
    assert!(list_notes.get("egress").is_none(), "a tool without egress gets none: {list_notes}");
    assert_eq!(list_notes["policyTypes"], json!(["Ingress", "Egress"]), "{list_notes}");
    let fetch = serde_json::to_value(nps.get("toolwarden-tool-fetch-url").await.unwrap().spec).unwrap();
    assert_eq!(fetch["egress"][0]["to"][0]["ipBlock"]["cidr"], "0.0.0.0/0");
    assert!(fetch["egress"][0]["to"][0]["ipBlock"]["except"].as_array().unwrap().contains(&json!("169.254.0.0/16")));
    assert_eq!(fetch["egress"][1]["ports"][0], json!({"protocol": "UDP", "port": 53}));
    assert!(nps.get_opt("toolwarden-workers-baseline").await.unwrap().is_some());

    // The scoped Secret holds only the referenced key and belongs to its tool.
    let scoped = secrets.get("toolwarden-tool-create-pull-request").await.unwrap();
    assert_eq!(scoped.data.clone().unwrap().keys().collect::<Vec<_>>(), vec!["token"]);
    assert_eq!(scoped.owner_references()[0].name, "create-pull-request");
    assert!(secrets.get_opt("toolwarden-tool-read-note").await.unwrap().is_none(), "no credentials, no Secret");

    // A change of the source Secret reaches the scoped copy.
    let source = scoped.annotations().get("toolwarden.dev/sources").cloned().unwrap_or_default();
    let (source_name, source_key) = source.split_once('/').unwrap_or_else(|| panic!("sources annotation: {source:?}"));
    let rotated = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": source_name}, "stringData": {source_key: "rotated-e2e-value"}});
    secrets.patch(source_name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&rotated)).await.unwrap();
    eventually("the rotated value in the scoped Secret", || {
        let secrets = secrets.clone();
        async move {
            let copy = secrets.get("toolwarden-tool-create-pull-request").await.ok()?;
            (copy.data?.get("token")?.0 == b"rotated-e2e-value").then_some(())
        }
    })
    .await;

    // The gateway config holds every tool and policy.
    let (generation, cfg) = eventually("gateway config", || config(&client, &ns)).await;
    assert_eq!(cfg.tools.len(), tool_names.len());
    assert_eq!(cfg.policies.len(), yaml_documents("examples/policies.yaml").len());
    assert_eq!(cfg.generation, generation);
    // Policy status is written after the config (the namespace reconcile writes the config first).
    for policy in policies_api.list(&ListParams::default()).await.unwrap() {
        let name = policy.name_any();
        let (accepted, reason) = eventually(&format!("{name}: an Accepted condition"), || {
            let api = policies_api.clone();
            let name = name.clone();
            async move { condition(&serde_json::to_value(api.get(&name).await.ok()?.status?).ok()?, "Accepted") }
        })
        .await;
        assert_eq!(accepted, "True", "{name}: Accepted={accepted} ({reason})");
    }

    // A settled namespace stays still: a reconcile that writes what the API server stores differently
    // (an empty list it drops, a default it adds) changes the object, whose watch event starts the next
    // reconcile, which writes again: a loop that costs the API server hundreds of writes a second.
    let before = versions(&client, &ns).await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let after = versions(&client, &ns).await;
    let changed: Vec<_> = after.iter().filter(|(k, v)| before.get(*k) != Some(v)).map(|(k, _)| k.clone()).collect();
    assert!(changed.is_empty(), "objects rewritten with nothing changed (a write loop): {changed:?}");

    // Events from the operator.
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    eventually("a Ready Event on read-note", || {
        let events = events.clone();
        async move {
            let list = events.list(&ListParams::default()).await.ok()?;
            list.items
                .iter()
                .any(|e| {
                    e.reporting_controller.as_deref() == Some("toolwarden-operator")
                        && e.reason.as_deref() == Some("Ready")
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("read-note")
                })
                .then_some(())
        }
    })
    .await;

    // The kill switch reaches the config promptly.
    let patch = json!({"spec": {"disabled": true, "disabledReason": "e2e: switched off"}});
    tools_api.patch("read-note", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    let started = Instant::now();
    let (after, cfg) = eventually("read_note disabled in the config", || {
        let client = client.clone();
        let ns = ns.clone();
        async move {
            let (g, cfg) = config(&client, &ns).await?;
            cfg.tools.iter().any(|t| t.name == "read_note" && t.disabled).then_some((g, cfg))
        }
    })
    .await;
    println!("disabled reached the config in {:?}", started.elapsed());
    assert!(after > generation);
    assert_eq!(cfg.tools.iter().find(|t| t.name == "read_note").unwrap().disabled_reason.as_deref(), Some("e2e: switched off"));

    // A tool whose Secret key is missing says so.
    let mut broken = tools_api.get("create-pull-request").await.unwrap();
    broken.spec.credentials[0].secret_ref.key = "no-such-key".into();
    let body = json!({"apiVersion": "toolwarden.dev/v1alpha1", "kind": "McpTool", "metadata": {"name": "create-pull-request"}, "spec": broken.spec});
    tools_api.patch("create-pull-request", &PatchParams::apply(MANAGER).force(), &Patch::Apply(&body)).await.unwrap();
    eventually("CredentialsReady=False KeyNotFound", || {
        let api = tools_api.clone();
        async move {
            let status = serde_json::to_value(api.get("create-pull-request").await.ok()?.status?).ok()?;
            (condition(&status, "CredentialsReady")? == ("False".into(), "KeyNotFound".into())).then_some(())
        }
    })
    .await;
    eventually("the stale scoped Secret removed", || {
        let secrets = secrets.clone();
        async move { secrets.get_opt("toolwarden-tool-create-pull-request").await.ok()?.is_none().then_some(()) }
    })
    .await;

    // Deleting a tool takes its objects and its config entry.
    tools_api.delete("write-note", &DeleteParams::default()).await.unwrap();
    eventually("write_note gone from the config", || {
        let client = client.clone();
        let ns = ns.clone();
        async move { config(&client, &ns).await.filter(|(_, c)| !c.tools.iter().any(|t| t.name == "write_note")).map(|_| ()) }
    })
    .await;
    eventually("NetworkPolicy of write-note garbage-collected", || {
        let nps = nps.clone();
        async move { nps.get_opt("toolwarden-tool-write-note").await.ok()?.is_none().then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_builds_and_reports_on_a_real_cluster() {
    if std::env::var_os("KUBECONFIG").is_none() {
        assert!(std::env::var_os("TOOLWARDEN_E2E_REQUIRED").is_none(), "TOOLWARDEN_E2E_REQUIRED is set but KUBECONFIG is not");
        println!("skipped: KUBECONFIG not set");
        return;
    }
    let client = Client::try_default().await.expect("KUBECONFIG is set, so the cluster must be reachable");
    apply_crds(&client).await;
    let ns = format!("tw-operator-e2e-{}", jiff::Timestamp::now().as_millisecond() % 1_000_000_000);
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace: Namespace = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})).unwrap();
    namespaces.create(&Default::default(), &namespace).await.expect("create the test namespace");

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let operator = tokio::spawn(run_until_shutdown(
        client.clone(),
        Settings { session_gc_interval: Duration::from_secs(30), ..Settings::default() },
        LeaseConfig::new(&ns, "e2e"),
        std::sync::Arc::new(Metrics::default()),
        Some("e2e".into()),
        async move {
            let _ = stop_rx.await;
        },
    ));

    let outcome = tokio::spawn(scenario(client.clone(), ns.clone())).await;
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(15), operator).await;
    let _ = namespaces.delete(&ns, &DeleteParams::default()).await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}
