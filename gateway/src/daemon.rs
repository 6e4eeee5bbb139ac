//! `sprig run` (being written).

use crate::config::Config;

/// Runs the gateway until SIGINT or SIGTERM.
pub async fn run(_config: Config) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}

/// `sprig store check`: prints a report, returns whether the store is consistent.
pub fn store_check(_config: &Config) -> anyhow::Result<bool> {
    anyhow::bail!("not yet")
}
