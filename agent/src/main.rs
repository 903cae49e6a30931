fn main() -> anyhow::Result<()> {
    anyhow::bail!("clonepool-agent: not built yet")
}
