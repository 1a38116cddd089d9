//! `exec`: run a program with argv from templates and the arguments as JSON on stdin; stdout is the result.
//! Also runs every tool's preview (dry run), which is always a program.

use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::{CallError, Tool, failure, human};
use crate::output::{STDERR_TAIL_BYTES, read_head, read_tail, shown, tail_shown};
use crate::process::{self, Ended};
use crate::protocol::{CallRequest, CallResult};
use crate::redact::Redactor;
use crate::template::expand_argv;

/// How long to wait for the output pipes to close once the call's processes are gone.
const DRAIN_GRACE: Duration = Duration::from_secs(1);

pub async fn call(tool: &Tool, request: &CallRequest, redactor: &Redactor) -> Result<CallResult, CallError> {
    let exec = tool.spec.runtime.exec.as_ref().ok_or_else(|| CallError::Internal("not an exec tool".into()))?;
    let mut argv = exec.command.clone();
    argv.extend(expand_argv(&exec.args, &request.arguments).map_err(|e| CallError::InvalidArguments(e.0))?);
    run(tool, argv, &exec.env, request, redactor).await
}

/// The preview argv: `preview.command` (default: the runtime's command) and `preview.args`.
pub async fn preview(tool: &Tool, request: &CallRequest, redactor: &Redactor) -> Result<CallResult, CallError> {
    let spec = &tool.spec;
    let Some(preview) = &spec.preview else {
        return Err(CallError::BadRequest(format!("tool {} has no preview", spec.name)));
    };
    let (default_command, env) = match (&spec.runtime.exec, &spec.runtime.mcp) {
        (Some(e), _) => (Some(&e.command), e.env.clone()),
        (_, Some(m)) => (Some(&m.command), m.env.clone()),
        _ => (None, Default::default()),
    };
    let Some(command) = preview.command.as_ref().or(default_command).filter(|c| !c.is_empty()) else {
        return Err(CallError::BadRequest(format!("tool {}: preview has no command and the runtime has none to reuse", spec.name)));
    };
    let mut argv = command.clone();
    argv.extend(expand_argv(&preview.args, &request.arguments).map_err(|e| CallError::InvalidArguments(e.0))?);
    run(tool, argv, &env, request, redactor).await
}

async fn run(
    tool: &Tool,
    argv: Vec<String>,
    static_env: &std::collections::BTreeMap<String, String>,
    request: &CallRequest,
    redactor: &Redactor,
) -> Result<CallResult, CallError> {
    let mut env = static_env.clone();
    env.extend(process::credential_env(&tool.spec).map_err(CallError::Internal)?);
    let mut program = match process::spawn(&argv, &env, &tool.session_dir, tool.limits).await {
        Ok(program) => program,
        Err(message) => return Ok(failure("spawn_failed", message)),
    };
    let child = program.child.as_mut().expect("a started program has its supervisor");
    let input = serde_json::to_vec(&request.arguments).unwrap_or_default();
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let stdin_task = tokio::spawn(async move {
        // A program that does not read its stdin closes the pipe early; that is fine.
        let _ = stdin.write_all(&input).await;
    });
    // Past the cap by the redactor's margin: a credential across the cap is redacted whole, then cut.
    let keep = tool.cap().saturating_add(redactor.margin());
    let stdout = tokio::spawn(read_head(child.stdout.take().expect("stdout is piped"), keep, u64::MAX));
    let stderr = tokio::spawn(read_tail(child.stderr.take().expect("stderr is piped"), STDERR_TAIL_BYTES + redactor.margin()));

    // Nothing a call started outlives it: when the program ends its supervisor kills what it left; on a
    // timeout it is told to kill everything (and, through `program`'s drop, when the call is abandoned).
    let waited = tokio::time::timeout(tool.timeout(), program.wait()).await;
    if waited.is_err() {
        program.stop().await;
    }
    stdin_task.abort();
    // Every process that held the pipes is gone, so they close at once; the grace only bounds the wait.
    let drained = tokio::time::timeout(DRAIN_GRACE, async { (stdout.await, stderr.await) }).await;
    let (head, err_tail) = match drained {
        Ok((head, tail)) => (head.unwrap_or_default(), tail.unwrap_or_default()),
        Err(_) => Default::default(),
    };

    let out = shown(&head.bytes, head.total, tool.cap(), redactor);
    let content = out.text;
    let mut result = CallResult {
        output_bytes: head.total,
        truncated: out.truncated_bytes > 0,
        truncated_bytes: out.truncated_bytes,
        redacted: out.redacted,
        ..CallResult::default()
    };
    let (how, code) = match waited {
        Err(_) => {
            result.is_error = true;
            result.error_code = Some("timeout".into());
            result.content = format!(
                "the call ran past its {} timeout and was stopped, with every process it started",
                human(tool.timeout())
            );
            return Ok(result);
        }
        Ok(Ended::Exit(0)) => {
            result.structured = if result.truncated { None } else { tool.structured(&content) };
            result.content = content;
            result.exit_code = Some(0);
            return Ok(result);
        }
        Ok(Ended::Exit(code)) => (format!("exited with status {code}"), Some(code)),
        Ok(Ended::Signal(libc::SIGXCPU)) => ("was stopped by its CPU time limit".to_string(), None),
        Ok(Ended::Signal(sig)) => (format!("was killed by signal {sig}"), None),
        Ok(Ended::Stopped) => ("lost its supervisor and was stopped, with every process it started".to_string(), None),
    };
    result.is_error = true;
    result.error_code = Some("exit_status".into());
    result.exit_code = code;
    let (err_text, err_redacted) = tail_shown(&err_tail, STDERR_TAIL_BYTES, redactor);
    result.redacted |= err_redacted;
    let detail = if err_text.trim().is_empty() { content } else { err_text.trim().to_string() };
    result.content = if detail.is_empty() { format!("`{}` {how}", argv[0]) } else { format!("`{}` {how}: {detail}", argv[0]) };
    Ok(result)
}
