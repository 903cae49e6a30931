fn main() -> anyhow::Result<()> {
    anyhow::bail!("clonepool-coordinator: not built yet")
}
