//! `toolwarden approvals list|approve|deny`: a client of a running gateway's approvals API. Being built.

/// Arguments of `toolwarden approvals`.
#[derive(Debug, clap::Args)]
pub struct ApprovalsArgs {}

impl ApprovalsArgs {
    pub async fn run(self) -> anyhow::Result<()> {
        anyhow::bail!("`toolwarden approvals` is not built yet")
    }
}
