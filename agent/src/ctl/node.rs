//! clonepoolctl's node commands: `status`, `pods`, `pod`, `reset`, `drain`, `events`, sent to the
//! local agent's debug socket and printed as tables (or JSON with `--json`).

use super::protocol::{call, CtlRequest, EventList, NodeStatus, PodDetail};
use super::table::{key_values, or_dash, render};
use super::{CtlError, SOCKET_NAME};
use clap::{Args, Subcommand};
use clonepool_common::agent_api::PodSummary;
use clonepool_common::ids::PodId;
use clonepool_common::pod::PodState;
use std::io::Write;
use std::path::PathBuf;

/// Where to find the local agent.
#[derive(Debug, Clone, Args)]
pub struct NodeArgs {
    /// The agent's data dir (holds ctl.sock).
    #[arg(
        long,
        global = true,
        env = "CLONEPOOL_DATA_DIR",
        default_value = "./.clonepool/agent"
    )]
    pub data_dir: PathBuf,
}

impl NodeArgs {
    pub fn socket(&self) -> PathBuf {
        self.data_dir.join(SOCKET_NAME)
    }
}

/// Commands for the agent of this node.
#[derive(Debug, Clone, Subcommand)]
pub enum NodeCommand {
    /// The node at a glance: pods by state, draining, runtime reachable.
    Status,
    /// Every pod of the node.
    Pods,
    /// One pod in detail.
    Pod { pod_id: PodId },
    /// Reset one pod now (WARM or RESETTING; a pod serving a clone needs --force; --force
    /// removes a QUARANTINED pod, lost ones included, and the pool replaces it).
    Reset {
        pod_id: PodId,
        /// Also reset a pod that serves a clone (its clone loses it), or remove a QUARANTINED
        /// pod now.
        #[arg(long)]
        force: bool,
    },
    /// Stop taking claims and creating pods (persists across restarts); --off resumes.
    Drain {
        #[arg(long)]
        off: bool,
    },
    /// Recent events (state changes, deaths, resets), oldest first.
    Events {
        /// How many of the newest events.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

fn pod_rows(pods: &[PodSummary]) -> Vec<Vec<String>> {
    pods.iter()
        .map(|p| {
            vec![
                p.pod_id.to_string(),
                p.state.to_string(),
                or_dash(p.clone_id.as_ref().map(|c| c.as_str())),
                or_dash(p.endpoint.as_deref()),
                p.since.clone(),
                or_dash(p.reason.as_deref()),
            ]
        })
        .collect()
}

const POD_HEADER: [&str; 6] = ["POD", "STATE", "CLONE", "ENDPOINT", "SINCE", "REASON"];

/// Runs one node command.
pub fn run(
    args: &NodeArgs,
    cmd: &NodeCommand,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CtlError> {
    let request = match cmd {
        NodeCommand::Status => CtlRequest::Status,
        NodeCommand::Pods => CtlRequest::Pods,
        NodeCommand::Pod { pod_id } => CtlRequest::Pod {
            pod_id: pod_id.clone(),
        },
        NodeCommand::Reset { pod_id, force } => CtlRequest::Reset {
            pod_id: pod_id.clone(),
            force: *force,
        },
        NodeCommand::Drain { off } => CtlRequest::Drain { on: !off },
        NodeCommand::Events { limit } => CtlRequest::Events { limit: *limit },
    };
    let data = call(&args.socket(), &request)?;
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&data)?)?;
        return Ok(());
    }
    let text = match cmd {
        NodeCommand::Status => {
            let s: NodeStatus = serde_json::from_value(data)?;
            let c = &s.capacity;
            key_values(&[
                ("node", s.node.clone()),
                ("agent", format!("{} (pid {}, up {}s)", s.version, s.pid, s.uptime_secs)),
                ("draining", s.draining.to_string()),
                ("runtime", if s.runtime_reachable { "reachable".into() } else { "UNREACHABLE".into() }),
                ("image", s.image.clone()),
                ("reset method", s.reset_method.clone()),
                ("warm target", s.warm_target.to_string()),
                (
                    "pods",
                    format!(
                        "{} of max {} — starting {}, warm {}, assigned {}, ready {}, resetting {}, quarantined {} ({} lost)",
                        c.starting + c.warm + c.assigned + c.ready + c.resetting + c.quarantined,
                        c.max,
                        c.starting,
                        c.warm,
                        c.assigned,
                        c.ready,
                        c.resetting,
                        c.quarantined,
                        s.lost
                    ),
                ),
                ("api", s.api_listen.clone()),
                ("admin", s.admin_listen.clone()),
                ("data dir", s.data_dir.clone()),
            ])
        }
        NodeCommand::Pods => {
            let pods: Vec<PodSummary> = serde_json::from_value(data)?;
            if pods.is_empty() {
                "no pods\n".to_string()
            } else {
                render(&POD_HEADER, &pod_rows(&pods))
            }
        }
        NodeCommand::Pod { .. } => {
            let p: PodDetail = serde_json::from_value(data)?;
            key_values(&[
                ("pod", p.summary.pod_id.to_string()),
                ("node", p.summary.node.to_string()),
                ("state", p.summary.state.to_string()),
                ("since", p.summary.since.clone()),
                (
                    "clone",
                    or_dash(p.summary.clone_id.as_ref().map(|c| c.as_str())),
                ),
                ("clone host", or_dash(p.clone_host.as_deref())),
                ("claim path", or_dash(p.claim_path.as_deref())),
                ("endpoint", or_dash(p.summary.endpoint.as_deref())),
                ("reason", or_dash(p.summary.reason.as_deref())),
                ("lost", p.lost.to_string()),
                ("reset attempts", p.reset_attempts.to_string()),
                ("created", p.created_at.clone()),
                ("pristine", or_dash(p.pristine_fingerprint.as_deref())),
                ("busy", p.busy.to_string()),
            ])
        }
        NodeCommand::Reset { .. } => {
            let p: PodSummary = serde_json::from_value(data)?;
            if p.state == PodState::Quarantined {
                format!(
                    "pod {} is being removed (it was QUARANTINED); the pool creates a replacement if it needs one\n",
                    p.pod_id
                )
            } else {
                format!("pod {} is {}\n", p.pod_id, p.state)
            }
        }
        NodeCommand::Drain { off } => {
            if *off {
                "node takes claims again\n".to_string()
            } else {
                "node draining: no new claims, no new pods (clonepoolctl drain --off resumes)\n"
                    .to_string()
            }
        }
        NodeCommand::Events { .. } => {
            let events: EventList = serde_json::from_value(data)?;
            if events.is_empty() {
                "no events\n".to_string()
            } else {
                render(
                    &["AT", "POD", "KIND", "MESSAGE"],
                    &events
                        .iter()
                        .map(|e| {
                            vec![
                                e.at.clone(),
                                or_dash(e.pod_id.as_deref()),
                                e.kind.clone(),
                                e.message.clone(),
                            ]
                        })
                        .collect::<Vec<_>>(),
                )
            }
        }
    };
    out.write_all(text.as_bytes())?;
    Ok(())
}
