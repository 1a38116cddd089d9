//! `toolwarden operator`.

/// Arguments of `toolwarden operator`.
#[derive(Debug, clap::Args)]
pub struct OperatorArgs {}

impl OperatorArgs {
    pub async fn run(self) -> anyhow::Result<()> {
        anyhow::bail!("`toolwarden operator` is not built yet")
    }
}
