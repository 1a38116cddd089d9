//! `toolwarden operator`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use tokio::sync::watch;
use toolwarden_core::duration::parse_duration;

use crate::context::{Context, DEFAULT_CLUSTER_CIDRS, Settings};
use crate::leader::{self, LeaseConfig};
use crate::metrics::{Metrics, router};
use crate::tool::cidr::Cidr;

/// Arguments of `toolwarden operator`.
#[derive(Debug, clap::Args)]
pub struct OperatorArgs {
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8081")]
    pub listen: SocketAddr,
    /// Namespace of the leader-election Lease `toolwarden-operator`.
    #[arg(long, env = "POD_NAMESPACE", default_value = "toolwarden")]
    pub lease_namespace: String,
    /// This replica's name in the Lease (default: the host name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Namespace where gateway pods run: worker pods accept connections from there only.
    #[arg(long, default_value = "toolwarden")]
    pub gateway_namespace: String,
    /// Pod and service ranges that broad egress CIDRs never open (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = DEFAULT_CLUSTER_CIDRS)]
    pub cluster_cidrs: Vec<String>,
    /// Namespace of the cluster DNS pods.
    #[arg(long, default_value = "kube-system")]
    pub dns_namespace: String,
    /// Labels of the cluster DNS pods (comma-separated key=value).
    #[arg(long, value_delimiter = ',', default_value = "k8s-app=kube-dns")]
    pub dns_labels: Vec<String>,
    /// Port the worker pods listen on.
    #[arg(long, default_value_t = 8443)]
    pub worker_port: u16,
    /// How often McpSessions are checked for expiry.
    #[arg(long, default_value = "60s", value_parser = duration)]
    pub session_gc_interval: Duration,
    /// How long past its idle timeout or lifetime a session may stay before it is expired.
    #[arg(long, default_value = "2m", value_parser = duration)]
    pub session_gc_grace: Duration,
    /// How often every object is reconciled even when nothing changed.
    #[arg(long, default_value = "10m", value_parser = duration)]
    pub resync_interval: Duration,
    /// Watch Secret metadata so that a changed source Secret is copied at once (needs list/watch on
    /// Secrets); `false` re-reads referenced Secrets on the resync interval only.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub watch_secrets: bool,
    /// Log format: json or text.
    #[arg(long, default_value = "json")]
    pub log_format: String,
}

fn duration(text: &str) -> Result<Duration, String> {
    parse_duration(text)
}

impl OperatorArgs {
    /// The settings, refusing malformed flags with the flag's name.
    pub fn settings(&self) -> anyhow::Result<Settings> {
        for cidr in &self.cluster_cidrs {
            Cidr::parse(cidr).map_err(|e| anyhow::anyhow!("--cluster-cidrs: {e}"))?;
        }
        let mut dns_labels = BTreeMap::new();
        for pair in &self.dns_labels {
            let Some((k, v)) = pair.split_once('=') else { bail!("--dns-labels: `{pair}` is not key=value") };
            dns_labels.insert(k.trim().to_owned(), v.trim().to_owned());
        }
        if dns_labels.is_empty() {
            bail!("--dns-labels: give at least one key=value selecting the cluster DNS pods");
        }
        if self.worker_port == 0 {
            bail!("--worker-port: 0 is not a port");
        }
        if self.session_gc_interval.is_zero() {
            bail!("--session-gc-interval: must be more than zero");
        }
        Ok(Settings {
            gateway_namespace: self.gateway_namespace.clone(),
            cluster_cidrs: self.cluster_cidrs.iter().map(|c| c.trim().to_owned()).collect(),
            dns_namespace: self.dns_namespace.clone(),
            dns_labels,
            worker_port: i32::from(self.worker_port),
            session_gc_interval: self.session_gc_interval,
            session_gc_grace: self.session_gc_grace,
            resync_interval: self.resync_interval.max(Duration::from_secs(30)),
            watch_secrets: self.watch_secrets,
            ..Settings::default()
        })
    }

    pub async fn run(self) -> anyhow::Result<()> {
        init_tracing(&self.log_format);
        let settings = self.settings()?;
        let identity = match self.identity.clone().filter(|i| !i.is_empty()) {
            Some(identity) => identity,
            None => std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()).context("--identity: not given and HOSTNAME is unset")?,
        };
        let client = Client::try_default().await.context("connecting to the Kubernetes API server (in-cluster or KUBECONFIG)")?;
        let mut metrics = Metrics::default();
        metrics.telemetry = toolwarden_telemetry::Telemetry::from_env("toolwarden-operator", &metrics.spans)?;
        let metrics = Arc::new(metrics);
        let lease = LeaseConfig::new(&self.lease_namespace, &identity);

        let listener = tokio::net::TcpListener::bind(self.listen).await.with_context(|| format!("--listen {}", self.listen))?;
        let app = router(metrics.clone(), lease.duration * 2);
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "metrics server stopped");
            }
        });
        tracing::info!(listen = %self.listen, identity, lease_namespace = %self.lease_namespace, "operator starting");
        let telemetry = metrics.telemetry.clone();
        let outcome = run_until_shutdown(client, settings, lease, metrics, Some(identity), shutdown_signal()).await;
        if let Some(telemetry) = telemetry {
            // The last reconciles' spans; a collector that does not answer costs at most this wait.
            tokio::task::spawn_blocking(move || telemetry.flush(std::time::Duration::from_secs(2))).await.ok();
        }
        outcome
    }
}

/// Leader election around the controllers, until `shutdown` resolves.
pub async fn run_until_shutdown(
    client: Client,
    settings: Settings,
    lease: LeaseConfig,
    metrics: Arc<Metrics>,
    instance: Option<String>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (leader_tx, mut leader_rx) = watch::channel(false);
    let (stop_tx, stop_rx) = watch::channel(false);
    let elector = tokio::spawn(leader::run(
        Api::<Lease>::namespaced(client.clone(), &lease.namespace),
        lease,
        leader_tx,
        metrics.clone(),
        stop_rx,
    ));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            changed = leader_rx.wait_for(|l| *l) => if changed.is_err() { break },
        }
        metrics.leader.set(1);
        // Fresh state per term: nothing cached from an earlier term can be stale.
        let ctx = Arc::new(Context::new(client.clone(), settings.clone(), metrics.clone(), instance.clone()));
        let stop = tokio::select! {
            _ = crate::run::controllers(ctx) => { tracing::error!("controllers stopped"); true }
            _ = leader_rx.wait_for(|l| !*l) => { tracing::warn!("lost the leader Lease; controllers stopped"); false }
            _ = &mut shutdown => true,
        };
        metrics.leader.set(0);
        if stop {
            break;
        }
    }
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    if tokio::time::timeout(Duration::from_secs(10), elector).await.is_err() {
        metrics.broken.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,kube=warn".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = if format == "text" { builder.try_init() } else { builder.json().try_init() };
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: OperatorArgs,
    }

    fn parse(args: &[&str]) -> OperatorArgs {
        Cli::try_parse_from(std::iter::once("operator").chain(args.iter().copied())).unwrap().args
    }

    #[test]
    fn defaults_match_the_chart() {
        let settings = parse(&[]).settings().unwrap();
        assert_eq!(settings.worker_port, 8443);
        assert_eq!(settings.dns_namespace, "kube-system");
        assert_eq!(settings.dns_labels["k8s-app"], "kube-dns");
        assert_eq!(settings.cluster_cidrs.len(), 5);
        assert_eq!(settings.session_gc_interval, Duration::from_secs(60));
    }

    #[test]
    fn flags_are_parsed() {
        let args = parse(&["--cluster-cidrs", "10.244.0.0/16,10.96.0.0/12", "--gateway-namespace", "gw", "--session-gc-interval", "30s"]);
        let settings = args.settings().unwrap();
        assert_eq!(settings.cluster_cidrs, vec!["10.244.0.0/16", "10.96.0.0/12"]);
        assert_eq!(settings.gateway_namespace, "gw");
        assert_eq!(settings.session_gc_interval, Duration::from_secs(30));
    }

    #[test]
    fn bad_cidr_flag_is_refused_with_its_name() {
        let e = parse(&["--cluster-cidrs", "10.0.0.0/99"]).settings().unwrap_err().to_string();
        assert!(e.starts_with("--cluster-cidrs:") && e.contains("10.0.0.0/99"), "{e}");
        let e = parse(&["--dns-labels", "kube-dns"]).settings().unwrap_err().to_string();
        assert!(e.contains("--dns-labels"), "{e}");
    }
}
