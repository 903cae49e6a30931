//! `clonepoolctl`: the command-line tool. Its command tree lives here; the node commands (the
//! local agent, through its debug socket) are in [`node`]. A coordinator-API half (clone, job,
//! clones, …) can be added as another module with its own `Subcommand` enum, flattened into
//! [`Command`] next to [`node::NodeCommand`].

pub mod api;
pub mod node;
pub mod protocol;
pub mod rewrite;
pub mod table;

use clap::{Parser, Subcommand};
use std::io::Write;

/// File name of the agent's debug socket inside its data dir.
pub const SOCKET_NAME: &str = "ctl.sock";

/// clonepoolctl: inspect and steer clonepool.
#[derive(Debug, Parser)]
#[command(
    name = "clonepoolctl",
    version,
    about = "Inspect and steer clonepool",
    long_about = "Inspect and steer clonepool.\n\nNode commands (status, pods, pod, reset, drain, events) talk to the clonepool-agent of this machine through the Unix socket ctl.sock in its data dir (--data-dir / CLONEPOOL_DATA_DIR).\n\nAPI commands (clone, job, cancel, clones, delete, extend, pool) call the coordinator's HTTPS API; `source .clonepool/env` (written by scripts/up) sets CLONEPOOL_URL, CLONEPOOL_TOKEN and CLONEPOOL_CA for them.\n\nsql-rewrite rewrites a site's URLs in an SQL dump (stdin to stdout).",
    subcommand_help_heading = "Commands"
)]
pub struct Cli {
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,

    #[command(flatten)]
    pub node: node::NodeArgs,

    #[command(flatten)]
    pub api: api::ApiArgs,

    #[command(subcommand)]
    pub command: Command,
}

/// Every command. Each group is a `Subcommand` enum flattened in here.
#[derive(Debug, Subcommand)]
pub enum Command {
    #[command(flatten)]
    Node(node::NodeCommand),
    #[command(flatten)]
    Api(api::ApiCommand),
    /// Rewrite a site's URLs in an SQL dump (stdin → stdout), keeping PHP serialized data valid.
    SqlRewrite(rewrite::SqlRewriteArgs),
}

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error(transparent)]
    Client(#[from] protocol::CtlClientError),
    #[error("the agent's answer has an unexpected shape: {0}")]
    Shape(#[from] serde_json::Error),
    #[error("writing output: {0}")]
    Output(#[from] std::io::Error),
    #[error(transparent)]
    Api(#[from] api::ApiCommandError),
    #[error(transparent)]
    Rewrite(#[from] clonepool_common::rewrite::RewriteError),
}

/// Runs one parsed command, writing its output to `out`.
pub fn run(cli: &Cli, out: &mut dyn Write) -> Result<(), CtlError> {
    match &cli.command {
        Command::Node(cmd) => node::run(&cli.node, cmd, cli.json, out),
        Command::Api(cmd) => api::run(&cli.api, cmd, cli.json, out),
        Command::SqlRewrite(args) => rewrite::run(args, cli.json, out),
    }
}
