//! `toolwarden`: the operator, the gateway, the embedded default (`dev`) and the tools around them.

mod audit_cmd;
mod policy_cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "toolwarden", version, about = "Narrow, policy-checked MCP tools for AI agents, on Kubernetes or a laptop")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve examples/ (or --manifests) on a laptop: MCP gateway + local sandbox, hot reload.
    Dev(toolwarden_gateway::cli::DevArgs),
    /// Run the MCP gateway in a cluster (config from the operator's ConfigMaps).
    Gateway(Box<toolwarden_gateway::cli::GatewayArgs>),
    /// Run the operator (McpTool/ToolPolicy → NetworkPolicies, Secrets, gateway config).
    Operator(toolwarden_operator::cli::OperatorArgs),
    /// After `helm uninstall`: delete what the operator and gateways created at run time.
    Cleanup(toolwarden_operator::cleanup::CleanupArgs),
    /// Print every CRD as one multi-document YAML stream.
    Crd,
    /// Test and explain policy decisions offline.
    #[command(subcommand)]
    Policy(policy_cmd::PolicyCommand),
    /// List and decide pending human approvals on a gateway.
    Approvals(toolwarden_gateway::cli::ApprovalsArgs),
    /// Check audit logs: no line removed, changed or reordered.
    #[command(subcommand)]
    Audit(audit_cmd::AuditCommand),
}

fn main() -> ExitCode {
    // `toolwarden worker ...` is the embedded sandboxed executor (the same program as
    // `toolwarden-worker`), so the local runtime needs no second binary. It has its own argument parser.
    let mut args = std::env::args_os();
    let _program = args.next();
    if args.next().is_some_and(|first| first == "worker") {
        return toolwarden_worker::main_with_args(args.collect());
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crd => {
            print!("{}", toolwarden_core::crdgen::all_crds_yaml());
            Ok(ExitCode::SUCCESS)
        }
        Command::Policy(command) => command.run(),
        Command::Audit(command) => command.run(),
        Command::Dev(args) => block_on(args.serve.worker_threads, args.run()),
        Command::Gateway(args) => block_on(args.serve.worker_threads, args.run()),
        Command::Operator(args) => block_on(None, args.run()),
        Command::Cleanup(args) => block_on(Some(1), args.run()),
        Command::Approvals(args) => block_on(Some(1), args.run()),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `future` on a multi-threaded runtime with `threads` workers (tokio's default, the CPUs this
/// process may use, when `None`).
fn block_on(threads: Option<u16>, future: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<ExitCode> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = threads {
        builder.worker_threads(threads.into());
    }
    let runtime = builder.enable_all().build()?;
    runtime.block_on(future)?;
    Ok(ExitCode::SUCCESS)
}
