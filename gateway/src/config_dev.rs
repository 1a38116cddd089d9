//! `toolwarden dev`'s config source: a manifests directory compiled with core, watched (mtime poll every
//! 500 ms) and re-applied on change. A broken edit keeps the last good config in force, prints every
//! problem, and counts `toolwarden_config_load_failures_total`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use toolwarden_core::compiler::compile_manifests;
use toolwarden_core::config::GatewayConfig;
use toolwarden_core::manifest::load_paths;

use crate::state::Gateway;

/// Secret values by (namespace, name), shared with the local runtime (the same type as
/// `runtime::local::LocalSecrets`).
pub type LocalSecrets = Arc<std::sync::RwLock<BTreeMap<(String, String), BTreeMap<String, String>>>>;

pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// One successful load: configs per namespace and the Secrets found beside the manifests.
pub struct Loaded {
    pub configs: Vec<GatewayConfig>,
    pub secrets: BTreeMap<(String, String), BTreeMap<String, String>>,
    pub warnings: Vec<String>,
}

/// Program paths starting with `./` in exec/mcp commands (and preview commands) are made absolute
/// against the manifests directory, so the sandbox (which binds that directory read-only) finds them.
pub fn resolve_local_commands(config: &mut GatewayConfig, dir: &Path) {
    let resolve = |entries: &mut Vec<String>| {
        for entry in entries.iter_mut() {
            if let Some(rest) = entry.strip_prefix("./") {
                *entry = dir.join(rest).to_string_lossy().into_owned();
            }
        }
    };
    for tool in &mut config.tools {
        if let Some(exec) = &mut tool.runtime.exec {
            resolve(&mut exec.command);
        }
        if let Some(mcp) = &mut tool.runtime.mcp {
            resolve(&mut mcp.command);
        }
        if let Some(command) = tool.preview.as_mut().and_then(|p| p.command.as_mut()) {
            resolve(command);
        }
    }
}

/// Loads and compiles the directory; `Err` holds every problem, one per line.
pub fn load(dir: &Path) -> Result<Loaded, String> {
    let manifests = load_paths(&[dir.to_path_buf()]).map_err(|e| e.to_string())?;
    let (configs, warnings) = compile_manifests(&manifests).map_err(|e| e.to_string())?;
    let configs = configs
        .into_values()
        .map(|mut config| {
            resolve_local_commands(&mut config, dir);
            config
        })
        .collect();
    let secrets = manifests
        .secrets
        .iter()
        .map(|s| ((s.object.namespace.clone(), s.object.name.clone()), s.object.values.clone()))
        .collect();
    Ok(Loaded { configs, secrets, warnings: warnings.iter().map(|w| w.to_string()).collect() })
}

/// What changes when a manifest is edited: each YAML file's name, size and mtime.
pub fn fingerprint(dir: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "yaml" || e == "yml")
                && let Ok(meta) = entry.metadata()
            {
                out.push((path, meta.len(), meta.modified().ok()));
            }
        }
    }
    out.sort();
    out
}

/// Applies a load: every namespace's config (with `generation`), Secrets, and removes namespaces gone.
pub fn apply(gateway: &Gateway, secrets: &LocalSecrets, loaded: Loaded, generation: u64) {
    for warning in &loaded.warnings {
        tracing::warn!("{warning}");
    }
    *secrets.write().unwrap_or_else(|e| e.into_inner()) = loaded.secrets;
    let mut served = Vec::new();
    for mut config in loaded.configs {
        config.generation = generation;
        served.push(config.namespace.clone());
        let namespace = config.namespace.clone();
        if let Err(errors) = gateway.apply_config(config) {
            eprintln!("namespace {namespace}: config refused, the previous one stays in force:\n  - {}", errors.join("\n  - "));
        }
    }
    for namespace in gateway.namespaces() {
        if !served.contains(&namespace) {
            gateway.remove_config(&namespace);
        }
    }
    gateway.set_ready();
}

/// Watches `dir` until the process ends, re-applying on every change.
pub async fn watch(gateway: Arc<Gateway>, dir: PathBuf, secrets: LocalSecrets, mut generation: u64) {
    let mut seen = fingerprint(&dir);
    loop {
        tokio::time::sleep(POLL_INTERVAL).await;
        let now = fingerprint(&dir);
        if now == seen {
            continue;
        }
        seen = now;
        let dir2 = dir.clone();
        let result = tokio::task::spawn_blocking(move || load(&dir2)).await;
        match result {
            Ok(Ok(loaded)) => {
                generation += 1;
                apply(&gateway, &secrets, loaded, generation);
                eprintln!("reloaded {} (generation {generation})", dir.display());
            }
            Ok(Err(problems)) => {
                eprintln!("manifests in {} not applied; the last good config stays in force.\n{problems}", dir.display());
                for namespace in gateway.namespaces() {
                    gateway.metrics.config_failed(&namespace);
                }
            }
            Err(e) => tracing::error!(error = %e, "manifest reload task failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn examples_compile_and_local_programs_resolve_against_the_directory() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples").canonicalize().unwrap();
        let loaded = load(&dir).unwrap();
        let default = loaded.configs.iter().find(|c| c.namespace == "default").unwrap();
        let read_note = default.tools.iter().find(|t| t.name == "read_note").unwrap();
        let command = &read_note.runtime.exec.as_ref().unwrap().command;
        assert_eq!(command[0], "python3");
        assert_eq!(Path::new(&command[1]), dir.join("programs/notes.py"));
        assert!(loaded.secrets.contains_key(&("default".to_string(), "github-pr-writer".to_string())));
    }

    #[test]
    fn broken_manifests_report_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bad.yaml"), "apiVersion: toolwarden.dev/v1alpha1\nkind: McpTool\nmetadata: {name: x}\nspec: {}\n").unwrap();
        let problems = load(dir.path()).err().unwrap();
        assert!(problems.contains("bad.yaml"), "{problems}");
    }
}
