//! `hearth gateway` (work in progress).

#[derive(clap::Args, Debug)]
pub struct GatewayArgs {}

pub fn run(_args: GatewayArgs) -> anyhow::Result<()> {
    anyhow::bail!("`hearth gateway` is not built yet")
}
