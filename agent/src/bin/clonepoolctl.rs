//! `clonepoolctl`: the clonepool debug CLI (see `clonepool_agent::ctl`).

use clap::Parser;
use clonepool_agent::ctl::{run, Cli};

fn main() {
    let cli = Cli::parse();
    let mut out = std::io::stdout().lock();
    if let Err(e) = run(&cli, &mut out) {
        eprintln!("clonepoolctl: {e}");
        std::process::exit(1);
    }
}
