//! The namespace work queue: watch events mark namespaces dirty; every tick the dirty ones are
//! reconciled (so a burst of 500 changes costs one compile), failures come back after a backoff, and
//! every namespace is reconciled again each resync interval.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::channel::mpsc::UnboundedReceiver;
use kube::ResourceExt;
use kube::runtime::reflector::Store;
use tokio::sync::oneshot;
use toolwarden_core::resources::{McpTool, ToolPolicy};

use super::reconcile::{CONTROLLER, reconcile_namespace, sweep_orphans};
use crate::context::Context;
use crate::error::Error;

/// How long changes are gathered before a namespace is compiled.
pub const TICK: Duration = Duration::from_millis(250);

pub struct Stores {
    pub tools: Store<McpTool>,
    pub policies: Store<ToolPolicy>,
}

impl Stores {
    fn namespaces(&self) -> BTreeSet<String> {
        let tools = self.tools.state().into_iter().filter_map(|t| t.namespace());
        tools.chain(self.policies.state().into_iter().filter_map(|p| p.namespace())).collect()
    }

    fn of(&self, namespace: &str) -> (Vec<Arc<McpTool>>, Vec<Arc<ToolPolicy>>) {
        let tools = self.tools.state().into_iter().filter(|t| t.namespace().as_deref() == Some(namespace)).collect();
        let policies = self.policies.state().into_iter().filter(|p| p.namespace().as_deref() == Some(namespace)).collect();
        (tools, policies)
    }
}

/// Runs until dropped. `first_pass` fires once every known namespace was reconciled once.
pub async fn run(ctx: Arc<Context>, stores: Stores, mut dirty: UnboundedReceiver<String>, first_pass: oneshot::Sender<()>) {
    // Never compile from a half-filled cache: that would write a config missing tools.
    if stores.tools.wait_until_ready().await.is_err() || stores.policies.wait_until_ready().await.is_err() {
        tracing::error!("the McpTool or ToolPolicy cache never became ready");
        return;
    }
    let mut pending: BTreeSet<String> = stores.namespaces();
    while let Ok(ns) = dirty.try_recv() {
        pending.insert(ns);
    }
    let mut retry: BTreeMap<String, Instant> = BTreeMap::new();
    let mut sweep = pending.clone();
    process(&ctx, &stores, &mut pending, &mut retry, &mut sweep).await;
    let _ = first_pass.send(());

    let mut tick = tokio::time::interval(TICK);
    let mut resync = tokio::time::interval(ctx.settings.resync_interval);
    resync.reset();
    loop {
        tokio::select! {
            next = dirty.next() => match next {
                Some(ns) => { pending.insert(ns); }
                None => return,
            },
            _ = tick.tick() => {
                let now = Instant::now();
                let due: Vec<String> = retry.iter().filter(|(_, at)| **at <= now).map(|(ns, _)| ns.clone()).collect();
                for ns in due {
                    retry.remove(&ns);
                    pending.insert(ns);
                }
                process(&ctx, &stores, &mut pending, &mut retry, &mut sweep).await;
            }
            _ = resync.tick() => {
                sweep.extend(stores.namespaces());
                pending.extend(stores.namespaces());
                pending.extend(ctx.generations.lock().unwrap_or_else(|e| e.into_inner()).keys().cloned());
            }
        }
    }
}

async fn process(
    ctx: &Context,
    stores: &Stores,
    pending: &mut BTreeSet<String>,
    retry: &mut BTreeMap<String, Instant>,
    sweep: &mut BTreeSet<String>,
) {
    for namespace in std::mem::take(pending) {
        let (tools, policies) = stores.of(&namespace);
        let key = format!("namespace/{namespace}");
        let started = Instant::now();
        let result = match tokio::time::timeout(ctx.settings.reconcile_timeout, reconcile_namespace(ctx, &namespace, &tools, &policies)).await {
            Ok(result) => result,
            Err(_) => Err(Error::Timeout { object: format!("namespace {namespace}"), seconds: ctx.settings.reconcile_timeout.as_secs() }),
        };
        ctx.metrics.reconciled(CONTROLLER, started.elapsed().as_secs_f64(), result.as_ref().err().map(Error::metric_label));
        ctx.metrics.trace_reconcile(CONTROLLER, &key, started.elapsed(), result.as_ref().err());
        match result {
            Ok(outcome) => {
                ctx.succeeded(&key);
                tracing::debug!(namespace, ?outcome, "namespace reconciled");
                if sweep.remove(&namespace)
                    && let Err(e) = sweep_orphans(ctx, &namespace, &tools).await
                {
                    tracing::warn!(namespace, error = %e, "orphan sweep failed; tried again at the next resync");
                }
            }
            Err(e) => {
                let wait = ctx.failed(&key, e.is_conflict());
                tracing::warn!(namespace, error = %e, retry_in = ?wait, "namespace reconcile failed");
                retry.insert(namespace, Instant::now() + wait);
            }
        }
    }
}
