fn main() -> anyhow::Result<()> {
    anyhow::bail!("clonepoolctl: not built yet")
}
