//! Command-line entry points of the gateway: `dev`, `gateway`, `approvals`.

/// Arguments of `toolwarden dev`.
#[derive(Debug, clap::Args)]
pub struct DevArgs {}

impl DevArgs {
    pub async fn run(self) -> anyhow::Result<()> {
        anyhow::bail!("`toolwarden dev` is not built yet")
    }
}

/// Arguments of `toolwarden gateway`.
#[derive(Debug, clap::Args)]
pub struct GatewayArgs {}

impl GatewayArgs {
    pub async fn run(self) -> anyhow::Result<()> {
        anyhow::bail!("`toolwarden gateway` is not built yet")
    }
}

pub use crate::approvals_client::ApprovalsArgs;
