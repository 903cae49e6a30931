//! The Docker CLI as the fault tests, the soak and the bench use it: the containers of one node,
//! their removal (also when a test fails), `docker exec`, `docker kill`, and counts of volumes and
//! networks (to find leaks).

use clonepool_common::ids::PodId;
use clonepool_common::pod::ContainerRole;
use std::process::Command;

/// Runs `docker args…`; answers (success, stdout, stderr).
pub fn docker(args: &[&str]) -> (bool, String, String) {
    match Command::new("docker").args(args).output() {
        Ok(out) => (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ),
        Err(e) => (false, String::new(), format!("cannot run docker: {e}")),
    }
}

/// One container of a pod, as `docker ps -a` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodContainer {
    pub id: String,
    pub name: String,
    pub pod: String,
    pub role: String,
    /// `running`, `exited`, `created`, …
    pub state: String,
}

/// Every container (running or not) labelled with `node`.
pub fn node_containers(node: &str) -> Vec<PodContainer> {
    let (_, out, _) = docker(&[
        "ps",
        "-a",
        "--filter",
        &format!("label=clonepool.node={node}"),
        "--format",
        "{{.ID}}\t{{.Names}}\t{{.Label \"clonepool.pod\"}}\t{{.Label \"clonepool.role\"}}\t{{.State}}",
    ]);
    out.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            (f.len() == 5).then(|| PodContainer {
                id: f[0].into(),
                name: f[1].into(),
                pod: f[2].into(),
                role: f[3].into(),
                state: f[4].into(),
            })
        })
        .collect()
}

/// Removes every container of `node` (and their anonymous volumes).
pub fn remove_node_containers(node: &str) {
    let ids: Vec<String> = node_containers(node).into_iter().map(|c| c.id).collect();
    if !ids.is_empty() {
        let mut args = vec!["rm", "-f", "-v"];
        args.extend(ids.iter().map(String::as_str));
        docker(&args);
    }
}

/// Removes every container of its node when created and when dropped (even when a test fails).
pub struct NodeCleanup(pub String);

impl NodeCleanup {
    pub fn new(node: &str) -> Self {
        remove_node_containers(node);
        NodeCleanup(node.to_string())
    }
}

impl Drop for NodeCleanup {
    fn drop(&mut self) {
        remove_node_containers(&self.0);
    }
}

/// The Docker name of one container of a pod.
pub fn container_name(pod: &str, role: ContainerRole) -> String {
    match pod.parse::<PodId>() {
        Ok(id) => clonepool_agent::runtime::docker::container_name(&id, role),
        Err(_) => panic!("{pod:?} is not a pod id"),
    }
}

/// `sh -c script` as root in one container of a pod; answers (exit code, stdout + stderr).
pub fn pod_sh(pod: &str, role: ContainerRole, script: &str) -> (i32, String) {
    let out = Command::new("docker")
        .args(["exec", &container_name(pod, role), "sh", "-c", script])
        .output()
        .expect("docker exec");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// `docker kill` of one container of a pod.
pub fn kill_pod_container(pod: &str, role: ContainerRole) {
    let name = container_name(pod, role);
    let (ok, _, err) = docker(&["kill", &name]);
    assert!(ok, "docker kill {name}: {err}");
}

/// Number of volumes; `dangling`: only those no container uses.
pub fn volume_count(dangling: bool) -> usize {
    let mut args = vec!["volume", "ls", "-q"];
    if dangling {
        args.extend(["--filter", "dangling=true"]);
    }
    docker(&args).1.lines().count()
}

/// Number of Docker networks.
pub fn network_count() -> usize {
    docker(&["network", "ls", "-q"]).1.lines().count()
}

/// True when the Docker Engine answers.
pub fn engine_answers() -> bool {
    docker(&["version", "--format", "{{.Server.Version}}"]).0
}
