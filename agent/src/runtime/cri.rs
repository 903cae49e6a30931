//! `CriClient`: a small CRI v1 client over the kubelet's container runtime socket (containerd's,
//! or cri-dockerd's), for [`ExecPath::Cri`](super::ExecPath::Cri), which needs no Docker Engine:
//! `RuntimeService/Version` (the health check), `ExecSync` (commands without standard input),
//! `Exec` (a one-time URL on the runtime's streaming server, for commands that read standard
//! input or stream their output), `ListContainers`, `StopContainer`, `StartContainer` and
//! `RemoveContainer`, and `ImageService/ImageStatus` (on the same socket, as containerd and
//! cri-dockerd serve it).
//!
//! The messages are written by hand with `prost` (only the fields used, same tags as the CRI v1
//! `api.proto`), so building needs no `protoc`. Unknown fields in answers are skipped by prost.
//!
//! The streaming URL is spoken to with the same WebSocket remote-command protocol the API
//! server's `pods/exec` uses (`v5.channel.k8s.io`, whose CLOSE frame ends the command's standard
//! input): [`streaming_client`] is a `kube::Client` whose every request goes to that URL, so
//! kube's exec machinery drives the stream; the API server is not involved.

use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// The CRI API version `Version` is asked with.
const CRI_API_VERSION: &str = "v1";
/// How long connecting to the runtime socket may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a `Version` or `Exec` (URL only) call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// `runtime.v1.VersionRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct VersionRequest {
    #[prost(string, tag = "1")]
    pub version: String,
}

/// `runtime.v1.VersionResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct VersionResponse {
    #[prost(string, tag = "1")]
    pub version: String,
    #[prost(string, tag = "2")]
    pub runtime_name: String,
    #[prost(string, tag = "3")]
    pub runtime_version: String,
    #[prost(string, tag = "4")]
    pub runtime_api_version: String,
}

/// `runtime.v1.ExecSyncRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ExecSyncRequest {
    #[prost(string, tag = "1")]
    pub container_id: String,
    #[prost(string, repeated, tag = "2")]
    pub cmd: Vec<String>,
    /// Seconds; 0 is no timeout.
    #[prost(int64, tag = "3")]
    pub timeout: i64,
}

/// `runtime.v1.ExecSyncResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ExecSyncResponse {
    #[prost(bytes = "vec", tag = "1")]
    pub stdout: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub stderr: Vec<u8>,
    #[prost(int32, tag = "3")]
    pub exit_code: i32,
}

/// `runtime.v1.ExecRequest` (streaming exec).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ExecRequest {
    #[prost(string, tag = "1")]
    pub container_id: String,
    #[prost(string, repeated, tag = "2")]
    pub cmd: Vec<String>,
    #[prost(bool, tag = "3")]
    pub tty: bool,
    #[prost(bool, tag = "4")]
    pub stdin: bool,
    #[prost(bool, tag = "5")]
    pub stdout: bool,
    #[prost(bool, tag = "6")]
    pub stderr: bool,
}

/// `runtime.v1.ExecResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ExecResponse {
    #[prost(string, tag = "1")]
    pub url: String,
}

/// `runtime.v1.ImageSpec`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ImageSpec {
    #[prost(string, tag = "1")]
    pub image: String,
}

/// `runtime.v1.ImageStatusRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ImageStatusRequest {
    #[prost(message, optional, tag = "1")]
    pub image: Option<ImageSpec>,
    #[prost(bool, tag = "2")]
    pub verbose: bool,
}

/// `runtime.v1.Image` (the id only).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Image {
    #[prost(string, tag = "1")]
    pub id: String,
}

/// `runtime.v1.ImageStatusResponse`: no `image` when the runtime does not hold it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ImageStatusResponse {
    #[prost(message, optional, tag = "1")]
    pub image: Option<Image>,
}

/// `runtime.v1.ContainerStateValue`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerStateValue {
    #[prost(int32, tag = "1")]
    pub state: i32,
}

/// `runtime.v1.ContainerFilter`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerFilter {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(message, optional, tag = "2")]
    pub state: Option<ContainerStateValue>,
    #[prost(string, tag = "3")]
    pub pod_sandbox_id: String,
    #[prost(map = "string, string", tag = "4")]
    pub label_selector: std::collections::HashMap<String, String>,
}

/// `runtime.v1.ListContainersRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ListContainersRequest {
    #[prost(message, optional, tag = "1")]
    pub filter: Option<ContainerFilter>,
}

/// `runtime.v1.ContainerState.CONTAINER_RUNNING`.
pub const CONTAINER_RUNNING: i32 = 1;

/// `runtime.v1.Container` (the fields used).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Container {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(int32, tag = "6")]
    pub state: i32,
    /// Nanoseconds since the epoch.
    #[prost(int64, tag = "7")]
    pub created_at: i64,
}

/// `runtime.v1.ListContainersResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ListContainersResponse {
    #[prost(message, repeated, tag = "1")]
    pub containers: Vec<Container>,
}

/// `runtime.v1.StopContainerRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StopContainerRequest {
    #[prost(string, tag = "1")]
    pub container_id: String,
    /// Seconds the container gets before it is killed.
    #[prost(int64, tag = "2")]
    pub timeout: i64,
}

/// `runtime.v1.StartContainerRequest`, `RemoveContainerRequest` (both just the id).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerIdRequest {
    #[prost(string, tag = "1")]
    pub container_id: String,
}

/// The empty answers of `StopContainer`, `StartContainer` and `RemoveContainer`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Empty {}

/// Why a CRI call failed.
#[derive(Debug, thiserror::Error)]
pub enum CriError {
    /// The socket is missing, not a socket, or nothing answers on it.
    #[error("CRI runtime socket {socket}: {message}")]
    Unreachable { socket: PathBuf, message: String },
    /// The runtime answered with a gRPC error.
    #[error("CRI {method}: {code:?}: {message}")]
    Status {
        method: &'static str,
        code: tonic::Code,
        message: String,
    },
    /// No answer within the call's deadline.
    #[error("CRI {method}: no answer within {timeout:?}")]
    Deadline {
        method: &'static str,
        timeout: Duration,
    },
    /// The streaming URL the runtime gave cannot be used.
    #[error("CRI streaming URL: {0}")]
    Streaming(String),
}

impl CriError {
    /// The runtime says the container does not exist (any more).
    pub fn is_no_such_container(&self) -> bool {
        match self {
            CriError::Status { code, message, .. } => {
                let lower = message.to_ascii_lowercase();
                *code == tonic::Code::NotFound
                    || lower.contains("no such container")
                    || lower.contains("not found")
            }
            _ => false,
        }
    }

    /// The runtime refused because the container does not run: nothing ran.
    pub fn is_not_running(&self) -> bool {
        match self {
            CriError::Status { message, .. } => {
                let lower = message.to_ascii_lowercase();
                lower.contains("not running") || lower.contains("is not in running state")
            }
            _ => false,
        }
    }
}

/// A CRI v1 `RuntimeService` client over one Unix socket. Cheap to clone (one HTTP/2
/// connection, re-established on demand).
#[derive(Clone, Debug)]
pub struct CriClient {
    channel: Channel,
    socket: PathBuf,
}

impl CriClient {
    /// Connects to the runtime socket and asks its version: fails clearly when the socket is
    /// missing or does not speak CRI v1.
    pub async fn connect(socket: &Path) -> Result<Self, CriError> {
        let unreachable = |message: String| CriError::Unreachable {
            socket: socket.to_path_buf(),
            message,
        };
        let meta = std::fs::metadata(socket).map_err(|e| unreachable(e.to_string()))?;
        {
            use std::os::unix::fs::FileTypeExt;
            if !meta.file_type().is_socket() {
                return Err(unreachable("not a Unix socket".to_string()));
            }
        }
        let endpoint = Endpoint::from_shared(format!("unix://{}", socket.display()))
            .map_err(|e| unreachable(e.to_string()))?
            .connect_timeout(CONNECT_TIMEOUT);
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| unreachable(format!("cannot connect: {e}")))?;
        let client = Self {
            channel,
            socket: socket.to_path_buf(),
        };
        client.version().await?;
        Ok(client)
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `RuntimeService/Version`: the runtime's name and versions (also the health check).
    pub async fn version(&self) -> Result<VersionResponse, CriError> {
        self.unary(
            "Version",
            VersionRequest {
                version: CRI_API_VERSION.to_string(),
            },
            CALL_TIMEOUT,
        )
        .await
    }

    /// `RuntimeService/ExecSync`: runs `cmd` in container `container_id` (a bare id, no
    /// `containerd://`) without standard input and collects its output. `timeout` goes to the
    /// runtime (whole seconds, rounded up) and bounds the wait on this side too.
    pub async fn exec_sync(
        &self,
        container_id: &str,
        cmd: Vec<String>,
        timeout: Duration,
    ) -> Result<ExecSyncResponse, CriError> {
        let request = ExecSyncRequest {
            container_id: container_id.to_string(),
            cmd,
            timeout: whole_seconds(timeout),
        };
        self.unary("ExecSync", request, timeout).await
    }

    /// `RuntimeService/Exec`: a one-time URL on the runtime's streaming server that runs `cmd`
    /// in `container_id` with standard input, output and error attached (no TTY).
    pub async fn exec_url(&self, container_id: &str, cmd: Vec<String>) -> Result<String, CriError> {
        self.exec_url_with(container_id, cmd, true).await
    }

    /// [`Self::exec_url`], standard input attached only when `stdin`.
    pub async fn exec_url_with(
        &self,
        container_id: &str,
        cmd: Vec<String>,
        stdin: bool,
    ) -> Result<String, CriError> {
        let request = ExecRequest {
            container_id: container_id.to_string(),
            cmd,
            tty: false,
            stdin,
            stdout: true,
            stderr: true,
        };
        let answer: ExecResponse = self.unary("Exec", request, CALL_TIMEOUT).await?;
        Ok(answer.url)
    }

    /// `ImageService/ImageStatus`: the runtime's id of `image`, `None` when it does not hold it.
    pub async fn image_id(&self, image: &str) -> Result<Option<String>, CriError> {
        let request = ImageStatusRequest {
            image: Some(ImageSpec {
                image: image.to_string(),
            }),
            verbose: false,
        };
        let answer: ImageStatusResponse = self.unary("ImageStatus", request, CALL_TIMEOUT).await?;
        Ok(answer.image.map(|i| i.id))
    }

    /// `RuntimeService/ListContainers`: the containers (any state) carrying all of `labels`.
    pub async fn list_containers(
        &self,
        labels: std::collections::HashMap<String, String>,
    ) -> Result<Vec<Container>, CriError> {
        let request = ListContainersRequest {
            filter: Some(ContainerFilter {
                label_selector: labels,
                ..Default::default()
            }),
        };
        let answer: ListContainersResponse =
            self.unary("ListContainers", request, CALL_TIMEOUT).await?;
        Ok(answer.containers)
    }

    /// `RuntimeService/StopContainer`: stops `container_id`, killing it after `grace` (whole
    /// seconds, rounded up).
    pub async fn stop_container(
        &self,
        container_id: &str,
        grace: Duration,
    ) -> Result<(), CriError> {
        let secs = grace.as_secs() + u64::from(grace.subsec_nanos() > 0);
        let request = StopContainerRequest {
            container_id: container_id.to_string(),
            timeout: i64::try_from(secs).unwrap_or(i64::MAX),
        };
        let _: Empty = self
            .unary(
                "StopContainer",
                request,
                CALL_TIMEOUT.saturating_add(Duration::from_secs(120 + secs)),
            )
            .await?;
        Ok(())
    }

    /// `RuntimeService/StartContainer`.
    pub async fn start_container(&self, container_id: &str) -> Result<(), CriError> {
        let request = ContainerIdRequest {
            container_id: container_id.to_string(),
        };
        let _: Empty = self
            .unary("StartContainer", request, Duration::from_secs(120))
            .await?;
        Ok(())
    }

    /// `RuntimeService/RemoveContainer`: removes `container_id`, running or not.
    pub async fn remove_container(&self, container_id: &str) -> Result<(), CriError> {
        let request = ContainerIdRequest {
            container_id: container_id.to_string(),
        };
        let _: Empty = self
            .unary("RemoveContainer", request, Duration::from_secs(120))
            .await?;
        Ok(())
    }

    async fn unary<Req, Resp>(
        &self,
        method: &'static str,
        message: Req,
        timeout: Duration,
    ) -> Result<Resp, CriError>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        let started = std::time::Instant::now();
        let status = |s: tonic::Status| {
            // The deadline passed: the runtime's own (DeadlineExceeded) or this client's (the
            // call cancelled).
            let late = started.elapsed() >= timeout;
            if s.code() == tonic::Code::DeadlineExceeded
                || (s.code() == tonic::Code::Cancelled && late)
            {
                CriError::Deadline { method, timeout }
            } else if s.code() == tonic::Code::Unavailable {
                CriError::Unreachable {
                    socket: self.socket.clone(),
                    message: s.message().to_string(),
                }
            } else {
                CriError::Status {
                    method,
                    code: s.code(),
                    message: s.message().to_string(),
                }
            }
        };
        let call = async {
            let mut grpc = tonic::client::Grpc::new(self.channel.clone());
            grpc.ready().await.map_err(|e| CriError::Unreachable {
                socket: self.socket.clone(),
                message: e.to_string(),
            })?;
            let path = tonic::codegen::http::uri::PathAndQuery::from_static(match method {
                "Version" => "/runtime.v1.RuntimeService/Version",
                "ExecSync" => "/runtime.v1.RuntimeService/ExecSync",
                "Exec" => "/runtime.v1.RuntimeService/Exec",
                "ListContainers" => "/runtime.v1.RuntimeService/ListContainers",
                "StopContainer" => "/runtime.v1.RuntimeService/StopContainer",
                "StartContainer" => "/runtime.v1.RuntimeService/StartContainer",
                "RemoveContainer" => "/runtime.v1.RuntimeService/RemoveContainer",
                "ImageStatus" => "/runtime.v1.ImageService/ImageStatus",
                _ => unreachable!("no such CRI method in this client"),
            });
            let mut request = tonic::Request::new(message);
            request.set_timeout(timeout);
            let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
            grpc.unary(request, path, codec)
                .await
                .map(tonic::Response::into_inner)
                .map_err(status)
        };
        match tokio::time::timeout(timeout, call).await {
            Ok(result) => result,
            Err(_elapsed) => Err(CriError::Deadline { method, timeout }),
        }
    }
}

/// `timeout` as the CRI's whole seconds, rounded up (0 would mean no timeout).
fn whole_seconds(timeout: Duration) -> i64 {
    let secs = timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0);
    i64::try_from(secs.max(1)).unwrap_or(i64::MAX)
}

/// A `kube::Client` that sends every request to the streaming `url` (plain HTTP, as the
/// kubelet's runtimes serve it on the node's loopback), so that kube's `Api::exec` speaks the
/// WebSocket remote-command protocol to the runtime's streaming server.
pub fn streaming_client(url: &str) -> Result<kube::Client, CriError> {
    let target: tonic::codegen::http::Uri = url
        .parse()
        .map_err(|e| CriError::Streaming(format!("{e}")))?;
    if target.scheme_str() != Some("http") {
        return Err(CriError::Streaming(format!(
            "only plain http streaming servers are supported (got scheme {:?})",
            target.scheme_str().unwrap_or_default()
        )));
    }
    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<kube::client::Body>();
    let service = tower::service_fn(
        move |mut request: tonic::codegen::http::Request<kube::client::Body>| {
            *request.uri_mut() = target.clone();
            http.request(request)
        },
    );
    Ok(kube::Client::new(service, "default"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn exec_sync_messages_use_the_cri_field_numbers() {
        let request = ExecSyncRequest {
            container_id: "abc".to_string(),
            cmd: vec!["true".to_string()],
            timeout: 5,
        };
        // field 1 (string "abc"), field 2 (string "true"), field 3 (varint 5)
        assert_eq!(
            request.encode_to_vec(),
            [0x0a, 3, b'a', b'b', b'c', 0x12, 4, b't', b'r', b'u', b'e', 0x18, 5]
        );
        let answer = ExecSyncResponse::decode(
            &[0x0a, 2, b'o', b'k', 0x12, 1, b'e', 0x18, 3, 0x22, 1, b'x'][..],
        )
        .unwrap();
        assert_eq!(answer.stdout, b"ok");
        assert_eq!(answer.stderr, b"e");
        assert_eq!(answer.exit_code, 3, "an unknown field 4 is skipped");
    }

    #[test]
    fn image_status_and_list_messages_use_the_cri_field_numbers() {
        let request = ImageStatusRequest {
            image: Some(ImageSpec {
                image: "a:b".to_string(),
            }),
            verbose: false,
        };
        // field 1 (message: field 1 string "a:b")
        assert_eq!(
            request.encode_to_vec(),
            [0x0a, 5, 0x0a, 3, b'a', b':', b'b']
        );
        let held = ImageStatusResponse::decode(&[0x0a, 4, 0x0a, 2, b'i', b'd'][..]).unwrap();
        assert_eq!(held.image.map(|i| i.id).as_deref(), Some("id"));
        let absent = ImageStatusResponse::decode(&[][..]).unwrap();
        assert_eq!(absent.image, None);
        // containers { id "c" (1), state RUNNING (6), created_at 9 (7), labels (8, skipped) }
        let listed = ListContainersResponse::decode(
            &[0x0a, 11, 0x0a, 1, b'c', 0x30, 1, 0x38, 9, 0x42, 2, 0x0a, 0][..],
        )
        .unwrap();
        assert_eq!(
            listed.containers,
            [Container {
                id: "c".to_string(),
                state: CONTAINER_RUNNING,
                created_at: 9
            }]
        );
    }

    #[test]
    fn timeouts_round_up_to_whole_seconds_and_never_to_zero() {
        assert_eq!(whole_seconds(Duration::from_secs(3)), 3);
        assert_eq!(whole_seconds(Duration::from_millis(2100)), 3);
        assert_eq!(whole_seconds(Duration::ZERO), 1);
    }

    #[test]
    fn a_missing_socket_is_refused_by_name() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let err = rt
            .block_on(CriClient::connect(Path::new(
                "/nonexistent/containerd.sock",
            )))
            .unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/containerd.sock"),
            "{err}"
        );
    }

    #[test]
    fn only_plain_http_streaming_urls_are_taken() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = rt.enter();
        assert!(streaming_client("http://127.0.0.1:1234/exec/abc").is_ok());
        assert!(streaming_client("https://127.0.0.1:1234/exec/abc").is_err());
    }
}
