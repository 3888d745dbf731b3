//! `hearth agent` (work in progress).

#[derive(clap::Args, Debug)]
pub struct AgentArgs {}

pub fn run(_args: AgentArgs) -> anyhow::Result<()> {
    anyhow::bail!("`hearth agent` is not built yet")
}
