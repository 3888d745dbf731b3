//! `hearth simulate` (work in progress).

#[derive(clap::Args, Debug)]
pub struct SimulateArgs {}

pub fn run(_args: SimulateArgs) -> anyhow::Result<()> {
    anyhow::bail!("`hearth simulate` is not built yet")
}
