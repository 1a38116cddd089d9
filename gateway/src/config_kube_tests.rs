//! The ConfigMap watch against a scripted API server: the listed config is applied, a modified one
//! replaces it, a broken one is counted and leaves the last good config in force.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use kube::client::Body;
use serde_json::{Value, json};
use toolwarden_core::config::{CONFIG_FORMAT, CONFIG_MAP_KEY, CONFIG_MAP_NAME, GatewayConfig};

use crate::runtime::NoWorkers;
use crate::state::Gateway;

fn config_map(generation: u64, text: Option<String>) -> Value {
    let config = GatewayConfig { format: CONFIG_FORMAT, namespace: "team-a".into(), generation, ..Default::default() };
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": CONFIG_MAP_NAME, "namespace": "team-a", "resourceVersion": format!("{generation}"),
                     "labels": {"toolwarden.dev/config": "true"}},
        "data": {CONFIG_MAP_KEY: text.unwrap_or_else(|| config.to_json())},
    })
}

async fn gateway() -> Arc<Gateway> {
    Gateway::for_tests(Arc::new(NoWorkers)).await
}

fn respond(send: tower_test::mock::SendResponse<Response<Body>>, text: String) {
    send.send_response(Response::builder().status(200).header("content-type", "application/json").body(Body::from(text.into_bytes())).unwrap());
}

#[tokio::test]
async fn configmaps_are_applied_as_they_change_and_bad_ones_keep_the_last_good_config() {
    let gateway = gateway().await;
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    super::start_with_client(gateway.clone(), client, vec!["team-a".into()]);

    let (list, send) = tokio::time::timeout(Duration::from_secs(10), handle.next_request()).await.unwrap().unwrap();
    let uri = list.uri().to_string();
    assert!(uri.starts_with("/api/v1/namespaces/team-a/configmaps?"), "{uri}");
    assert!(uri.contains("labelSelector=toolwarden.dev%2Fconfig") && uri.contains("fieldSelector=metadata.name%3Dtoolwarden-gateway-config"), "{uri}");
    respond(send, json!({"apiVersion": "v1", "kind": "ConfigMapList", "metadata": {"resourceVersion": "1"}, "items": [config_map(1, None)]}).to_string());

    let (watch, send) = tokio::time::timeout(Duration::from_secs(10), handle.next_request()).await.unwrap().unwrap();
    assert!(watch.uri().to_string().contains("watch=true"), "{}", watch.uri());
    let events = [
        json!({"type": "MODIFIED", "object": config_map(2, None)}),
        json!({"type": "MODIFIED", "object": config_map(3, Some("{not json".into()))}),
    ];
    respond(send, events.iter().map(|e| format!("{e}\n")).collect());

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = crate::metrics::render(&gateway.registry);
        if text.contains("toolwarden_config_load_failures_total{namespace=\"team-a\"} 1") {
            assert!(text.contains("toolwarden_config_generation{namespace=\"team-a\"} 2"), "{text}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the watch events were not applied:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(gateway.is_ready());
    assert_eq!(gateway.engine("team-a").unwrap().config().generation, 2, "the broken ConfigMap left generation 2 in force");
}

/// With `--metrics-listen`, `/metrics` is served there only: the port agents reach does not publish it.
#[tokio::test]
async fn metrics_stay_off_the_mcp_port_when_a_metrics_listener_is_given() {
    let gateway = gateway().await;
    gateway.set_ready();
    let main = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (main_addr, metrics_addr) = (main.local_addr().unwrap(), metrics.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(crate::serve::serve(gateway, main, Some(metrics), async move {
        let _ = stopped.await;
    }));
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let status = |url: String| {
        let http = http.clone();
        async move { http.get(url).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status(format!("http://{metrics_addr}/metrics")).await, 200);
    assert_eq!(status(format!("http://{main_addr}/metrics")).await, 404);
    assert_eq!(status(format!("http://{main_addr}/healthz")).await, 200);
    assert_eq!(status(format!("http://{main_addr}/readyz")).await, 200);
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(30), server).await;
}
