//! Pure parts of starting a local worker: the sandbox command line, the tool spec with its credential
//! sources, and the credentials themselves. No I/O here; `local.rs` writes and spawns.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use toolwarden_core::config::ToolConfig;

use crate::runtime::RuntimeError;

/// Limits when the tool sets none (the same defaults as worker pods).
pub const DEFAULT_MEMORY_BYTES: u64 = 256 * 1024 * 1024;
pub const DEFAULT_TMPFS_BYTES: u64 = 64 * 1024 * 1024;
pub const DEFAULT_MAX_PROCESSES: u32 = 128;
/// Host directories the sandbox shows read-only as its system (see the worker's `sandbox/root.rs`):
/// programs there need no bind of their own.
pub const SYSTEM_DIRS: &[&str] = &["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"];

/// Everything the sandbox command line depends on.
#[derive(Clone)]
pub struct SandboxPlan<'a> {
    pub tool: &'a ToolConfig,
    pub state_dir: &'a Path,
    pub worker_dir: &'a Path,
    pub manifests_dir: Option<&'a Path>,
    pub unsafe_no_sandbox: bool,
    pub token_sha256: &'a str,
    pub max_concurrent: u32,
    /// Whether the worker writes a stderr line per finished call. The gateway shows those lines only at
    /// debug level, and each one wakes it to read the pipe.
    pub log_calls: bool,
    /// Which paths exist on this machine (only existing programs are bound).
    pub exists: &'a dyn Fn(&Path) -> bool,
}

/// Arguments after the worker command: `sandbox [flags] -- serve ...`.
pub fn worker_args(plan: &SandboxPlan<'_>) -> Result<Vec<OsString>, RuntimeError> {
    let tool = plan.tool;
    let memory = quantity(tool.memory.as_deref(), DEFAULT_MEMORY_BYTES, "memory", &tool.name)?;
    let tmpfs = quantity(tool.tmp_size.as_deref(), DEFAULT_TMPFS_BYTES, "tmpSize", &tool.name)?;
    let mut args: Vec<OsString> = vec!["sandbox".into()];
    let network = network(tool);
    args.extend(["--network".into(), network.into()]);
    // The sandbox shows the system directories and nothing else of the host: the tool's own programs
    // are bound in read-only, and its worker directory (socket and credential files) read-write.
    for program in program_binds(tool, plan.manifests_dir, plan.exists) {
        args.extend(["--ro-bind".into(), program.into_os_string()]);
    }
    args.extend(["--rw-bind".into(), plan.worker_dir.as_os_str().to_owned()]);
    args.extend(["--max-processes".into(), DEFAULT_MAX_PROCESSES.to_string().into()]);
    args.extend(["--memory-bytes".into(), memory.to_string().into()]);
    args.extend(["--tmpfs-size".into(), tmpfs.to_string().into()]);
    if plan.unsafe_no_sandbox {
        args.push("--unsafe-no-sandbox".into());
    }
    args.push("--".into());
    let mut socket = OsString::from("unix:");
    socket.push(socket_path(plan.worker_dir));
    args.extend([
        "serve".into(),
        "--listen".into(),
        socket,
        "--token-sha256".into(),
        plan.token_sha256.into(),
        "--work-dir".into(),
        "/tmp".into(),
        "--max-concurrent".into(),
        plan.max_concurrent.max(1).to_string().into(),
    ]);
    if !plan.log_calls {
        args.push("--no-call-log".into());
    }
    Ok(args)
}

/// The sandbox's network: none without `egress`; with egress, a network of its own whose only way out
/// is the sandbox's egress proxy, which checks every destination against `egress` (the worker's own
/// `http` client goes through it too) — never the host's network.
pub fn network(tool: &ToolConfig) -> &'static str {
    if tool.egress.is_empty() { "none" } else { "proxy" }
}

/// The host paths a tool's programs need bound into its sandbox: every absolute path among its exec, mcp
/// and preview commands and their fixed arguments that is not in a system directory. A program inside
/// the manifests directory brings the first-level subdirectory holding it (`programs/`, for modules it
/// imports); one at the manifests directory's top level comes alone — never the directory itself,
/// whose Secrets are every tool's credentials. Any other program comes alone.
pub fn program_binds(tool: &ToolConfig, manifests_dir: Option<&Path>, exists: &dyn Fn(&Path) -> bool) -> Vec<PathBuf> {
    let runtime = &tool.runtime;
    let lists = [
        runtime.exec.as_ref().map(|e| [&e.command, &e.args]),
        runtime.mcp.as_ref().map(|m| [&m.command, &m.args]),
        tool.preview.as_ref().map(|p| [p.command.as_ref().unwrap_or(&p.args), &p.args]),
    ];
    let mut binds: Vec<PathBuf> = Vec::new();
    for entry in lists.iter().flatten().flatten().flat_map(|list| list.iter()) {
        let path = Path::new(entry);
        if !path.is_absolute() || entry.contains("{{") || SYSTEM_DIRS.iter().any(|d| path.starts_with(d)) || !exists(path) {
            continue;
        }
        let bind = match manifests_dir.and_then(|m| Some((m, path.strip_prefix(m).ok()?))) {
            Some((manifests, inside)) if inside.components().count() > 1 => {
                manifests.join(inside.components().next().map(|c| c.as_os_str()).unwrap_or_default())
            }
            _ => path.to_path_buf(),
        };
        if !binds.contains(&bind) {
            binds.push(bind);
        }
    }
    binds
}

pub fn socket_path(worker_dir: &Path) -> PathBuf {
    worker_dir.join("worker.sock")
}

/// `PATH` for the worker: only the entries inside the system directories the sandbox shows.
pub fn sandbox_path(host_path: &str) -> String {
    let visible = |dir: &str| SYSTEM_DIRS.iter().any(|d| Path::new(dir).starts_with(d));
    let kept: Vec<&str> = host_path.split(':').filter(|d| visible(d)).collect();
    if kept.is_empty() { "/usr/local/bin:/usr/bin:/bin".to_owned() } else { kept.join(":") }
}

/// The credentials of one worker: values never leave this struct except into the child's environment
/// and its 0600 files.
#[derive(Default)]
pub struct Credentials {
    /// File name under the worker's `credentials/` dir → value.
    pub files: Vec<(String, String)>,
    pub env: Vec<(String, String)>,
    /// `credentialSources` of the spec, one per credential in order.
    pub sources: Vec<serde_json::Value>,
}

/// Resolves the tool's credentials from the local Secrets of `namespace`.
pub fn credentials(
    tool: &ToolConfig,
    namespace: &str,
    secrets: &BTreeMap<(String, String), BTreeMap<String, String>>,
    credentials_dir: &Path,
) -> Result<Credentials, RuntimeError> {
    let mut out = Credentials::default();
    for (i, c) in tool.credentials.iter().enumerate() {
        let context = || format!("tool {}: credentials[{i}]", tool.name);
        let secret = secrets.get(&(namespace.to_owned(), c.secret_ref.name.clone())).ok_or_else(|| {
            RuntimeError::new(
                "missing_credential",
                format!("{}: Secret {namespace}/{} does not exist (toolwarden dev reads Secrets beside the manifests)", context(), c.secret_ref.name),
            )
        })?;
        let value = secret.get(&c.secret_ref.key).ok_or_else(|| {
            RuntimeError::new(
                "missing_credential",
                format!("{}: Secret {namespace}/{} has no key {}", context(), c.secret_ref.name, c.secret_ref.key),
            )
        })?;
        let file = match (&c.env, &c.file, &c.header) {
            (Some(env), None, None) => {
                out.env.push((env.clone(), value.clone()));
                out.sources.push(serde_json::json!({ "env": env }));
                continue;
            }
            (None, Some(file), None) => file.clone(),
            (None, None, Some(_)) => format!("header-{i}"),
            _ => {
                return Err(RuntimeError::new(
                    "invalid_tool",
                    format!("{}: needs exactly one of env, file or header", context()),
                ));
            }
        };
        if file.is_empty() || file.contains('/') || file == "." || file == ".." {
            return Err(RuntimeError::new("invalid_tool", format!("{}: file name {file:?} is not a plain name", context())));
        }
        let path = credentials_dir.join(&file);
        out.sources.push(serde_json::json!({ "path": path.to_string_lossy() }));
        out.files.push((file, value.clone()));
    }
    Ok(out)
}

/// The worker's tool spec: the compiled tool plus `credentialSources`.
pub fn tool_spec(tool: &ToolConfig, sources: Vec<serde_json::Value>) -> String {
    let mut spec = serde_json::to_value(tool).unwrap_or(serde_json::Value::Null);
    if let Some(object) = spec.as_object_mut() {
        object.insert("credentialSources".into(), serde_json::Value::Array(sources));
    }
    spec.to_string()
}

/// A Kubernetes quantity (`256Mi`, `1G`, `1.5Gi`, `1048576`) in bytes, parsed as the worker parses it.
/// Milli units (`500m`) make no sense for bytes and are refused.
pub fn quantity(value: Option<&str>, default: u64, field: &str, tool: &str) -> Result<u64, RuntimeError> {
    let Some(text) = value else { return Ok(default) };
    let bad = || RuntimeError::new("invalid_tool", format!("tool {tool}: {field} {text:?} is not a quantity such as 256Mi"));
    if text.trim().ends_with('m') {
        return Err(bad());
    }
    let bytes = toolwarden_worker::spec::parse_quantity(text).ok_or_else(bad)?;
    if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool(extra: serde_json::Value) -> ToolConfig {
        let mut base = serde_json::json!({
            "name": "read_note", "resource": "read-note", "description": "Reads a note.", "effect": "read",
            "inputSchema": {"type": "object"}, "runtime": {"exec": {"image": "x", "command": ["cat"]}},
            "timeoutMs": 10000, "maxOutputBytes": 65536, "outputTrust": "trusted"
        });
        for (k, v) in extra.as_object().unwrap() {
            base[k] = v.clone();
        }
        serde_json::from_value(base).unwrap()
    }

    fn args(tool: &ToolConfig, manifests: Option<&Path>, exists: &dyn Fn(&Path) -> bool) -> Vec<String> {
        args_logging(tool, manifests, exists, false)
    }

    fn args_logging(tool: &ToolConfig, manifests: Option<&Path>, exists: &dyn Fn(&Path) -> bool, log_calls: bool) -> Vec<String> {
        let plan = SandboxPlan {
            tool,
            state_dir: Path::new("/var/lib/tw"),
            worker_dir: Path::new("/var/lib/tw/w-1"),
            manifests_dir: manifests,
            unsafe_no_sandbox: false,
            token_sha256: "ab",
            max_concurrent: 4,
            log_calls,
            exists,
        };
        worker_args(&plan).unwrap().into_iter().map(|a| a.into_string().unwrap()).collect()
    }

    #[test]
    fn a_tool_without_egress_gets_no_network_and_only_its_programs_bound() {
        let t = tool(serde_json::json!({"memory": "128Mi",
            "runtime": {"exec": {"image": "x", "command": ["/usr/bin/python3", "/home/dev/examples/programs/notes.py"], "args": ["{{path}}"]}}}));
        let a = args(&t, Some(Path::new("/home/dev/examples")), &|_| true).join(" ");
        assert_eq!(
            a,
            "sandbox --network none --ro-bind /home/dev/examples/programs \
             --rw-bind /var/lib/tw/w-1 --max-processes 128 --memory-bytes 134217728 --tmpfs-size 67108864 \
             -- serve --listen unix:/var/lib/tw/w-1/worker.sock --token-sha256 ab --work-dir /tmp --max-concurrent 4 --no-call-log"
        );
        let logging = args_logging(&t, None, &|_| true, true).join(" ");
        assert!(logging.ends_with("--max-concurrent 4"), "a worker asked to log its calls is not told otherwise: {logging}");
    }

    #[test]
    fn a_program_beside_the_manifests_comes_alone_never_with_their_secrets() {
        let manifests = Some(Path::new("/m"));
        let t = tool(serde_json::json!({"runtime": {"mcp": {"image": "x", "command": ["/m/server.py"], "args": ["/opt/tool/run", "/m/lib/x.py"], "tool": "t"}},
            "preview": {"command": ["/m/server.py"], "args": ["--dry-run", "/usr/share/x"]}}));
        assert_eq!(program_binds(&t, manifests, &|_| true), [PathBuf::from("/m/server.py"), PathBuf::from("/opt/tool/run"), PathBuf::from("/m/lib")]);
        assert!(program_binds(&t, manifests, &|p| p != Path::new("/opt/tool/run")).iter().all(|p| p != Path::new("/opt/tool/run")), "missing paths are left out");
        let plain = tool(serde_json::json!({}));
        assert!(program_binds(&plain, manifests, &|_| true).is_empty(), "`cat` from PATH needs no bind");
    }

    #[test]
    fn egress_means_a_network_whose_only_way_out_is_the_egress_proxy() {
        let t = tool(serde_json::json!({"egress": [{"cidr": "140.82.112.0/20"}], "tmpSize": "1Gi"}));
        let a = args(&t, None, &|_| true).join(" ");
        assert!(a.starts_with("sandbox --network proxy --rw-bind"), "{a}");
        let http = tool(serde_json::json!({"egress": [{"cidr": "140.82.112.0/20"}],
            "runtime": {"http": {"method": "GET", "url": "https://api.github.com/x"}}}));
        assert_eq!(network(&http), "proxy");
        assert_eq!(network(&tool(serde_json::json!({}))), "none");
        assert!(a.contains("--tmpfs-size 1073741824"), "{a}");
        assert!(!a.contains("--ro-bind"), "{a}");
    }

    #[test]
    fn quantities_parse_and_bad_ones_are_named() {
        assert_eq!(quantity(Some("256Mi"), 0, "memory", "t").unwrap(), 268435456);
        assert_eq!(quantity(Some("1.5Gi"), 0, "memory", "t").unwrap(), 1610612736);
        assert_eq!(quantity(Some("500M"), 0, "memory", "t").unwrap(), 500_000_000);
        assert_eq!(quantity(None, 7, "memory", "t").unwrap(), 7);
        let e = quantity(Some("lots"), 0, "memory", "read_note").unwrap_err();
        assert_eq!(e.code, "invalid_tool");
        assert!(e.message.contains("read_note: memory \"lots\""), "{}", e.message);
        assert!(quantity(Some("0"), 0, "memory", "t").is_err());
        assert!(quantity(Some("5000m"), 0, "memory", "t").is_err(), "milli units are not bytes");
    }

    #[test]
    fn path_keeps_only_the_system_dirs() {
        let p = sandbox_path("/root/.pyenv/shims:/home/dev/ex/bin:/usr/local/bin:/usr/bin:/bin:/opt/x");
        assert_eq!(p, "/usr/local/bin:/usr/bin:/bin");
        assert_eq!(sandbox_path("/opt/x"), "/usr/local/bin:/usr/bin:/bin");
    }

    #[test]
    fn credentials_resolve_to_env_and_files_and_missing_ones_are_named_without_values() {
        let t = tool(serde_json::json!({"credentials": [
            {"secretRef": {"name": "gh", "key": "token"}, "env": "GITHUB_TOKEN"},
            {"secretRef": {"name": "gh", "key": "token"}, "file": "token.txt"},
            {"secretRef": {"name": "gh", "key": "token"}, "header": {"name": "Authorization", "prefix": "Bearer "}}
        ]}));
        let secrets = BTreeMap::from([(("default".to_owned(), "gh".to_owned()), BTreeMap::from([("token".to_owned(), "v4lue".to_owned())]))]);
        let c = credentials(&t, "default", &secrets, Path::new("/w/credentials")).unwrap();
        assert_eq!(c.env, vec![("GITHUB_TOKEN".to_owned(), "v4lue".to_owned())]);
        assert_eq!(c.files.iter().map(|f| f.0.as_str()).collect::<Vec<_>>(), ["token.txt", "header-2"]);
        assert_eq!(
            serde_json::Value::Array(c.sources.clone()),
            serde_json::json!([{"env": "GITHUB_TOKEN"}, {"path": "/w/credentials/token.txt"}, {"path": "/w/credentials/header-2"}])
        );
        let spec: serde_json::Value = serde_json::from_str(&tool_spec(&t, c.sources)).unwrap();
        assert_eq!(spec["credentialSources"][0], serde_json::json!({"env": "GITHUB_TOKEN"}));
        assert!(!spec.to_string().contains("v4lue"));

        let e = credentials(&t, "other", &secrets, Path::new("/w")).err().unwrap();
        assert_eq!(e.code, "missing_credential");
        assert!(e.message.contains("tool read_note: credentials[0]: Secret other/gh does not exist"), "{}", e.message);
        let no_key = BTreeMap::from([(("default".to_owned(), "gh".to_owned()), BTreeMap::new())]);
        let e = credentials(&t, "default", &no_key, Path::new("/w")).err().unwrap();
        assert!(e.message.contains("Secret default/gh has no key token"), "{}", e.message);
    }
}
