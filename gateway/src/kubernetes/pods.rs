//! Worker pod API calls: create, read where a pod stands (failing fast on what will never recover),
//! delete. Starting one (create, wait until ready, delete on failure) is `pod_watch`'s.
//! Every failure becomes a specific [`Error`].

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, ResourceExt};

use super::pod::{LABEL_SESSION, label_value, tool_object_name};
use super::{Error, Result, api_code};

/// Where a pod stands on its way to serving calls.
#[derive(Debug)]
pub enum PodState {
    Ready { ip: String },
    /// Still starting; the text says what it waits for (shown on timeout).
    Starting(String),
    Failed(Error),
}

/// Maps an API refusal of a pod create to what the caller should hear.
pub fn create_error(namespace: &str, error: kube::Error) -> Error {
    if let kube::Error::Api(status) = &error {
        let message = status.message.clone();
        if status.code == 403 && message.contains("exceeded quota") {
            return Error::QuotaExceeded { namespace: namespace.to_owned(), message };
        }
        if status.code == 403 {
            return Error::Forbidden { action: "create worker pods", namespace: namespace.to_owned(), message };
        }
    }
    Error::api(format!("creating a worker pod in {namespace}"), error)
}

pub async fn create(api: &Api<Pod>, namespace: &str, pod: &Pod) -> Result<Pod> {
    api.create(&PostParams::default(), pod).await.map_err(|e| create_error(namespace, e))
}

fn waiting_reason(status: &ContainerStatus) -> Option<(&str, &str)> {
    let waiting = status.state.as_ref()?.waiting.as_ref()?;
    Some((waiting.reason.as_deref().unwrap_or(""), waiting.message.as_deref().unwrap_or("")))
}

/// Reads a pod's status: ready, still starting, or failed for a reason that waiting will not fix.
pub fn classify(pod: &Pod) -> PodState {
    let name = pod.name_any();
    let namespace = pod.namespace().unwrap_or_default();
    let Some(status) = &pod.status else { return PodState::Starting("not yet scheduled".into()) };
    if pod.metadata.deletion_timestamp.is_some() {
        return PodState::Failed(Error::PodGone { pod: name });
    }
    let all_statuses = status.init_container_statuses.iter().flatten().chain(status.container_statuses.iter().flatten());
    for cs in all_statuses.clone() {
        if let Some((reason, message)) = waiting_reason(cs) {
            match reason {
                "ErrImagePull" | "ImagePullBackOff" | "InvalidImageName" | "ErrImageNeverPull" => {
                    return PodState::Failed(Error::ImagePull {
                        pod: name,
                        image: cs.image.clone(),
                        message: format!("{reason}: {message}"),
                    });
                }
                "CreateContainerConfigError" if message.contains("secret") => {
                    let secret = pod
                        .labels()
                        .get(super::pod::LABEL_TOOL)
                        .map(|t| tool_object_name(t))
                        .unwrap_or_else(|| "toolwarden-tool-…".into());
                    return PodState::Failed(Error::MissingSecret {
                        pod: name,
                        secret,
                        namespace,
                        message: message.to_owned(),
                    });
                }
                "CreateContainerConfigError" | "CreateContainerError" | "RunContainerError" => {
                    return PodState::Failed(Error::ContainerConfig { pod: name, message: format!("{reason}: {message}") });
                }
                _ => {}
            }
        }
    }
    let phase = status.phase.as_deref().unwrap_or("Pending");
    if phase == "Failed" || phase == "Succeeded" {
        // Prefer the pod's own reason (DeadlineExceeded, Evicted), else the container's (OOMKilled, Error).
        let terminated = all_statuses.filter_map(|cs| cs.state.as_ref()?.terminated.clone()).find(|t| t.exit_code != 0);
        let reason = status
            .reason
            .clone()
            .or_else(|| terminated.as_ref().and_then(|t| t.reason.clone()))
            .unwrap_or_else(|| phase.to_owned());
        let message = status
            .message
            .clone()
            .or_else(|| terminated.as_ref().and_then(|t| t.message.clone()))
            .or_else(|| terminated.as_ref().map(|t| format!("exit code {}", t.exit_code)))
            .unwrap_or_default();
        return PodState::Failed(Error::PodFailed { pod: name, reason, message });
    }
    let conditions = status.conditions.iter().flatten();
    let ready = conditions.clone().any(|c| c.type_ == "Ready" && c.status == "True");
    match (&status.pod_ip, ready) {
        (Some(ip), true) if !ip.is_empty() => PodState::Ready { ip: ip.clone() },
        _ => {
            // Unschedulable is worth naming: quota of nodes, taints, a missing RuntimeClass…
            let detail = conditions
                .filter(|c| c.status == "False")
                .map(|c| format!("{}: {}", c.reason.as_deref().unwrap_or(&c.type_), c.message.as_deref().unwrap_or("")))
                .next()
                .unwrap_or_else(|| format!("phase {phase}"));
            PodState::Starting(detail)
        }
    }
}

/// Deletes a pod right away; a pod already gone is fine.
pub async fn delete(api: &Api<Pod>, name: &str) -> Result<()> {
    let params = DeleteParams { grace_period_seconds: Some(0), ..DeleteParams::default() };
    match api.delete(name, &params).await {
        Ok(_) => Ok(()),
        Err(e) if api_code(&e) == Some(404) => Ok(()),
        Err(e) => Err(Error::api(format!("deleting pod {name}"), e)),
    }
}

/// Deletes every worker pod of a session (including any the gateway lost track of).
pub async fn delete_session_pods(api: &Api<Pod>, session: &str) -> Result<()> {
    let selector = format!("{LABEL_SESSION}={}", label_value(session));
    let params = DeleteParams { grace_period_seconds: Some(0), ..DeleteParams::default() };
    match api.delete_collection(&params, &ListParams::default().labels(&selector)).await {
        Ok(_) => Ok(()),
        Err(e) if api_code(&e) == Some(404) => Ok(()),
        Err(e) => Err(Error::api(format!("deleting the pods of session {session}"), e)),
    }
}

/// Reads a dispatched-to pod after a call failed, to tell the caller why (killed, evicted, OOM…).
pub async fn diagnose(api: &Api<Pod>, name: &str) -> Error {
    match api.get_opt(name).await {
        Ok(None) => Error::PodGone { pod: name.to_owned() },
        Ok(Some(pod)) => match classify(&pod) {
            PodState::Failed(e) => e,
            PodState::Ready { .. } => Error::PodFailed {
                pod: name.to_owned(),
                reason: "CallFailed".into(),
                message: "the worker is running but the call did not complete".into(),
            },
            PodState::Starting(detail) => Error::PodFailed { pod: name.to_owned(), reason: "NotReady".into(), message: detail },
        },
        Err(e) => Error::api(format!("reading pod {name}"), e),
    }
}
