//! `toolwarden approvals list|approve|deny`: a client of a running gateway's approvals API
//! (`GET /approvals`, `POST /approvals/{id}/approve|deny`). The caller authenticates with its own bearer
//! token; the gateway decides whether that subject may approve.

use std::time::Duration;

use anyhow::Context as _;
use serde::Deserialize;

/// Arguments of `toolwarden approvals`.
#[derive(Debug, clap::Args)]
pub struct ApprovalsArgs {
    /// The gateway's base URL.
    #[arg(long, env = "TOOLWARDEN_GATEWAY", default_value = "http://127.0.0.1:8080", global = true)]
    pub gateway: String,
    /// Your bearer token (a static token or a JWT).
    #[arg(long, env = "TOOLWARDEN_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    #[command(subcommand)]
    pub command: ApprovalsCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum ApprovalsCommand {
    /// List the approvals you can see (pending first).
    List {
        /// Print the server's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Approve a pending call: the agent's retry then runs it exactly once.
    Approve {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Deny a pending call.
    Deny {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
}

/// One approval as the gateway shows it.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Approval {
    pub id: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub tool: String,
    #[serde(default)]
    pub subject: String,
    #[serde(default)]
    pub session_id: String,
    #[serde(default)]
    pub arguments: serde_json::Value,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub policy: Option<String>,
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(default)]
    pub expires_at: Option<String>,
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub decided_by: Option<String>,
}

#[derive(Deserialize)]
struct ListBody {
    approvals: Vec<Approval>,
}

#[derive(Deserialize)]
struct DecisionBody {
    approval: Approval,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

impl ApprovalsArgs {
    pub async fn run(self) -> anyhow::Result<()> {
        let base = self.gateway.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            anyhow::bail!("--gateway {base}: expected an http:// or https:// URL");
        }
        let token = self
            .token
            .filter(|t| !t.is_empty())
            .context("no token: give --token or set TOOLWARDEN_TOKEN (`toolwarden dev` prints one)")?;
        let client = crate::auth::http_client(Duration::from_secs(30))?;
        match self.command {
            ApprovalsCommand::List { json } => {
                let response = client.get(format!("{base}/approvals")).bearer_auth(&token).send().await;
                let text = read(response, &base).await?;
                if json {
                    println!("{text}");
                    return Ok(());
                }
                let body: ListBody =
                    serde_json::from_str(&text).with_context(|| format!("{base}/approvals: unexpected answer"))?;
                print!("{}", table(&body.approvals));
            }
            ApprovalsCommand::Approve { id, reason } => decide(&client, &base, &token, &id, "approve", reason).await?,
            ApprovalsCommand::Deny { id, reason } => decide(&client, &base, &token, &id, "deny", reason).await?,
        }
        Ok(())
    }
}

async fn decide(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    id: &str,
    verb: &str,
    reason: Option<String>,
) -> anyhow::Result<()> {
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
        anyhow::bail!("approval id {id:?} is not valid (use an id from `toolwarden approvals list`)");
    }
    let url = format!("{base}/approvals/{id}/{verb}");
    let response = client.post(&url).bearer_auth(token).json(&serde_json::json!({ "reason": reason })).send().await;
    let text = read(response, base).await?;
    let body: DecisionBody = serde_json::from_str(&text).with_context(|| format!("{url}: unexpected answer"))?;
    let a = body.approval;
    let by = a.decided_by.map(|b| format!(" by {b}")).unwrap_or_default();
    println!("approval {} ({} for {} in {}) is now {}{by}", a.id, a.tool, a.subject, a.namespace, a.state);
    Ok(())
}

/// The body of a 2xx answer, or an error carrying the server's message.
async fn read(response: reqwest::Result<reqwest::Response>, base: &str) -> anyhow::Result<String> {
    let response = response.map_err(|e| anyhow::anyhow!("cannot reach the gateway at {base}: {}", without_url(&e)))?;
    let status = response.status();
    let text = response.text().await.with_context(|| format!("reading the answer of {base}"))?;
    if status.is_success() {
        return Ok(text);
    }
    match serde_json::from_str::<ErrorBody>(&text) {
        Ok(body) if !body.error.message.is_empty() => {
            anyhow::bail!("{} ({}, HTTP {})", body.error.message, body.error.code, status.as_u16())
        }
        _ if status.as_u16() == 401 => anyhow::bail!("the gateway refused the token (HTTP 401)"),
        _ => anyhow::bail!("the gateway answered HTTP {}: {}", status.as_u16(), text.chars().take(200).collect::<String>()),
    }
}

fn without_url(e: &reqwest::Error) -> String {
    let mut message = e.to_string();
    if let Some(url) = e.url() {
        message = message.replace(url.as_str(), "").replace(" for ", "").replace("()", "");
    }
    let source = std::error::Error::source(e).map(|s| format!(": {s}")).unwrap_or_default();
    format!("{}{source}", message.trim())
}

/// A fixed-width table, pending approvals first.
pub fn table(approvals: &[Approval]) -> String {
    if approvals.is_empty() {
        return "no approvals\n".to_owned();
    }
    let mut rows: Vec<&Approval> = approvals.iter().collect();
    rows.sort_by_key(|a| (a.state != "pending", a.created_at.clone()));
    let header = ["ID", "STATE", "NAMESPACE", "TOOL", "SUBJECT", "EXPIRES", "ARGUMENTS", "REASON"];
    let cells: Vec<[String; 8]> = rows
        .iter()
        .map(|a| {
            let mut state = a.state.clone();
            if let Some(by) = &a.decided_by {
                state = format!("{state} ({by})");
            }
            [
                a.id.clone(),
                state,
                a.namespace.clone(),
                a.tool.clone(),
                a.subject.clone(),
                a.expires_at.clone().unwrap_or_default(),
                shorten(&a.arguments.to_string(), 60),
                shorten(a.reason.as_deref().unwrap_or(""), 60),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |row: &[String]| {
        let text: Vec<String> = row.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(text.join("  ").trim_end());
        out.push('\n');
    };
    line(&header.map(str::to_owned));
    for row in &cells {
        line(row);
    }
    out
}

fn shorten(text: &str, max: usize) -> String {
    let clean: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if clean.chars().count() <= max {
        return clean;
    }
    let mut cut: String = clean.chars().take(max - 1).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    fn approval(id: &str, state: &str, created: &str) -> Approval {
        serde_json::from_value(serde_json::json!({
            "id": id, "namespace": "default", "tool": "delete_note", "subject": "alice", "sessionId": "s-1",
            "arguments": {"path": "ideas/old.md"}, "reason": "destructive tools need a human", "policy": "notes",
            "createdAt": created, "expiresAt": "2026-11-25T06:00:00Z", "state": state,
        }))
        .unwrap()
    }

    #[test]
    fn table_lists_pending_first_with_aligned_columns() {
        let mut decided = approval("a-2", "approved", "2026-11-25T04:00:00Z");
        decided.decided_by = Some("bob".into());
        let text = table(&[decided, approval("a-1", "pending", "2026-11-25T05:00:00Z")]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("ID   STATE"), "{text}");
        assert!(lines[1].starts_with("a-1  pending"), "{text}");
        assert!(lines[2].starts_with("a-2  approved (bob)"), "{text}");
        assert!(lines[1].contains(r#"{"path":"ideas/old.md"}"#), "{text}");
        assert_eq!(table(&[]), "no approvals\n");
    }

    #[test]
    fn long_values_are_shortened_and_control_characters_removed() {
        assert_eq!(shorten("a\nb", 10), "a b");
        assert_eq!(shorten(&"x".repeat(100), 10).chars().count(), 10);
    }
}
