//! Exec and archive calls on one Docker container, by name or id, shared by [`DockerRuntime`]
//! (whose pods are Docker containers it created) and [`KubeRuntime`] (whose Pods' containers are
//! Docker containers the kubelet created through cri-dockerd): both backends reach a pod's
//! containers the same way, straight through the node's Docker Engine.
//!
//! The calls answer [`CallError`], which keeps the engine's own error so each backend can map a
//! missing container to its own typed error (a Docker pod's container names versus a Kubernetes
//! Pod's containers found by label).
//!
//! Exec timeouts: the engine cannot kill an exec, so every command runs wrapped as
//! `timeout -s KILL <secs> <cmd…>` inside the container (GNU `timeout` kills the whole process
//! group it started), and the client additionally stops waiting shortly after the timeout. A
//! command cut off either way ends in [`CallError::TimedOut`], and nothing it started in its
//! process group outlives it. (So the image must have coreutils' `timeout`, as Debian's do.)
//!
//! [`DockerRuntime`]: super::DockerRuntime
//! [`KubeRuntime`]: super::KubeRuntime

use super::{ArchiveStream, ExecOutput, ExecRequest, RuntimeError};
use bollard::container::LogOutput;
use bollard::errors::Error as BollardError;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::query_parameters::{DownloadFromContainerOptions, UploadToContainerOptions};
use bollard::Docker;
use futures_util::stream::{self, StreamExt};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

/// How long an archive upload may take, unpacking included.
pub const UPLOAD_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// How long the client keeps waiting for an exec after its in-container timeout fired.
pub const EXEC_CLIENT_GRACE: Duration = Duration::from_secs(2);

/// Exit status of `timeout -s KILL` when it had to kill the command (128 + SIGKILL).
pub const KILLED_BY_TIMEOUT: i64 = 137;
/// Exit status of `timeout` when the command timed out and died of the signal it was sent.
pub const TIMED_OUT: i64 = 124;

/// Why a call on one container failed.
#[derive(Debug)]
pub enum CallError {
    /// The engine refused to create the exec: nothing ran (safe to try again elsewhere).
    Create(BollardError),
    /// The engine failed once the call was under way.
    Engine(BollardError),
    /// The command ran past its timeout and was killed.
    TimedOut,
    /// The tar stream handed to `put_archive` failed (not the engine's fault).
    Source(String),
    /// The request itself is unusable (e.g. an empty command).
    Invalid(String),
}

impl CallError {
    /// The engine error behind this failure, if the engine failed.
    pub fn engine(&self) -> Option<&BollardError> {
        match self {
            CallError::Create(err) | CallError::Engine(err) => Some(err),
            _ => None,
        }
    }
}

/// The command line an exec runs: `request.cmd` wrapped in `timeout -s KILL <secs>`.
pub fn timeout_wrapped(request: &ExecRequest) -> Vec<String> {
    // GNU timeout treats 0 as "no timeout": never ask for less than a millisecond.
    let secs = request.timeout.as_secs_f64().max(0.001);
    let mut cmd = vec![
        "timeout".to_string(),
        "-s".to_string(),
        "KILL".to_string(),
        format!("{secs:.3}"),
    ];
    cmd.extend(request.cmd.iter().cloned());
    cmd
}

/// Whether an exec that ended with `exit_code` after `elapsed` was cut off by its timeout.
pub fn was_cut_off(exit_code: i64, elapsed: Duration, timeout: Duration) -> bool {
    matches!(exit_code, KILLED_BY_TIMEOUT | TIMED_OUT) && elapsed >= timeout
}

/// Runs `request` in `container` through the engine's exec API.
pub async fn exec(
    docker: &Docker,
    container: &str,
    request: &ExecRequest,
) -> Result<ExecOutput, CallError> {
    if request.cmd.is_empty() {
        return Err(CallError::Invalid("exec needs a command".to_string()));
    }
    let options = CreateExecOptions {
        attach_stdin: Some(request.stdin.is_some()),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        tty: Some(false),
        cmd: Some(timeout_wrapped(request)),
        env: (!request.env.is_empty()).then(|| request.env.clone()),
        user: request.user.clone(),
        working_dir: request.workdir.clone(),
        ..Default::default()
    };
    let exec_id = docker
        .create_exec(container, options)
        .await
        .map_err(CallError::Create)?
        .id;
    let started = Instant::now();
    match tokio::time::timeout(
        request.timeout.saturating_add(EXEC_CLIENT_GRACE),
        run_exec(docker, &exec_id, request.stdin.clone()),
    )
    .await
    {
        Ok(Ok(output)) if was_cut_off(output.exit_code, started.elapsed(), request.timeout) => {
            Err(CallError::TimedOut)
        }
        Ok(Ok(output)) => Ok(output),
        Ok(Err(err)) => Err(CallError::Engine(err)),
        Err(_elapsed) => {
            await_exec_end(docker, &exec_id).await;
            Err(CallError::TimedOut)
        }
    }
}

/// Runs an exec to its end and collects what it wrote.
async fn run_exec(
    docker: &Docker,
    exec_id: &str,
    stdin: Option<bytes::Bytes>,
) -> Result<ExecOutput, BollardError> {
    let started = docker
        .start_exec(
            exec_id,
            Some(StartExecOptions {
                detach: false,
                tty: false,
                output_capacity: None,
            }),
        )
        .await?;
    let StartExecResults::Attached {
        mut output,
        mut input,
    } = started
    else {
        return Err(BollardError::DockerStreamError {
            error: "exec started detached".to_string(),
        });
    };
    let feed = async move {
        if let Some(bytes) = stdin {
            // The command may exit without reading all of it; that is its business.
            let _ = input.write_all(&bytes).await;
            let _ = input.shutdown().await;
        }
    };
    let collect = async move {
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        while let Some(chunk) = output.next().await {
            match chunk? {
                LogOutput::StdOut { message } | LogOutput::Console { message } => {
                    stdout.extend_from_slice(&message)
                }
                LogOutput::StdErr { message } => stderr.extend_from_slice(&message),
                LogOutput::StdIn { .. } => {}
            }
        }
        Ok::<_, BollardError>((stdout, stderr))
    };
    let ((), collected) = tokio::join!(feed, collect);
    let (stdout, stderr) = collected?;
    // The stream ends when the process does; the engine may take a moment to record it.
    let mut exit_code = None;
    for _ in 0..100 {
        let inspect = docker.inspect_exec(exec_id).await?;
        if inspect.running != Some(true) {
            if let Some(code) = inspect.exit_code {
                exit_code = Some(code);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let exit_code = exit_code.ok_or_else(|| BollardError::DockerStreamError {
        error: "the exec's output ended but it reported no exit code".to_string(),
    })?;
    Ok(ExecOutput {
        exit_code,
        stdout,
        stderr,
    })
}

/// Waits (briefly) until an exec no longer runs, after its client-side timeout.
async fn await_exec_end(docker: &Docker, exec_id: &str) {
    let deadline = Instant::now() + EXEC_CLIENT_GRACE;
    while Instant::now() < deadline {
        match docker.inspect_exec(exec_id).await {
            Ok(inspect) if inspect.running == Some(true) => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            _ => return,
        }
    }
    tracing::warn!(exec_id, "an exec outlived its timeout");
}

/// Unpacks the tar stream `tar` into directory `dest` of `container`.
pub async fn put_archive(
    docker: &Docker,
    container: &str,
    dest: &str,
    tar: ArchiveStream,
) -> Result<(), CallError> {
    let options = UploadToContainerOptions {
        path: dest.to_string(),
        ..Default::default()
    };
    // A failing source must not read as a failing engine: remember what the stream said.
    let source_error: Arc<Mutex<Option<String>>> = Arc::default();
    let seen = source_error.clone();
    let tar = tar.inspect(move |item| {
        if let Err(err) = item {
            if let Ok(mut seen) = seen.lock() {
                seen.get_or_insert_with(|| err.to_string());
            }
        }
    });
    // The engine answers once it unpacked everything: a big archive needs more than the usual
    // request timeout.
    let docker = docker.clone().with_timeout(UPLOAD_TIMEOUT);
    match docker
        .upload_to_container(container, Some(options), bollard::body_try_stream(tar))
        .await
    {
        Ok(()) => Ok(()),
        Err(err) => match source_error.lock().ok().and_then(|mut s| s.take()) {
            Some(message) => Err(CallError::Source(format!(
                "reading the archive to put into {dest}: {message}"
            ))),
            None => Err(CallError::Engine(err)),
        },
    }
}

/// Streams `path` (file or directory) of `container` out as tar. The engine's verdict (no such
/// container or path) comes with the first item and is returned here, so callers get a typed
/// error instead of a failing stream.
pub async fn get_archive(
    docker: &Docker,
    container: &str,
    path: &str,
) -> Result<ArchiveStream, CallError> {
    let options = DownloadFromContainerOptions {
        path: path.to_string(),
    };
    let mut body = Box::pin(docker.download_from_container(container, Some(options)));
    let first = match body.next().await {
        None => return Ok(Box::pin(stream::empty())),
        Some(Ok(bytes)) => bytes,
        Some(Err(err)) => return Err(CallError::Engine(err)),
    };
    let rest = body.map(|item| item.map_err(std::io::Error::other));
    Ok(Box::pin(stream::once(async move { Ok(first) }).chain(rest)))
}

/// Whether the engine said the container does not exist.
pub fn is_no_such_container(err: &BollardError) -> bool {
    matches!(err, BollardError::DockerResponseServerError { status_code: 404, message }
        if message.to_ascii_lowercase().contains("no such container"))
}

/// Whether the engine refused because the container does not run (HTTP 409).
pub fn is_not_running(err: &BollardError) -> bool {
    matches!(err, BollardError::DockerResponseServerError { status_code: 409, message }
        if message.to_ascii_lowercase().contains("not running"))
}

/// Maps an engine error with no better context: connection trouble is `Unreachable`.
pub fn engine_error(err: BollardError) -> RuntimeError {
    match err {
        BollardError::DockerResponseServerError {
            status_code,
            message,
        } => RuntimeError::Engine(format!("{message} (HTTP {status_code})")),
        BollardError::RequestTimeoutError => {
            RuntimeError::Unreachable("the engine did not answer in time".to_string())
        }
        err @ (BollardError::SocketNotFoundError(_)
        | BollardError::IOError { .. }
        | BollardError::HyperResponseError { .. }
        | BollardError::HyperLegacyError { .. }
        | BollardError::HttpClientError { .. }
        | BollardError::UnsupportedURISchemeError { .. }) => {
            RuntimeError::Unreachable(err.to_string())
        }
        err => RuntimeError::Engine(err.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_run_under_a_kill_timeout_of_at_least_a_millisecond() {
        let request = ExecRequest::new(["mysql", "-e", "select 1"]).timeout(Duration::from_secs(5));
        assert_eq!(
            timeout_wrapped(&request),
            ["timeout", "-s", "KILL", "5.000", "mysql", "-e", "select 1"]
        );
        let zero = ExecRequest::new(["true"]).timeout(Duration::ZERO);
        assert_eq!(timeout_wrapped(&zero)[3], "0.001");
    }

    #[test]
    fn only_a_kill_status_after_the_timeout_counts_as_cut_off() {
        let timeout = Duration::from_secs(1);
        assert!(was_cut_off(137, Duration::from_millis(1001), timeout));
        assert!(was_cut_off(124, Duration::from_secs(2), timeout));
        // A command that exits 137 on its own, early, is just a failing command.
        assert!(!was_cut_off(137, Duration::from_millis(10), timeout));
        assert!(!was_cut_off(1, Duration::from_secs(2), timeout));
    }

    #[test]
    fn missing_and_stopped_containers_are_told_apart_from_other_errors() {
        let err = |status_code, message: &str| BollardError::DockerResponseServerError {
            status_code,
            message: message.to_string(),
        };
        assert!(is_no_such_container(&err(404, "No such container: abc")));
        assert!(!is_no_such_container(&err(
            404,
            "Could not find the file /x"
        )));
        assert!(is_not_running(&err(409, "Container abc is not running")));
        assert!(!is_not_running(&err(
            409,
            "Conflict. The container name is in use"
        )));
    }
}
