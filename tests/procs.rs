//! Real `clonepool-agent` and `clonepool-coordinator` processes for the fault tests, the soak and
//! the bench: started from the release binaries (the bench) or by re-running the test binary with
//! one child test selected (tests: the code under test is the code linked into that binary, never
//! a stale build), killed with SIGKILL or stopped with SIGTERM, with their resident memory and open
//! file descriptors read from /proc.

use clap::Parser;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Set (to `agent` or `coordinator`) in a re-run test binary: [`child_main`] then runs that role.
pub const CHILD_ENV: &str = "CLONEPOOL_E2E_CHILD";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Agent,
    Coordinator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Coordinator => "coordinator",
        }
    }
}

/// How agent and coordinator processes are started.
#[derive(Clone, Debug)]
pub enum Launcher {
    /// `{dir}/clonepool-agent` and `{dir}/clonepool-coordinator` (e.g. target/release).
    Binaries(PathBuf),
    /// This test binary again with only `test` selected; that test calls [`child_main`].
    TestBinary { test: String },
}

impl Launcher {
    fn command(&self, role: Role) -> Command {
        let mut command = match self {
            Launcher::Binaries(dir) => {
                Command::new(dir.join(format!("clonepool-{}", role.as_str())))
            }
            Launcher::TestBinary { test } => {
                let mut c = Command::new(std::env::current_exe().expect("the test binary's path"));
                c.args(["--exact", test, "--include-ignored", "--nocapture"])
                    .arg("--test-threads=1");
                c
            }
        };
        // The child's configuration is exactly what the caller passes: nothing inherited.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("CLONEPOOL_") {
                command.env_remove(key);
            }
        }
        if let Launcher::TestBinary { .. } = self {
            command.env(CHILD_ENV, role.as_str());
        }
        command
    }
}

/// A started agent or coordinator process; SIGKILLed when dropped while it runs.
pub struct Proc {
    pub role: Role,
    child: Child,
    pub log: PathBuf,
}

impl Proc {
    /// Starts `role` with exactly `env` (plus PATH and the like), stdout and stderr appended to
    /// `log`. Returns at once; wait for the process's ports to answer.
    pub fn spawn(launcher: &Launcher, role: Role, env: &[(String, String)], log: &Path) -> Proc {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", log.display()));
        let err = out.try_clone().expect("a second handle on the log file");
        let mut command = launcher.command(role);
        command.envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the {} process: {e}", role.as_str()));
        Proc {
            role,
            child,
            log: log.to_path_buf(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// True while the process has not exited.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL, then reaps it.
    pub fn kill9(&mut self) {
        if self.running() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits up to `grace` for it to exit (SIGKILL after that). Answers the exit
    /// status when it exited by itself.
    pub fn terminate(&mut self, grace: Duration) -> Option<ExitStatus> {
        if !self.running() {
            return self.child.try_wait().ok().flatten();
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill9();
        None
    }

    /// Resident memory (VmRSS) in bytes.
    pub fn rss_bytes(&self) -> Option<u64> {
        rss_bytes(self.pid())
    }

    /// Open file descriptors.
    pub fn open_fds(&self) -> Option<usize> {
        open_fds(self.pid())
    }

    /// The last `lines` lines of the process's log (for failure messages).
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The last `lines` lines of the log at `path`, without the frames of a panic's backtrace: a
/// child that panicked shows its panic message rather than thirty lines of tokio internals.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let kept: Vec<&str> = text.lines().filter(|l| !is_backtrace_frame(l)).collect();
    kept[kept.len().saturating_sub(lines)..].join("\n")
}

/// `  12: tokio::runtime::...` or `             at /root/.cargo/...`.
fn is_backtrace_frame(line: &str) -> bool {
    let trimmed = line.trim_start();
    if trimmed.len() == line.len() {
        return false;
    }
    trimmed.starts_with("at ")
        || trimmed
            .split_once(": ")
            .is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// VmRSS of process `pid`, in bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Number of open file descriptors of process `pid`.
pub fn open_fds(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// Where [`free_port`] looks: below Kubernetes' NodePort range (30000-32767) and the usual start
/// of the kernel's ephemeral range (32768).
const TEST_PORTS: std::ops::Range<u16> = 20000..30000;

/// A TCP port free on 127.0.0.1 right now, never one the same test process handed out before, and
/// outside the kernel's ephemeral range. A process killed and restarted on a port from
/// `bind(0)` can find it taken in between: any outgoing connection may get it as its local port,
/// and keeps it for a minute in TIME_WAIT, which blocks `bind` even with SO_REUSEADDR.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    use std::sync::OnceLock;
    let range = match ephemeral_start() {
        Some(start) if start > TEST_PORTS.start => TEST_PORTS.start..start.min(TEST_PORTS.end),
        // An unusual ephemeral range leaves no room below it: take what the kernel gives.
        _ => {
            return std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .expect("a free port on 127.0.0.1")
        }
    };
    // A random start per test process: the next test binary does not walk onto the ports (and
    // their TIME_WAIT connections) of the one before.
    static NEXT: OnceLock<AtomicU16> = OnceLock::new();
    let next = NEXT.get_or_init(|| AtomicU16::new(rand::random::<u16>()));
    let size = range.end - range.start;
    for _ in 0..size {
        let port = range.start + next.fetch_add(1, Ordering::Relaxed) % size;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 in {range:?}");
}

/// The first port of the kernel's ephemeral range (`net.ipv4.ip_local_port_range`).
fn ephemeral_start() -> Option<u16> {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The body of the child test of a test binary that starts processes through
/// [`Launcher::TestBinary`]: does nothing unless [`CHILD_ENV`] is set; otherwise runs the agent or
/// the coordinator like their `main` does (configuration from `CLONEPOOL_*` variables, a
/// two-thread runtime, graceful stop on SIGTERM) and exits the process.
pub fn child_main() {
    let Ok(role) = std::env::var(CHILD_ENV) else {
        return;
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CLONEPOOL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(8)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match role.as_str() {
        "agent" => runtime.block_on(run_agent()),
        "coordinator" => runtime.block_on(run_coordinator()),
        other => panic!("{CHILD_ENV}={other}: expected agent or coordinator"),
    }
    std::process::exit(0);
}

async fn terminated() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("a SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

async fn run_agent() {
    use clonepool_agent::config::{AgentConfig, RawConfig};
    use std::sync::Arc;
    let raw = RawConfig::try_parse_from(["clonepool-agent"]).expect("agent flags from CLONEPOOL_*");
    let config = AgentConfig::from_raw(raw).expect("a valid agent configuration");
    let runtime = clonepool_agent::connecting_runtime::ConnectingRuntime::docker(
        config.docker_socket.clone(),
    );
    let agent = clonepool_agent::app::start(
        config,
        Arc::new(runtime),
        Arc::new(clonepool_agent::provision::HttpSiteProbe::new()),
    )
    .await
    .expect("the agent starts");
    terminated().await;
    agent.shutdown(clonepool_agent::app::SHUTDOWN_GRACE).await;
}

async fn run_coordinator() {
    use clonepool_coordinator::config::{Config, API_TOKEN_ENV};
    let mut config = Config::try_parse_from(["clonepool-coordinator"])
        .expect("coordinator flags from CLONEPOOL_*");
    config.api_tokens_from_env = std::env::var(API_TOKEN_ENV)
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    clonepool_coordinator::run(config, terminated())
        .await
        .expect("the coordinator runs");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_tail_shows_the_panic_message_above_its_backtrace() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("child.log");
        let mut text = String::from(
            "INFO starting\nthread 'child' panicked at procs.rs:1:1:\nthe coordinator runs: Bind { what: \"API\" }\nstack backtrace:\n",
        );
        for frame in 0..40 {
            text.push_str(&format!(
                "  {frame}: tokio::runtime::frame{frame}\n             at /root/.cargo/x.rs:{frame}:5\n"
            ));
        }
        text.push_str("note: Some details are omitted\n");
        std::fs::write(&log, text).unwrap();
        let tail = log_tail(&log, 4);
        assert_eq!(
            tail,
            "thread 'child' panicked at procs.rs:1:1:\nthe coordinator runs: Bind { what: \"API\" }\nstack backtrace:\nnote: Some details are omitted",
        );
        // A plain log line that happens to hold ": " after a number stays.
        std::fs::write(&log, "2026-12-06 10: ready\n  indented: detail\n").unwrap();
        assert_eq!(
            log_tail(&log, 5),
            "2026-12-06 10: ready\n  indented: detail"
        );
    }

    #[test]
    fn free_ports_are_distinct_bindable_and_outside_the_ephemeral_range() {
        let ports: Vec<u16> = (0..20).map(|_| free_port()).collect();
        let distinct: std::collections::HashSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), ports.len(), "{ports:?}");
        let ephemeral = ephemeral_start().expect("ip_local_port_range");
        for port in ports {
            assert!(port < ephemeral, "{port} is in the ephemeral range");
            std::net::TcpListener::bind(("127.0.0.1", port)).expect("still free");
        }
    }
}
