//! Command-line entry points of the gateway: `dev`, `gateway`, `approvals`.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::audit::AuditLog;
use crate::auth::{AuthConfig, Authenticator, JwksSource, JwtIssuerConfig, StaticToken};
use crate::metrics::GatewayMetrics;
use crate::runtime::WorkerRuntime;
use crate::runtime::local::{LocalRuntime, LocalRuntimeConfig, LocalSecrets};
use crate::state::{Gateway, Settings};

fn parse_duration(text: &str) -> Result<Duration, String> {
    toolwarden_core::duration::parse_duration(text)
}

fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    parse_duration(text).and_then(|d| if d.is_zero() { Err("must be longer than zero".into()) } else { Ok(d) })
}

fn init_logging() {
    // Logs go to stderr; stdout carries the audit lines (and `dev`'s connection notes).
    let filter = tracing_subscriber::EnvFilter::try_from_env("TOOLWARDEN_LOG").unwrap_or_else(|_| "info,rmcp=warn".into());
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).try_init();
}

/// Arguments of `toolwarden dev`.
#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Directory of McpTool/ToolPolicy manifests (and local stand-in Secrets) to serve and watch.
    #[arg(long, default_value = "examples")]
    pub manifests: PathBuf,
    /// Address to listen on (`127.0.0.1:0` picks a free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Static tokens file (YAML, see docs/authentication.md); without it `dev` makes a developer and an
    /// approver token (TOOLWARDEN_DEV_TOKEN / TOOLWARDEN_DEV_APPROVER_TOKEN when set).
    #[arg(long)]
    pub tokens: Option<PathBuf>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

impl ServeArgs {
    fn max_audit_file(&self) -> Option<u64> {
        (self.audit_log_max_bytes > 0).then_some(self.audit_log_max_bytes)
    }
}

/// Flags `dev` and `gateway` share.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Also append audit lines to this file. At start, calls that a previous process left running in it
    /// get an `interrupted` result line.
    #[arg(long)]
    pub audit_log: Option<PathBuf>,
    /// After SIGTERM, how long calls in flight get to finish; those still running then are stopped and
    /// answered `interrupted`.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// Rotate the audit log file at this many bytes, keeping one previous file (`<file>.1`); 0 = never.
    #[arg(long, default_value_t = 0)]
    pub audit_log_max_bytes: u64,
    /// Run tools without the namespace sandbox: local runtime only, and only where the kernel refuses
    /// user namespaces.
    #[arg(long)]
    pub unsafe_no_sandbox: bool,
    /// Threads serving requests. Default: the CPUs this process may use, which honours a cgroup CPU
    /// limit (one thread in the chart's default gateway pod). One thread spends the least CPU per call.
    #[arg(long, env = "TOOLWARDEN_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub worker_threads: Option<u16>,
    /// Open sessions one subject may hold; initializing one more is refused (HTTP 429) until one ends.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_sessions_per_subject: u32,
    /// Open sessions this gateway holds in all; initializing one more is refused (HTTP 503) until one ends.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_sessions: u32,
    /// How long a client may take to send a request's headers; slower connections are closed, and so
    /// are keep-alive connections idle for this long.
    #[arg(long, default_value = "30s", value_parser = parse_positive_duration)]
    pub header_read_timeout: Duration,
    /// How long a client may accept no byte of an answer (it stopped reading) before its connection is
    /// closed; counted in `toolwarden_http_connections_closed_total{reason="write_stalled"}`.
    #[arg(long, default_value = "30s", value_parser = parse_positive_duration)]
    pub write_stall_timeout: Duration,
    /// A browser origin allowed to call `/mcp/...` and `/approvals` (repeatable): `https://host`,
    /// `https://host:port`, `http://host:*` (any port) or `null`. Requests with any other `Origin` get
    /// 403; requests without one (agents, SDKs, curl) are not affected. Loopback origins are allowed
    /// when the gateway listens on a loopback address.
    #[arg(long = "allowed-origin", value_name = "ORIGIN", value_parser = parse_origin)]
    pub allowed_origins: Vec<String>,
}

fn parse_origin(text: &str) -> Result<String, String> {
    crate::origin::AllowedOrigins::new(&[text]).map(|_| text.to_owned())
}

impl ServeArgs {
    /// The settings these flags set for a gateway listening on `listen`; the rest are the defaults.
    fn settings(&self, listen: SocketAddr) -> anyhow::Result<Settings> {
        let mut origins = self.allowed_origins.clone();
        if listen.ip().is_loopback() {
            // Only this machine reaches a loopback listener: its own pages may, foreign sites may not.
            origins.extend(crate::origin::LOOPBACK_ORIGINS.map(str::to_owned));
        }
        let allowed_origins = crate::origin::AllowedOrigins::new(&origins).map_err(|e| anyhow::anyhow!("--allowed-origin: {e}"))?;
        Ok(Settings {
            max_sessions_per_subject: self.max_sessions_per_subject as usize,
            max_sessions: self.max_sessions as usize,
            header_read_timeout: self.header_read_timeout,
            write_stall_timeout: self.write_stall_timeout,
            shutdown_grace: self.shutdown_grace,
            allowed_origins,
            ..Settings::default()
        })
    }
}

fn dev_token(var: &str) -> String {
    std::env::var(var).ok().filter(|t| !t.trim().is_empty()).unwrap_or_else(|| format!("twdev-{}", crate::approvals::random_hex(16)))
}

fn local_runtime(
    manifests_dir: Option<PathBuf>,
    unsafe_no_sandbox: bool,
    secrets: LocalSecrets,
    metrics: crate::kubernetes::Metrics,
) -> anyhow::Result<Arc<dyn WorkerRuntime>> {
    let exe = std::env::current_exe().context("cannot find the toolwarden executable to start workers")?;
    let state_dir = std::env::temp_dir().join(format!("toolwarden-{}", std::process::id()));
    std::fs::create_dir_all(&state_dir).with_context(|| format!("cannot create {}", state_dir.display()))?;
    let runtime = LocalRuntime::new(LocalRuntimeConfig {
        worker_command: vec![exe.into_os_string(), OsString::from("worker")],
        state_dir,
        unsafe_no_sandbox,
        manifests_dir,
        secrets,
        metrics,
        max_concurrent_per_worker: 16,
    })?;
    Ok(runtime)
}

impl DevArgs {
    pub async fn run(self) -> anyhow::Result<()> {
        init_logging();
        let dir = self
            .manifests
            .canonicalize()
            .with_context(|| format!("manifests directory {} not found (give --manifests DIR)", self.manifests.display()))?;
        let loaded = crate::config_dev::load(&dir).map_err(|problems| anyhow::anyhow!("{problems}"))?;
        if self.serve.unsafe_no_sandbox {
            eprintln!("WARNING: --unsafe-no-sandbox: tools run as this user with full access to this machine and its network.");
        }

        let developer = dev_token("TOOLWARDEN_DEV_TOKEN");
        let approver = dev_token("TOOLWARDEN_DEV_APPROVER_TOKEN");
        let static_tokens = if self.tokens.is_some() {
            Vec::new()
        } else {
            vec![
                StaticToken { token: developer.clone(), subject: "developer".into(), groups: vec!["developers".into()] },
                StaticToken { token: approver.clone(), subject: "alice".into(), groups: vec!["team-leads".into()] },
            ]
        };
        let auth = Authenticator::new(AuthConfig { tokens_file: self.tokens.clone(), static_tokens, jwt: Vec::new(), token_review_audience: None }).await?;

        let runtime_metrics = crate::kubernetes::Metrics::default();
        let (metrics, registry) = GatewayMetrics::new(runtime_metrics.clone());
        let secrets: LocalSecrets = Arc::new(std::sync::RwLock::new(BTreeMap::new()));
        let runtime = local_runtime(Some(dir.clone()), self.serve.unsafe_no_sandbox, secrets.clone(), runtime_metrics)?;
        let audit = AuditLog::open_rotating(self.serve.audit_log.as_deref(), self.serve.max_audit_file(), true, "dev")?;
        let settings = Settings {
            // A laptop server: only loopback names (DNS-rebinding guard on top of the bearer token).
            allowed_hosts: vec!["localhost".into(), "127.0.0.1".into(), "::1".into(), self.listen.ip().to_string()],
            ..self.serve.settings(self.listen)?
        };
        let telemetry = toolwarden_telemetry::Telemetry::from_env("toolwarden-gateway", &metrics.spans)?;
        let gateway = Arc::new(Gateway::new(settings, auth, runtime, audit, metrics, registry).with_telemetry(telemetry));
        let namespaces: Vec<String> = loaded.configs.iter().map(|c| c.namespace.clone()).collect();
        let tools: usize = loaded.configs.iter().map(|c| c.tools.len()).sum();
        crate::config_dev::apply(&gateway, &secrets, loaded, 1);
        tokio::spawn(crate::config_dev::watch(gateway.clone(), dir.clone(), secrets, 1));

        let listener = tokio::net::TcpListener::bind(self.listen).await.with_context(|| format!("cannot listen on {}", self.listen))?;
        let addr = listener.local_addr()?;
        let first = namespaces.first().cloned().unwrap_or_else(|| "default".into());
        let endpoint = format!("http://{addr}/mcp/{first}");
        println!("toolwarden dev: {tools} tools in namespace(s) {} from {} (edits apply within 2 s)", namespaces.join(", "), dir.display());
        println!("  MCP endpoint: {endpoint}");
        if self.tokens.is_none() {
            println!("  token (subject developer, group developers): {developer}");
            println!("  approver token (subject alice, group team-leads): {approver}");
        }
        println!("Claude Code:");
        println!("  claude mcp add --transport http toolwarden {endpoint} --header \"Authorization: Bearer {developer}\"");
        println!("JSON client config:");
        let snippet = serde_json::json!({"mcpServers": {"toolwarden": {"type": "http", "url": endpoint, "headers": {"Authorization": format!("Bearer {developer}")}}}});
        println!("  {snippet}");
        println!("Approvals (as alice):");
        println!("  toolwarden approvals --gateway http://{addr} --token {approver} list");
        println!("  toolwarden approvals --gateway http://{addr} --token {approver} approve ID");
        println!("listening on http://{addr}");
        crate::serve::serve(gateway, listener, None, crate::serve::shutdown_signal()).await
    }
}

/// Arguments of `toolwarden gateway`.
#[derive(Debug, clap::Args)]
pub struct GatewayArgs {
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Also serve /metrics, /healthz and /readyz here.
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
    /// Where tool calls run: `local` (sandboxed processes on the gateway's host) or `kubernetes` (pods).
    #[arg(long, default_value = "kubernetes", value_parser = ["local", "kubernetes"])]
    pub runtime: String,
    /// Stable name of this gateway replica (labels its sessions and worker pods).
    #[arg(long, default_value = "toolwarden-gateway")]
    pub gateway_id: String,
    /// This replica's IP as other replicas reach it (the pod IP): its sessions' McpSessions name it, so
    /// a request for one of them that reaches another replica is forwarded here (docs/sessions-kubernetes.md).
    #[arg(long)]
    pub advertise_ip: Option<std::net::IpAddr>,
    /// The namespace this replica's pod runs in (the chart sets `POD_NAMESPACE`): when a session's
    /// holder does not accept a connection at once, its pod is looked up there, and a deleted one is not
    /// waited for.
    #[arg(long, env = "POD_NAMESPACE")]
    pub pod_namespace: Option<String>,
    #[arg(long, default_value_t = crate::kubernetes::default_worker_image())]
    pub worker_image: String,
    /// Static tokens file (a mounted Secret).
    #[arg(long)]
    pub tokens: Option<PathBuf>,
    /// The release's confirm-token key (a mounted Secret, at least 32 bytes): every replica signs and
    /// checks confirm tokens with it, so a token one replica issued is valid on the others. Without it
    /// each process draws its own key and its tokens are valid on it alone.
    #[arg(long)]
    pub confirm_key_file: Option<PathBuf>,
    #[arg(long)]
    pub jwt_issuer: Option<String>,
    #[arg(long)]
    pub jwt_audience: Option<String>,
    #[arg(long)]
    pub jwks_url: Option<String>,
    #[arg(long)]
    pub jwks_file: Option<PathBuf>,
    #[arg(long, default_value = "groups")]
    pub jwt_groups_claim: String,
    /// Accept Kubernetes service-account tokens minted for this audience (a projected token), checked
    /// with the TokenReview API; the subject is `system:serviceaccount:<namespace>:<name>`.
    #[arg(long)]
    pub token_review_audience: Option<String>,
    /// Namespaces whose ConfigMaps to serve (repeatable); all namespaces when absent.
    #[arg(long = "namespace")]
    pub namespaces: Vec<String>,
    /// After SIGTERM, keep serving this long with /readyz failing before refusing new connections, so a
    /// Service stops routing to this pod first.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub shutdown_delay: Duration,
    #[arg(long, default_value = "30m", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    #[arg(long, default_value = "8h", value_parser = parse_duration)]
    pub max_session_lifetime: Duration,
    /// Kubernetes runtime: how long a worker pod may take to become ready.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub worker_start_timeout: Duration,
    /// Kubernetes runtime: worker pods this replica starts at once. Further starts wait their turn within
    /// their --worker-start-timeout, so a wave of new sessions does not make the node start every pod
    /// together (and all of them miss the timeout).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    pub max_pod_starts: u16,
    /// Kubernetes runtime: a session whose McpSession status changed only in its counters (calls,
    /// denials, last activity) is written this long after its last write; workers, taint and approvals
    /// are written within a second. Lower: fresher counters (also after a failover), more API writes.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub session_counters_interval: Duration,
    #[command(flatten)]
    pub serve: ServeArgs,
}

impl GatewayArgs {
    fn auth_config(&self) -> anyhow::Result<AuthConfig> {
        let mut jwt = Vec::new();
        if let Some(issuer) = &self.jwt_issuer {
            let audience = self.jwt_audience.clone().context("--jwt-issuer needs --jwt-audience (this gateway's resource URL)")?;
            let jwks = match (&self.jwks_url, &self.jwks_file) {
                (Some(url), None) => JwksSource::Url(url.clone()),
                (None, Some(file)) => JwksSource::File(file.clone()),
                _ => anyhow::bail!("--jwt-issuer needs exactly one of --jwks-url or --jwks-file"),
            };
            jwt.push(JwtIssuerConfig { issuer: issuer.clone(), audience, jwks, groups_claim: self.jwt_groups_claim.clone() });
        }
        Ok(AuthConfig { tokens_file: self.tokens.clone(), static_tokens: Vec::new(), jwt, token_review_audience: self.token_review_audience.clone() })
    }

    /// Sessions as McpSessions and workers as pods, in the cluster of the pod's service account or of
    /// `KUBECONFIG`. Not started: [`start_kubernetes_runtime`] cleans up what a previous run of this
    /// gateway id left, and the gateway is ready only after that.
    async fn kubernetes_runtime(
        &self,
        metrics: crate::kubernetes::Metrics,
    ) -> anyhow::Result<(Arc<dyn WorkerRuntime>, Arc<crate::kubernetes::KubernetesRuntime>)> {
        let client = kube::Client::try_default()
            .await
            .context("--runtime kubernetes needs a cluster: run in a pod with a service account, or set KUBECONFIG")?;
        let config = crate::kubernetes::KubernetesConfig {
            worker_image: self.worker_image.clone(),
            gateway_id: self.gateway_id.clone(),
            start_timeout: self.worker_start_timeout,
            max_pod_starts: self.max_pod_starts.into(),
            idle_timeout: self.idle_timeout,
            max_lifetime: self.max_session_lifetime,
            advertise_address: self.advertise_ip.map(|ip| SocketAddr::new(ip, self.listen.port()).to_string()),
            pod_namespace: self.pod_namespace.clone(),
            counters_interval: self.session_counters_interval,
            ..crate::kubernetes::KubernetesConfig::default()
        };
        let inner = crate::kubernetes::KubernetesRuntime::new(client, config, metrics);
        Ok((crate::runtime::kubernetes::KubernetesWorkerRuntime::new(inner.clone()), inner))
    }

    pub async fn run(self) -> anyhow::Result<()> {
        init_logging();
        let confirm_key = self.confirm_key_file.as_deref().map(crate::approvals_carry::read_confirm_key).transpose()?;
        let auth = Authenticator::new(self.auth_config()?).await?;
        let runtime_metrics = crate::kubernetes::Metrics::default();
        let (metrics, registry) = GatewayMetrics::new(runtime_metrics.clone());
        let (runtime, to_start): (Arc<dyn WorkerRuntime>, _) = match self.runtime.as_str() {
            "local" => {
                let secrets: LocalSecrets = Arc::new(std::sync::RwLock::new(BTreeMap::new()));
                (local_runtime(None, self.serve.unsafe_no_sandbox, secrets, runtime_metrics)?, None)
            }
            _ => {
                let (runtime, inner) = self.kubernetes_runtime(runtime_metrics).await?;
                (runtime, Some(inner))
            }
        };
        let audit = AuditLog::open_rotating(self.serve.audit_log.as_deref(), self.serve.max_audit_file(), true, &self.gateway_id)?;
        let settings = Settings {
            idle_timeout: self.idle_timeout,
            max_session_lifetime: self.max_session_lifetime,
            shutdown_delay: self.shutdown_delay,
            // In-cluster names vary (Service, Ingress): any Host; every request needs a bearer token.
            allowed_hosts: Vec::new(),
            ..self.serve.settings(self.listen)?
        };
        let telemetry = toolwarden_telemetry::Telemetry::from_env("toolwarden-gateway", &metrics.spans)?;
        let mut gateway = Gateway::new(settings, auth, runtime, audit, metrics, registry).with_telemetry(telemetry);
        match confirm_key {
            Some(key) => gateway = gateway.with_confirm_key(key),
            None if to_start.is_some() => tracing::warn!(
                "no --confirm-key-file: confirm tokens are valid only on the replica that issued them (the chart mounts a shared key)"
            ),
            None => {}
        }
        let gateway = Arc::new(gateway);
        if let Some(inner) = to_start {
            gateway.set_runtime_starting();
            tokio::spawn(start_kubernetes_runtime(inner, gateway.clone()));
        }
        crate::config_kube::start(gateway.clone(), self.namespaces.clone()).await?;
        let listener = tokio::net::TcpListener::bind(self.listen).await.with_context(|| format!("cannot listen on {}", self.listen))?;
        let metrics_listener = match self.metrics_listen {
            Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?),
            None => None,
        };
        tracing::info!(listen = %listener.local_addr()?, gateway_id = %self.gateway_id, "gateway listening");
        crate::serve::serve(gateway, listener, metrics_listener, crate::serve::shutdown_signal()).await
    }
}

/// Starts the kubernetes runtime (recovery of the previous run, then its background duties), retrying
/// while the API server cannot be reached or refuses: the gateway serves `/healthz` and stays unready
/// meanwhile instead of exiting into a crash loop.
async fn start_kubernetes_runtime(inner: Arc<crate::kubernetes::KubernetesRuntime>, gateway: Arc<Gateway>) {
    let mut wait = std::time::Duration::from_secs(1);
    loop {
        match inner.start().await {
            Ok(report) => {
                tracing::info!(
                    resumed = report.resumed.len(),
                    ended = report.ended.len(),
                    pods_deleted = report.pods_deleted,
                    "kubernetes runtime started; leftovers of the previous run cleaned up"
                );
                gateway.set_runtime_started();
                return;
            }
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    retry_in_seconds = wait.as_secs(),
                    "cannot start the kubernetes runtime (recovering the previous run's sessions and pods); the gateway stays unready until it can: check that the API server is reachable and that this gateway's RBAC allows McpSessions and pods"
                );
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(std::time::Duration::from_secs(30));
            }
        }
    }
}

pub use crate::approvals_client::ApprovalsArgs;
