//! `DockerRuntime` against the real Docker Engine and the real workload image (env
//! `CLONEPOOL_IMAGE`). Every test makes its own pods (random ids, a `test-` node, label
//! `clonepool.test=true`) and removes them at the end, also when it fails.

use bollard::query_parameters::{
    KillContainerOptions, ListContainersOptions, ListNetworksOptions, ListVolumesOptions,
    RemoveContainerOptions,
};
use bytes::Bytes;
use clonepool_agent::runtime::docker::container_name;
use clonepool_agent::runtime::{
    archive_from_bytes, collect_archive, ArchiveStream, ContainerLimits, ContainerRuntime,
    DockerRuntime, ExecOutput, ExecRequest, PodInfo, PodSpec, RuntimeError, RuntimeEventKind,
};
use clonepool_common::ids::{NodeName, PodId};
use clonepool_common::pod::ContainerRole;
use futures_util::StreamExt;
use rand::{Rng, RngCore};
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::time::{Duration, Instant};

/// The shared pod network of these tests (kept between runs, like a node's).
const TEST_NETWORK: &str = "clonepool-test";

fn image() -> String {
    std::env::var("CLONEPOOL_IMAGE").unwrap_or_else(|_| {
        panic!(
            "CLONEPOOL_IMAGE is not set: build the workload image with images/wordpress/build \
             and export its reference (scripts/test does both)"
        )
    })
}

fn random_hex(len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| char::from_digit(rng.random_range(0..16), 16).unwrap())
        .collect()
}

fn new_pod_id() -> PodId {
    format!("cp-{}", random_hex(12)).parse().unwrap()
}

fn new_node() -> NodeName {
    format!("test-{}", random_hex(8)).parse().unwrap()
}

fn random_password() -> String {
    format!("Pw-{}-{}", random_hex(16), random_hex(8))
}

async fn runtime() -> DockerRuntime {
    DockerRuntime::connect(None)
        .await
        .expect("Docker Engine reachable (scripts/ensure-docker starts it)")
}

fn spec(pod: &PodId, node: &NodeName) -> PodSpec {
    let limits = ContainerLimits {
        cpu_millis: 1000,
        memory_bytes: 512 << 20,
    };
    PodSpec {
        pod_id: pod.clone(),
        node: node.clone(),
        image: image(),
        network: TEST_NETWORK.to_string(),
        db_limits: limits.clone(),
        web_limits: limits,
        labels: BTreeMap::from([("clonepool.test".to_string(), "true".to_string())]),
    }
}

/// Removes its pod when dropped, whatever happened to the test.
struct PodGuard(PodId);

impl Drop for PodGuard {
    fn drop(&mut self) {
        let pod = self.0.clone();
        // Drop may run inside the test's runtime: clean up from a thread with its own.
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let runtime = runtime().await;
                match runtime.remove_pod(&pod).await {
                    Ok(()) | Err(RuntimeError::PodNotFound(_)) => {}
                    Err(err) => eprintln!("cleanup of pod {pod} failed: {err}"),
                }
            })
        });
        let _ = cleanup.join();
    }
}

/// Creates and starts a pod on `node`; the guard removes it.
async fn running_pod(rt: &DockerRuntime, node: &NodeName) -> (PodInfo, PodGuard) {
    let pod = new_pod_id();
    let guard = PodGuard(pod.clone());
    rt.create_pod(&spec(&pod, node)).await.expect("create pod");
    let info = rt.start_pod(&pod).await.expect("start pod");
    (info, guard)
}

async fn exec(rt: &DockerRuntime, pod: &PodId, role: ContainerRole, cmd: &[&str]) -> ExecOutput {
    rt.exec(pod, role, ExecRequest::new(cmd.to_vec()))
        .await
        .unwrap_or_else(|err| panic!("exec {cmd:?}: {err}"))
}

/// Asserts exit 0, showing the command's stderr otherwise.
fn assert_ok(what: &str, output: &ExecOutput) {
    assert!(
        output.success(),
        "{what} exited {}: stdout {:?} stderr {:?}",
        output.exit_code,
        output.stdout_str(),
        output.stderr_str()
    );
}

/// Tar entries as name -> content (directories with empty content and a trailing '/').
fn tar_entries(tar_bytes: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let mut archive = tar::Archive::new(tar_bytes);
    let mut out = BTreeMap::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let mut name = entry.path().unwrap().to_string_lossy().into_owned();
        if entry.header().entry_type().is_dir() && !name.ends_with('/') {
            name.push('/');
        }
        let mut content = Vec::new();
        entry.read_to_end(&mut content).unwrap();
        out.insert(name, content);
    }
    out
}

#[tokio::test]
#[ignore = "needs Docker and the workload image: run scripts/test"]
async fn a_pod_comes_up_and_wordpress_answers_http_through_the_pod_address() {
    let rt = runtime().await;
    let (info, _guard) = running_pod(&rt, &new_node()).await;
    let pod = &info.pod_id;
    assert!(info.is_running(), "{info:?}");
    let ip = info.ip.expect("a running pod has an address");
    let site_url = format!("http://{ip}");
    let db_password = random_password();
    let title = format!("Clonepool runtime test {}", random_hex(6));

    let setup = rt
        .exec(
            pod,
            ContainerRole::Db,
            ExecRequest::new(["clonepool-db-setup"])
                .stdin(format!("{db_password}\n"))
                .timeout(Duration::from_secs(60)),
        )
        .await
        .unwrap();
    assert_ok("clonepool-db-setup", &setup);

    let config = rt
        .exec(
            pod,
            ContainerRole::Web,
            ExecRequest::new(["clonepool-wp-config"])
                .stdin(format!("db_password={db_password}\nsite_url={site_url}\n")),
        )
        .await
        .unwrap();
    assert_ok("clonepool-wp-config", &config);

    let install = rt
        .exec(
            pod,
            ContainerRole::Web,
            ExecRequest::new(["clonepool-wp-install"])
                .stdin(format!(
                    "site_url={site_url}\ntitle={title}\nadmin_user=admin\n\
                     admin_password={}\nadmin_email=admin@example.invalid\n",
                    random_password()
                ))
                .timeout(Duration::from_secs(60)),
        )
        .await
        .unwrap();
    assert_ok("clonepool-wp-install", &install);

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let (status, body) = loop {
        let answer = match http.get(format!("{site_url}/")).send().await {
            Ok(response) => {
                let status = response.status();
                Some((status, response.text().await.unwrap_or_default()))
            }
            Err(_) => None,
        };
        if let Some((status, body)) = &answer {
            if status.as_u16() == 200 && body.contains(&title) {
                break (*status, body.clone());
            }
        }
        assert!(
            Instant::now() < deadline,
            "GET {site_url}/ never answered 200 with the title; last answer {:?}",
            answer.map(|(s, b)| (s, b.chars().take(300).collect::<String>()))
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(status.as_u16(), 200);
    assert!(body.contains(&title));

    // MariaDB listens on 127.0.0.1 only: web reaches it because it shares db's namespace.
    let connect = r#"mysqli_report(MYSQLI_REPORT_OFF);
        $password = rtrim(fgets(STDIN), "\n");
        $db = @new mysqli("127.0.0.1", "wordpress", $password, "wordpress", 3306);
        exit($db->connect_errno ? 1 : 0);"#;
    let with =
        |password: String| ExecRequest::new(["php", "-r", connect]).stdin(format!("{password}\n"));
    let right = rt
        .exec(pod, ContainerRole::Web, with(db_password.clone()))
        .await
        .unwrap();
    assert_ok("mysqli connect with the password", &right);
    let wrong = rt
        .exec(pod, ContainerRole::Web, with(random_password()))
        .await
        .unwrap();
    assert_ne!(wrong.exit_code, 0, "a wrong password must not connect");
}

#[tokio::test]
#[ignore = "needs Docker and the workload image: run scripts/test"]
async fn exec_returns_stdout_stderr_and_exit_codes() {
    let rt = runtime().await;
    let (info, _guard) = running_pod(&rt, &new_node()).await;
    let pod = &info.pod_id;

    let out = exec(
        &rt,
        pod,
        ContainerRole::Web,
        &["sh", "-c", "echo out; echo err >&2; exit 3"],
    )
    .await;
    assert_eq!(out.exit_code, 3);
    assert_eq!(out.stdout_str(), "out\n");
    assert_eq!(out.stderr_str(), "err\n");

    let ok = exec(&rt, pod, ContainerRole::Db, &["true"]).await;
    assert_eq!((ok.exit_code, ok.stdout.len(), ok.stderr.len()), (0, 0, 0));

    let missing = exec(&rt, pod, ContainerRole::Web, &["no-such-command-here"]).await;
    assert_eq!(missing.exit_code, 127, "{missing:?}");

    // Large output arrives whole, in order.
    let big = exec(&rt, pod, ContainerRole::Web, &["sh", "-c", "seq 1 300000"]).await;
    assert_ok("seq", &big);
    let expected: String = (1..=300_000).map(|n| format!("{n}\n")).collect();
    assert_eq!(big.stdout.len(), expected.len());
    assert!(big.stdout == expected.as_bytes(), "seq output differs");

    let user = rt
        .exec(
            pod,
            ContainerRole::Web,
            ExecRequest::new(["id", "-un"]).user("www-data"),
        )
        .await
        .unwrap();
    assert_eq!(user.stdout_str(), "www-data\n");
    let env = rt
        .exec(
            pod,
            ContainerRole::Web,
            ExecRequest::new(["sh", "-c", "echo $CP_X"]).env("CP_X=42"),
        )
        .await
        .unwrap();
    assert_eq!(env.stdout_str(), "42\n");
}

#[tokio::test]
#[ignore = "needs Docker and the workload image: run scripts/test"]
async fn exec_feeds_stdin() {
    let rt = runtime().await;
    let (info, _guard) = running_pod(&rt, &new_node()).await;
    let pod = &info.pod_id;

    let text = rt
        .exec(
            pod,
            ContainerRole::Db,
            ExecRequest::new(["cat"]).stdin("no newline at the end"),
        )
        .await
        .unwrap();
    assert_ok("cat", &text);
    assert_eq!(text.stdout_str(), "no newline at the end");

    // Binary and large: every byte goes in, then end of input lets the command finish.
    let mut input = vec![0u8; 4 << 20];
    rand::rng().fill_bytes(&mut input);
    let echoed = rt
        .exec(
            pod,
            ContainerRole::Web,
            ExecRequest::new(["cat"]).stdin(input.clone()),
        )
        .await
        .unwrap();
    assert_ok("cat of 4 MiB", &echoed);
    assert!(
        echoed.stdout == input,
        "4 MiB through cat came back different"
    );

    let counted = rt
        .exec(
            pod,
            ContainerRole::Web,
            ExecRequest::new(["wc", "-c"]).stdin(input),
        )
        .await
        .unwrap();
    assert_eq!(counted.stdout_str().trim(), (4 << 20).to_string());

    // A command that ignores its input still ends normally.
    let ignored = rt
        .exec(
            pod,
            ContainerRole::Web,
            ExecRequest::new(["true"]).stdin(vec![7u8; 1 << 20]),
        )
        .await
        .unwrap();
    assert_eq!(ignored.exit_code, 0);
}

#[tokio::test]
#[ignore = "needs Docker and the workload image: run scripts/test"]
async fn exec_honours_its_timeout() {
    let rt = runtime().await;
    let (info, _guard) = running_pod(&rt, &new_node()).await;
    let pod = &info.pod_id;

    let started = Instant::now();
    // A background child too: nothing the command started may survive it.
    let request =
        ExecRequest::new(["sh", "-c", "sleep 30 & sleep 31; wait"]).timeout(Duration::from_secs(1));
    let result = rt.exec(pod, ContainerRole::Web, request).await;
    let took = started.elapsed();
    match result {
        Err(RuntimeError::ExecTimeout {
            pod: p,
            role,
            timeout,
        }) => {
            assert_eq!(
                (&p, role, timeout),
                (pod, ContainerRole::Web, Duration::from_secs(1))
            );
        }
        other => panic!("expected ExecTimeout, got {other:?}"),
    }
    assert!(took >= Duration::from_secs(1), "gave up early: {took:?}");
    assert!(took < Duration::from_secs(10), "took {took:?}");

    let list = "for p in /proc/[0-9]*; do cat $p/cmdline 2>/dev/null | tr '\\0' ' '; echo; done";
    let processes = exec(&rt, pod, ContainerRole::Web, &["sh", "-c", list]).await;
    assert_ok("process list", &processes);
    assert!(
        processes.stdout_str().contains("apache2"),
        "{}",
        processes.stdout_str()
    );
    assert!(
        !processes.stdout_str().contains("sleep 3"),
        "sleep still runs after the timeout:\n{}",
        processes.stdout_str()
    );

    // A command that finishes in time is untouched by the timeout wrapper.
    let quick = rt
        .exec(
            pod,
            ContainerRole::Web,
            ExecRequest::new(["sh", "-c", "sleep 0.2; echo done"]).timeout(Duration::from_secs(5)),
        )
        .await
        .unwrap();
    assert_eq!(
        (quick.exit_code, quick.stdout_str().as_str()),
        (0, "done\n")
    );
}

#[tokio::test]
#[ignore = "needs Docker and the workload image: run scripts/test"]
async fn an_archive_round_trips_byte_identical() {
    let rt = runtime().await;
    let (info, _guard) = running_pod(&rt, &new_node()).await;
    let pod = &info.pod_id;

    let mut random = vec![0u8; 5 << 20];
    rand::rng().fill_bytes(&mut random);
    let files: BTreeMap<&str, Vec<u8>> = BTreeMap::from([
        ("payload/random.bin", random),
        ("payload/nested/deeper/notes.txt", b"nested text\n".to_vec()),
        ("payload/nested/empty.dat", Vec::new()),
    ]);
    let mut builder = tar::Builder::new(Vec::new());
    for dir in ["payload/", "payload/nested/", "payload/nested/deeper/"] {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(0o755);
        header.set_size(0);
        header.set_cksum();
        builder
            .append_data(&mut header, dir, std::io::empty())
            .unwrap();
    }
    for (name, content) in &files {
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        header.set_size(content.len() as u64);
        header.set_cksum();
        builder
            .append_data(&mut header, name, content.as_slice())
            .unwrap();
    }
    let tar_bytes = Bytes::from(builder.into_inner().unwrap());
    // Sent as a stream of 64 KiB chunks, as an import would.
    let chunks: Vec<Result<Bytes, std::io::Error>> = (0..tar_bytes.len())
        .step_by(64 << 10)
        .map(|start| Ok(tar_bytes.slice(start..(start + (64 << 10)).min(tar_bytes.len()))))
        .collect();
    let stream: ArchiveStream = Box::pin(futures_util::stream::iter(chunks));
    rt.put_archive(pod, ContainerRole::Web, "/tmp", stream)
        .await
        .expect("put archive");

    let sum = exec(
        &rt,
        pod,
        ContainerRole::Web,
        &["wc", "-c", "/tmp/payload/random.bin"],
    )
    .await;
    assert_eq!(
        sum.stdout_str().split_whitespace().next(),
        Some((5 << 20).to_string().as_str())
    );

    let out = rt
        .get_archive(pod, ContainerRole::Web, "/tmp/payload")
        .await
        .expect("get archive");
    let entries = tar_entries(&collect_archive(out).await.unwrap());
    for (name, content) in &files {
        let got = entries
            .get(*name)
            .unwrap_or_else(|| panic!("{name} missing: {:?}", entries.keys()));
        assert!(
            got == content,
            "{name} differs ({} vs {} bytes)",
            got.len(),
            content.len()
        );
    }
    assert!(
        entries.contains_key("payload/nested/deeper/"),
        "{:?}",
        entries.keys()
    );

    // A single file comes back under its own name.
    let one = rt
        .get_archive(
            pod,
            ContainerRole::Web,
            "/tmp/payload/nested/deeper/notes.txt",
        )
        .await
        .unwrap();
    let one = tar_entries(&collect_archive(one).await.unwrap());
    assert_eq!(
        one.get("notes.txt").map(Vec::as_slice),
        Some(&b"nested text\n"[..])
    );

    // Paths that do not exist give typed errors, both ways.
    assert!(matches!(
        rt.get_archive(pod, ContainerRole::Web, "/tmp/not-there")
            .await,
        Err(RuntimeError::PathNotFound { .. })
    ));
    assert!(matches!(
        rt.put_archive(
            pod,
            ContainerRole::Web,
            "/not/there",
            archive_from_bytes(tar_bytes.clone())
        )
        .await,
        Err(RuntimeError::PathNotFound { .. })
    ));

    // A source that fails half-way is reported as such, not as an engine that went away.
    let failing: ArchiveStream = Box::pin(futures_util::stream::iter(vec![
        Ok(tar_bytes.slice(0..4096)),
        Err(std::io::Error::other("the source went away")),
    ]));
    match rt
        .put_archive(pod, ContainerRole::Web, "/tmp", failing)
        .await
    {
        Err(RuntimeError::Engine(message)) if message.contains("the source went away") => {}
        other => panic!("expected an Engine error naming the source, got {other:?}"),
    }
}

#[tokio::test]
#[ignore = "needs Docker and the workload image: run scripts/test"]
async fn removing_a_pod_leaves_no_container_volume_or_network_behind() {
    let rt = runtime().await;
    let docker = rt.client();
    let node = new_node();
    let (info, _guard) = running_pod(&rt, &node).await;
    let pod = &info.pod_id;
    let pod_filter = || ListContainersOptions {
        all: true,
        filters: Some(HashMap::from([(
            "label".to_string(),
            vec![format!("clonepool.pod={pod}")],
        )])),
        ..Default::default()
    };
    let network_names = || async {
        docker
            .list_networks(None::<ListNetworksOptions>)
            .await
            .unwrap()
            .into_iter()
            .filter_map(|n| n.name)
            .collect::<Vec<_>>()
    };
    let volume_names = || async {
        docker
            .list_volumes(None::<ListVolumesOptions>)
            .await
            .unwrap()
            .volumes
            .unwrap_or_default()
            .into_iter()
            .map(|v| v.name)
            .collect::<Vec<_>>()
    };

    let ours = docker.list_containers(Some(pod_filter())).await.unwrap();
    assert_eq!(ours.len(), 2, "a pod is two containers");
    // Whatever volumes the pod's containers got (the image may declare some).
    let mut pod_volumes = Vec::new();
    for container in &ours {
        let inspect = docker
            .inspect_container(
                container.id.as_deref().unwrap(),
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
            .unwrap();
        pod_volumes.extend(
            inspect
                .mounts
                .unwrap_or_default()
                .into_iter()
                .filter_map(|m| m.name),
        );
    }
    let volumes_with_pod = volume_names().await;
    assert!(pod_volumes.iter().all(|v| volumes_with_pod.contains(v)));
    // The pod only joined the shared network; no network of its own.
    let networks_with_pod = network_names().await;
    assert!(networks_with_pod.contains(&TEST_NETWORK.to_string()));
    assert!(
        !networks_with_pod.iter().any(|n| n.contains(pod.as_str())),
        "{networks_with_pod:?}"
    );

    rt.remove_pod(pod).await.expect("remove pod");

    assert!(docker
        .list_containers(Some(pod_filter()))
        .await
        .unwrap()
        .is_empty());
    let volumes_after = volume_names().await;
    let left: Vec<_> = pod_volumes
        .iter()
        .filter(|v| volumes_after.contains(v))
        .collect();
    assert!(left.is_empty(), "volumes left behind: {left:?}");
    let networks_after = network_names().await;
    assert!(!networks_after.iter().any(|n| n.contains(pod.as_str())));
    assert!(rt.list_pods(&node).await.unwrap().is_empty());
    assert!(matches!(
        rt.inspect_pod(pod).await,
        Err(RuntimeError::PodNotFound(_))
    ));
}

#[tokio::test]
#[ignore = "needs Docker and the workload image: run scripts/test"]
async fn unknown_pod_ids_give_a_typed_error() {
    let rt = runtime().await;
    let ghost = new_pod_id();
    let is_ghost = |result: Result<(), RuntimeError>, what: &str| match result {
        Err(RuntimeError::PodNotFound(p)) => assert_eq!(p, ghost, "{what}"),
        other => panic!("{what}: expected PodNotFound, got {other:?}"),
    };
    is_ghost(rt.inspect_pod(&ghost).await.map(drop), "inspect");
    is_ghost(
        rt.exec(&ghost, ContainerRole::Web, ExecRequest::new(["true"]))
            .await
            .map(drop),
        "exec",
    );
    is_ghost(rt.remove_pod(&ghost).await, "remove");
    is_ghost(
        rt.get_archive(&ghost, ContainerRole::Db, "/etc")
            .await
            .map(drop),
        "get archive",
    );
    is_ghost(
        rt.put_archive(
            &ghost,
            ContainerRole::Db,
            "/tmp",
            archive_from_bytes(Vec::new()),
        )
        .await,
        "put archive",
    );
    is_ghost(rt.start_pod(&ghost).await.map(drop), "start");
    is_ghost(rt.stop_pod(&ghost, Duration::from_secs(1)).await, "stop");
    is_ghost(
        rt.recreate_container(&ghost, ContainerRole::Db).await,
        "recreate",
    );

    // A pod that lost one container names the missing one.
    let (info, _guard) = running_pod(&rt, &new_node()).await;
    let pod = &info.pod_id;
    rt.client()
        .remove_container(
            &container_name(pod, ContainerRole::Web),
            Some(RemoveContainerOptions {
                force: true,
                v: true,
                ..Default::default()
            }),
        )
        .await
        .unwrap();
    match rt
        .exec(pod, ContainerRole::Web, ExecRequest::new(["true"]))
        .await
    {
        Err(RuntimeError::ContainerNotFound { pod: p, role }) => {
            assert_eq!((&p, role), (pod, ContainerRole::Web));
        }
        other => panic!("expected ContainerNotFound, got {other:?}"),
    }
    let partial = rt.inspect_pod(pod).await.unwrap();
    assert_eq!(partial.containers.len(), 1);
    assert!(!partial.is_running());
}

#[tokio::test]
#[ignore = "needs Docker and the workload image: run scripts/test"]
async fn events_report_a_killed_container() {
    let rt = runtime().await;
    let node = new_node();
    let mut events = rt.events(&node).await.expect("events");
    let (info, _guard) = running_pod(&rt, &node).await;
    let pod = info.pod_id.clone();

    rt.client()
        .kill_container(
            &container_name(&pod, ContainerRole::Web),
            Some(KillContainerOptions {
                signal: "SIGKILL".to_string(),
            }),
        )
        .await
        .unwrap();

    let mut seen = Vec::new();
    let died = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(event) = events.next().await {
            let event = event.expect("event");
            seen.push(event.clone());
            if event.pod_id == pod && event.role == ContainerRole::Web {
                if let RuntimeEventKind::Died { exit_code } = event.kind {
                    return exit_code;
                }
            }
        }
        panic!("the event stream ended");
    })
    .await
    .unwrap_or_else(|_| panic!("no Died event within 20 s; saw {seen:?}"));
    assert_eq!(died, Some(137));
    // The starts of both containers came through the same stream before.
    for role in [ContainerRole::Db, ContainerRole::Web] {
        assert!(
            seen.iter()
                .any(|e| e.pod_id == pod && e.role == role && e.kind == RuntimeEventKind::Started),
            "no Started for {role}: {seen:?}"
        );
    }

    let after = rt.inspect_pod(&pod).await.unwrap();
    let web = after.container(ContainerRole::Web).unwrap();
    assert!(!web.running);
    assert_eq!(web.exit_code, Some(137));
    assert!(after.container(ContainerRole::Db).unwrap().running);
}

#[tokio::test]
#[ignore = "needs Docker and the workload image: run scripts/test"]
async fn list_pods_finds_pods_by_node_label() {
    let rt = runtime().await;
    let node = new_node();
    let other = new_node();
    let (first, _g1) = running_pod(&rt, &node).await;
    let second = new_pod_id();
    let _g2 = PodGuard(second.clone());
    rt.create_pod(&spec(&second, &node)).await.unwrap(); // created, never started
    let (elsewhere, _g3) = running_pod(&rt, &other).await;

    let pods = rt.list_pods(&node).await.unwrap();
    let mut ids: Vec<&PodId> = pods.iter().map(|p| &p.pod_id).collect();
    ids.sort();
    let mut expected = vec![&first.pod_id, &second];
    expected.sort();
    assert_eq!(ids, expected);
    assert!(!pods.iter().any(|p| p.pod_id == elsewhere.pod_id));

    for pod in &pods {
        assert_eq!(pod.node, node);
        let roles: Vec<ContainerRole> = pod.containers.iter().map(|c| c.role).collect();
        assert_eq!(roles, [ContainerRole::Db, ContainerRole::Web]);
        for c in &pod.containers {
            assert_eq!(c.name, container_name(&pod.pod_id, c.role));
            assert_eq!(c.labels["clonepool.test"], "true");
        }
    }
    let running = pods.iter().find(|p| p.pod_id == first.pod_id).unwrap();
    assert!(running.is_running());
    assert_eq!(running.ip, first.ip);
    let created = pods.iter().find(|p| p.pod_id == second).unwrap();
    assert!(!created.is_running());
    assert_eq!(created.ip, None);
    // The list agrees with inspect.
    assert_eq!(running, &rt.inspect_pod(&first.pod_id).await.unwrap());
}

#[tokio::test]
#[ignore = "needs Docker and the workload image: run scripts/test"]
async fn recreating_a_container_replaces_it_fresh_and_keeps_the_pod_whole() {
    let rt = runtime().await;
    let (info, _guard) = running_pod(&rt, &new_node()).await;
    let pod = &info.pod_id;
    let id = |info: &PodInfo, role| info.container(role).unwrap().id.clone();
    for role in [ContainerRole::Db, ContainerRole::Web] {
        assert_ok(
            "marker",
            &exec(&rt, pod, role, &["touch", "/tmp/left-by-clone"]).await,
        );
    }

    rt.recreate_container(pod, ContainerRole::Web)
        .await
        .unwrap();
    let after_web = rt.inspect_pod(pod).await.unwrap();
    assert!(after_web.is_running());
    assert_ne!(
        id(&after_web, ContainerRole::Web),
        id(&info, ContainerRole::Web)
    );
    assert_eq!(
        id(&after_web, ContainerRole::Db),
        id(&info, ContainerRole::Db)
    );
    let gone = exec(
        &rt,
        pod,
        ContainerRole::Web,
        &["test", "-e", "/tmp/left-by-clone"],
    )
    .await;
    assert_eq!(
        gone.exit_code, 1,
        "the new web container starts from the image"
    );

    rt.recreate_container(pod, ContainerRole::Db).await.unwrap();
    let after_db = rt.inspect_pod(pod).await.unwrap();
    assert!(after_db.is_running(), "{after_db:?}");
    assert_ne!(
        id(&after_db, ContainerRole::Db),
        id(&info, ContainerRole::Db)
    );
    assert_ne!(
        id(&after_db, ContainerRole::Web),
        id(&after_web, ContainerRole::Web)
    );
    assert!(after_db.ip.is_some());
    let gone = exec(
        &rt,
        pod,
        ContainerRole::Db,
        &["test", "-e", "/tmp/left-by-clone"],
    )
    .await;
    assert_eq!(gone.exit_code, 1);
    for c in &after_db.containers {
        assert_eq!(
            c.labels["clonepool.test"], "true",
            "labels survive a recreate"
        );
    }
    // Web still shares db's (new) namespace: MariaDB's port answers on its loopback.
    let probe = r#"$deadline = time() + 30;
        while (!($s = @fsockopen("127.0.0.1", 3306, $e, $m, 1))) {
            if (time() > $deadline) exit(1);
            usleep(200000);
        }
        exit(0);"#;
    let reach = rt
        .exec(
            pod,
            ContainerRole::Web,
            ExecRequest::new(["php", "-r", probe]).timeout(Duration::from_secs(40)),
        )
        .await
        .unwrap();
    assert_ok("web reaches db on 127.0.0.1:3306", &reach);
}

#[tokio::test]
#[ignore = "needs Docker and the workload image: run scripts/test"]
async fn pods_cannot_reach_each_other_but_the_node_reaches_them() {
    let rt = runtime().await;
    let node = new_node();
    let (a, _ga) = running_pod(&rt, &node).await;
    let (b, _gb) = running_pod(&rt, &node).await;
    let (a_ip, b_ip) = (a.ip.unwrap(), b.ip.unwrap());
    assert_ne!(a_ip, b_ip);

    // Wait until both pods' Apache listens, seen from the node.
    for ip in [a_ip, b_ip] {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let connect = tokio::net::TcpStream::connect((ip, 80));
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(1), connect).await {
                break;
            }
            assert!(Instant::now() < deadline, "the node cannot reach {ip}:80");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let probe = |ip: std::net::IpAddr| {
        let code = format!(r#"$s = @fsockopen("{ip}", 80, $errno, $error, 2); exit($s ? 0 : 1);"#);
        ExecRequest::new(["php", "-r", code.as_str()])
    };
    let own = rt
        .exec(&a.pod_id, ContainerRole::Web, probe(a_ip))
        .await
        .unwrap();
    assert_ok("a pod reaches its own address", &own);
    let other = rt
        .exec(&a.pod_id, ContainerRole::Web, probe(b_ip))
        .await
        .unwrap();
    assert_eq!(other.exit_code, 1, "pod a reached pod b at {b_ip}:80");
}
