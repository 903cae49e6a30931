//! The pool manager against FakeRuntime (in-process agent, temp data dir): filling, claiming,
//! releasing, verification, dead containers, restarts and orphans.

mod agent_support;

use agent_support::*;
use clonepool_agent::app;
use clonepool_agent::pool::PoolError;
use clonepool_agent::runtime::fake::{CallKind, RecordedCall};
use clonepool_agent::runtime::ContainerLimits;
use clonepool_agent::runtime::{ContainerRuntime, FakeRuntime, PodSpec};
use clonepool_common::agent_api::{ClaimPath, ClaimRequest};
use clonepool_common::ids::{CloneId, PodId};
use clonepool_common::pod::{ContainerRole, PodState};
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

fn claim_req(clone: &str) -> ClaimRequest {
    ClaimRequest {
        clone_id: clone.parse().unwrap(),
        clone_host: format!("{clone}.localhost:8080"),
        allow_cold: false,
    }
}

fn setup() -> (tempfile::TempDir, FakeRuntime, Arc<PodWorld>) {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeRuntime::new();
    let world = Arc::new(PodWorld::default());
    emulate_image(&fake, world.clone());
    (dir, fake, world)
}

fn state_of(agent: &app::RunningAgent, pod: &PodId) -> Option<PodState> {
    agent.pool.pod(pod).ok().map(|p| p.state)
}

#[tokio::test]
async fn the_pool_fills_to_its_warm_target_and_no_further() {
    let (dir, fake, _world) = setup();
    let agent = start_agent(&fake, dir.path(), &[]).await;
    wait_for("2 WARM pods", WAIT, || warm_count(&agent) == 2).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let cap = agent.pool.capacity().unwrap();
    assert_eq!((cap.warm, cap.starting), (2, 0), "{cap:?}");
    assert_eq!(
        fake.pod_ids().len(),
        2,
        "exactly two pods exist in the runtime"
    );
    for id in fake.pod_ids() {
        assert!(
            fake.is_running(&id, ContainerRole::Db) && fake.is_running(&id, ContainerRole::Web)
        );
    }
    agent.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_claim_is_idempotent_per_clone_and_keeps_the_pool_at_target() {
    let (dir, fake, _world) = setup();
    let agent = start_agent(&fake, dir.path(), &[]).await;
    wait_for("2 WARM pods", WAIT, || warm_count(&agent) == 2).await;

    let first = agent.pool.claim(&claim_req("shop")).await.unwrap();
    let again = agent.pool.claim(&claim_req("shop")).await.unwrap();
    assert_eq!(
        first, again,
        "a repeated claim answers the same pod and credentials"
    );
    assert_eq!(first.path, ClaimPath::Warm);
    assert_eq!(first.credentials.admin_username, "admin");
    assert!(first.credentials.admin_password.len() >= 20);
    assert!(
        first.endpoint.starts_with("http://10.88.0."),
        "{}",
        first.endpoint
    );
    assert_eq!(state_of(&agent, &first.pod_id), Some(PodState::Assigned));

    // The fresh password and the clone's URL went into the pod, on stdin only.
    let execs = fake.calls_of(CallKind::Exec);
    let claim_sql = execs.iter().find_map(|c| match c {
        RecordedCall::Exec {
            pod,
            cmd,
            stdin: Some(s),
            ..
        } if pod == &first.pod_id
            && String::from_utf8_lossy(&s.0).contains("SELECT ROW_COUNT()") =>
        {
            Some((cmd.clone(), String::from_utf8_lossy(&s.0).into_owned()))
        }
        _ => None,
    });
    let (cmd, sql) = claim_sql.expect("the claim's settings went into the pod");
    assert!(
        !cmd.join(" ").contains(&first.credentials.admin_password),
        "no secret in argv"
    );
    assert!(
        sql.contains(&format!("MD5('{}')", first.credentials.admin_password)),
        "{sql}"
    );
    assert!(sql.contains("'http://shop.localhost:8080'"), "{sql}");

    // The pool creates a new WARM pod on top of the assigned one.
    wait_for("2 WARM pods on top of the assigned one", WAIT, || {
        warm_count(&agent) == 2
    })
    .await;
    assert_eq!(fake.pod_ids().len(), 3);
    agent.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn claim_never_returns_the_same_pod_twice_under_concurrency() {
    let (dir, fake, _world) = setup();
    let agent = start_agent(
        &fake,
        dir.path(),
        &["--warm-target", "4", "--max-pods", "4"],
    )
    .await;
    wait_for("4 WARM pods", WAIT, || warm_count(&agent) == 4).await;
    let mut handles = Vec::new();
    for i in 0..8 {
        let pool = agent.pool.clone();
        handles.push(tokio::spawn(async move {
            pool.claim(&claim_req(&format!("c{i}"))).await
        }));
    }
    let mut pods = HashSet::new();
    let mut refused = 0;
    for h in handles {
        match h.await.unwrap() {
            Ok(resp) => assert!(
                pods.insert(resp.pod_id.clone()),
                "pod {} handed out twice",
                resp.pod_id
            ),
            Err(PoolError::NoWarmPod(_)) => refused += 1,
            Err(e) => panic!("unexpected claim error: {e}"),
        }
    }
    assert_eq!(pods.len(), 4);
    assert_eq!(refused, 4);
    agent.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_released_pod_is_reset_with_fresh_secrets_and_returns_to_warm() {
    let (dir, fake, world) = setup();
    let agent = start_agent(&fake, dir.path(), &[]).await;
    wait_for("2 WARM pods", WAIT, || warm_count(&agent) == 2).await;
    let claimed = agent.pool.claim(&claim_req("blog")).await.unwrap();
    agent
        .pool
        .mark_ready(&"blog".parse().unwrap())
        .await
        .unwrap();
    assert_eq!(state_of(&agent, &claimed.pod_id), Some(PodState::Ready));
    world.plant(&claimed.pod_id, "f 644 33:33 /tmp/canary");

    let resp = agent.pool.release(&"blog".parse().unwrap()).await.unwrap();
    assert_eq!(resp.pod_id, claimed.pod_id);
    assert_eq!(resp.state, PodState::Resetting);
    // A repeated release is answered while the reset runs or after it.
    let _ = agent.pool.release(&"blog".parse().unwrap()).await;
    wait_for("the released pod WARM again", WAIT, || {
        state_of(&agent, &claimed.pod_id) == Some(PodState::Warm)
    })
    .await;
    let pod = agent.pool.pod(&claimed.pod_id).unwrap();
    assert_eq!(pod.clone_id, None);
    // The pool goes back to its target (the surplus WARM pod is removed).
    wait_for("warm back to target", WAIT, || {
        let c = agent.pool.capacity().unwrap();
        c.warm == 2 && c.resetting == 0 && c.quarantined == 0
    })
    .await;

    // Two resets of the same pod got different DB passwords (on stdin, never in argv).
    let agent2_claim = agent.pool.claim(&claim_req("blog2")).await.unwrap();
    agent.pool.release(&"blog2".parse().unwrap()).await.unwrap();
    wait_for("second reset done", WAIT, || {
        agent
            .pool
            .pod(&agent2_claim.pod_id)
            .is_ok_and(|p| p.state == PodState::Warm)
            || agent.pool.pod(&agent2_claim.pod_id).is_err()
    })
    .await;
    let db_passwords: Vec<String> = fake
        .calls_of(CallKind::Exec)
        .iter()
        .filter_map(|c| match c {
            RecordedCall::Exec {
                role: ContainerRole::Web,
                cmd,
                stdin: Some(s),
                ..
            } if cmd.join(" ").contains("exec clonepool-wp-config") => {
                String::from_utf8_lossy(&s.0)
                    .lines()
                    .find_map(|l| l.strip_prefix("db_password=").map(str::to_string))
            }
            _ => None,
        })
        .collect();
    assert!(db_passwords.len() >= 2, "{db_passwords:?}");
    assert_ne!(db_passwords[0], db_passwords[1]);
    agent.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_reset_that_fails_verification_quarantines_destroys_and_replaces_the_pod() {
    let (dir, fake, world) = setup();
    let agent = start_agent(&fake, dir.path(), &[]).await;
    wait_for("2 WARM pods", WAIT, || warm_count(&agent) == 2).await;
    let claimed = agent.pool.claim(&claim_req("dirty")).await.unwrap();
    world.plant(&claimed.pod_id, "f 644 33:33 /tmp/canary-from-clone-a");
    world.resets_leave_residue.store(true, Ordering::SeqCst);
    agent.pool.release(&"dirty".parse().unwrap()).await.unwrap();

    wait_for("the dirty pod destroyed", WAIT, || {
        !fake.pod_ids().contains(&claimed.pod_id)
    })
    .await;
    assert!(
        agent.pool.pod(&claimed.pod_id).is_err(),
        "the dirty pod is forgotten"
    );
    let events = agent.pool.events(100).unwrap();
    let quarantine = events
        .iter()
        .find(|e| e.kind == "quarantined" && e.pod_id.as_deref() == Some(claimed.pod_id.as_str()))
        .expect("a quarantine event");
    assert!(
        quarantine.message.contains("canary-from-clone-a"),
        "{}",
        quarantine.message
    );
    wait_for("pool back to 2 WARM", WAIT, || warm_count(&agent) == 2).await;
    agent.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_warm_pod_whose_container_dies_is_replaced() {
    let (dir, fake, _world) = setup();
    let agent = start_agent(&fake, dir.path(), &[]).await;
    wait_for("2 WARM pods", WAIT, || warm_count(&agent) == 2).await;
    let victim = agent.pool.pods().unwrap()[0].pod_id.clone();
    assert!(fake.kill_container(&victim, ContainerRole::Web, 137));
    wait_for("the dead pod removed", WAIT, || {
        !fake.pod_ids().contains(&victim)
    })
    .await;
    wait_for("a replacement WARM", WAIT, || warm_count(&agent) == 2).await;
    assert!(agent.pool.pod(&victim).is_err());
    agent.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_serving_pod_whose_container_dies_is_reported_lost_not_dropped() {
    let (dir, fake, _world) = setup();
    let agent = start_agent(&fake, dir.path(), &[]).await;
    wait_for("2 WARM pods", WAIT, || warm_count(&agent) == 2).await;
    let claimed = agent.pool.claim(&claim_req("live")).await.unwrap();
    agent
        .pool
        .mark_ready(&"live".parse().unwrap())
        .await
        .unwrap();
    assert!(fake.kill_container(&claimed.pod_id, ContainerRole::Db, 137));
    wait_for("the pod QUARANTINED", WAIT, || {
        state_of(&agent, &claimed.pod_id) == Some(PodState::Quarantined)
    })
    .await;
    let pod = agent.pool.pod(&claimed.pod_id).unwrap();
    assert_eq!(
        pod.clone_id.as_ref().map(|c| c.as_str()),
        Some("live"),
        "still shows its clone"
    );
    let reason = pod.reason.unwrap();
    assert!(
        reason.starts_with("lost: ") && reason.contains("db container"),
        "{reason}"
    );
    assert!(agent
        .pool
        .events(50)
        .unwrap()
        .iter()
        .any(|e| e.kind == "lost"));
    // A repeated claim says so instead of handing out a dead pod.
    match agent.pool.claim(&claim_req("live")).await {
        Err(PoolError::Conflict(m)) => assert!(m.contains("lost"), "{m}"),
        other => panic!("{other:?}"),
    }
    // Releasing the lost clone removes the pod.
    agent.pool.release(&"live".parse().unwrap()).await.unwrap();
    wait_for("lost pod removed after release", WAIT, || {
        !fake.pod_ids().contains(&claimed.pod_id)
    })
    .await;
    agent.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_restart_adopts_every_pod_without_duplicates_and_keeps_claims() {
    let (dir, fake, _world) = setup();
    let agent = start_agent(&fake, dir.path(), &[]).await;
    wait_for("2 WARM pods", WAIT, || warm_count(&agent) == 2).await;
    let claimed = agent.pool.claim(&claim_req("keep")).await.unwrap();
    wait_for("3 pods", WAIT, || warm_count(&agent) == 2).await;
    let before: HashSet<PodId> = fake.pod_ids().into_iter().collect();
    agent.shutdown(Duration::from_secs(5)).await;

    let agent = start_agent(&fake, dir.path(), &[]).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after: HashSet<PodId> = fake.pod_ids().into_iter().collect();
    assert_eq!(
        before, after,
        "same pods in the runtime, none added or removed"
    );
    let cap = agent.pool.capacity().unwrap();
    assert_eq!((cap.warm, cap.assigned), (2, 1), "{cap:?}");
    let again = agent.pool.claim(&claim_req("keep")).await.unwrap();
    assert_eq!(
        again, claimed,
        "the clone keeps its pod and credentials across the restart"
    );
    agent.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_pod_unknown_to_the_state_file_is_removed_as_an_orphan() {
    let (dir, fake, _world) = setup();
    let orphan: PodId = "cp-0rphan".parse().unwrap();
    let spec = PodSpec {
        pod_id: orphan.clone(),
        node: NODE.parse().unwrap(),
        image: "clonepool/wordpress:test".into(),
        network: "clonepool".into(),
        db_limits: ContainerLimits {
            cpu_millis: 100,
            memory_bytes: 1 << 28,
        },
        web_limits: ContainerLimits {
            cpu_millis: 100,
            memory_bytes: 1 << 28,
        },
        labels: BTreeMap::new(),
    };
    fake.create_pod(&spec).await.unwrap();
    fake.start_pod(&orphan).await.unwrap();
    let agent = start_agent(&fake, dir.path(), &[]).await;
    wait_for("orphan removed", WAIT, || !fake.pod_ids().contains(&orphan)).await;
    wait_for("2 WARM pods", WAIT, || warm_count(&agent) == 2).await;
    assert!(agent
        .pool
        .events(50)
        .unwrap()
        .iter()
        .any(|e| e.kind == "orphan"));
    agent.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_pod_left_mid_reset_is_reset_again_on_restart_never_handed_out_dirty() {
    let (dir, fake, world) = setup();
    let agent = start_agent(
        &fake,
        dir.path(),
        &["--warm-target", "1", "--max-pods", "2"],
    )
    .await;
    wait_for("1 WARM pod", WAIT, || warm_count(&agent) == 1).await;
    let claimed = agent.pool.claim(&claim_req("midreset")).await.unwrap();
    wait_for("replacement WARM", WAIT, || warm_count(&agent) == 1).await;
    world.plant(&claimed.pod_id, "f 644 33:33 /tmp/canary");
    // Resets fail (as if the agent died in the middle): the pod stays RESETTING on disk.
    world.resets_fail.store(true, Ordering::SeqCst);
    fake.set_reachable(false);
    agent
        .pool
        .release(&"midreset".parse().unwrap())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    agent.shutdown(Duration::from_secs(5)).await;
    fake.set_reachable(true);
    world.resets_fail.store(false, Ordering::SeqCst);

    let agent = start_agent(
        &fake,
        dir.path(),
        &["--warm-target", "1", "--max-pods", "2"],
    )
    .await;
    wait_for("the pod reset again and WARM", WAIT, || {
        state_of(&agent, &claimed.pod_id) == Some(PodState::Warm)
    })
    .await;
    assert!(
        world.residue.lock().unwrap().get(&claimed.pod_id).is_none(),
        "the residue was cleaned"
    );
    agent.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn without_a_warm_pod_a_claim_fails_with_no_warm_pod_or_goes_cold_within_max_pods() {
    let (dir, fake, _world) = setup();
    let agent = start_agent(
        &fake,
        dir.path(),
        &["--warm-target", "0", "--max-pods", "1"],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    match agent.pool.claim(&claim_req("nowarm")).await {
        Err(PoolError::NoWarmPod(_)) => {}
        other => panic!("{other:?}"),
    }
    let mut cold = claim_req("cold");
    cold.allow_cold = true;
    let resp = agent.pool.claim(&cold).await.unwrap();
    assert_eq!(resp.path, ClaimPath::Cold);
    assert_eq!(
        agent.pool.claim(&cold).await.unwrap(),
        resp,
        "a cold claim is idempotent too"
    );
    let mut another = claim_req("cold2");
    another.allow_cold = true;
    match agent.pool.claim(&another).await {
        Err(PoolError::NoCapacity { max: 1, .. }) => {}
        other => panic!("{other:?}"),
    }
    agent.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_draining_node_refuses_new_claims_but_answers_repeats() {
    let (dir, fake, _world) = setup();
    let agent = start_agent(&fake, dir.path(), &[]).await;
    wait_for("2 WARM pods", WAIT, || warm_count(&agent) == 2).await;
    let first = agent.pool.claim(&claim_req("before")).await.unwrap();
    agent.pool.set_draining(true).unwrap();
    match agent.pool.claim(&claim_req("after")).await {
        Err(PoolError::Draining(_)) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(agent.pool.claim(&claim_req("before")).await.unwrap(), first);
    assert!(agent.pool.capacity().unwrap().draining);
    agent.shutdown(Duration::from_secs(5)).await;
    // The drain flag survives a restart.
    let agent = start_agent(&fake, dir.path(), &[]).await;
    assert!(agent.pool.is_draining());
    agent.pool.set_draining(false).unwrap();
    agent.pool.claim(&claim_req("after")).await.unwrap();
    agent.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_corrupt_state_file_stops_the_agent_with_an_error_naming_the_file() {
    let (dir, fake, _world) = setup();
    let state = dir.path().join("agent.sqlite");
    std::fs::write(&state, vec![0x42u8; 8192]).unwrap();
    let err = app::start(
        config(dir.path(), &[]),
        Arc::new(fake.clone()),
        Arc::new(StubProbe::default()),
    )
    .await
    .unwrap_err();
    let text = err.to_string();
    assert!(text.contains(&state.display().to_string()), "{text}");
    assert!(fake.pod_ids().is_empty(), "nothing was created");
}

#[tokio::test]
async fn shutdown_waits_for_a_reset_in_flight_and_leaves_serving_pods_running() {
    let (dir, fake, _world) = setup();
    let agent = start_agent(&fake, dir.path(), &[]).await;
    wait_for("2 WARM pods", WAIT, || warm_count(&agent) == 2).await;
    let serving = agent.pool.claim(&claim_req("serving")).await.unwrap();
    let released = agent.pool.claim(&claim_req("released")).await.unwrap();
    agent
        .pool
        .release(&"released".parse().unwrap())
        .await
        .unwrap();
    let pool = agent.pool.clone();
    agent.shutdown(Duration::from_secs(10)).await;
    assert_eq!(
        pool.pod(&released.pod_id).unwrap().state,
        PodState::Warm,
        "the reset finished"
    );
    assert_eq!(pool.pod(&serving.pod_id).unwrap().state, PodState::Assigned);
    assert!(fake.is_running(&serving.pod_id, ContainerRole::Web));
    let clone: CloneId = "new".parse().unwrap();
    assert!(
        pool.claim(&claim_req(clone.as_str())).await.is_err(),
        "no claims after shutdown"
    );
}

#[tokio::test]
async fn a_pod_that_refuses_the_claim_settings_is_quarantined_and_another_pod_is_claimed() {
    let (dir, fake, world) = setup();
    let agent = start_agent(&fake, dir.path(), &[]).await;
    wait_for("2 WARM pods", WAIT, || warm_count(&agent) == 2).await;
    world.claims_fail.store(true, Ordering::SeqCst);
    let before: HashSet<PodId> = agent
        .pool
        .pods()
        .unwrap()
        .into_iter()
        .map(|p| p.pod_id)
        .collect();
    let resp = agent.pool.claim(&claim_req("retry")).await.unwrap();
    assert!(before.contains(&resp.pod_id));
    assert_eq!(state_of(&agent, &resp.pod_id), Some(PodState::Assigned));
    let quarantined = agent
        .pool
        .events(50)
        .unwrap()
        .into_iter()
        .find(|e| e.kind == "quarantined")
        .expect("the refusing pod was quarantined");
    assert_ne!(quarantined.pod_id.as_deref(), Some(resp.pod_id.as_str()));
    assert!(
        quarantined.message.contains("claim failed"),
        "{}",
        quarantined.message
    );
    wait_for("back to 2 WARM", WAIT, || warm_count(&agent) == 2).await;
    agent.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn an_adopted_warm_pod_that_no_longer_answers_is_replaced() {
    let (dir, fake, world) = setup();
    let agent = start_agent(&fake, dir.path(), &[]).await;
    wait_for("2 WARM pods", WAIT, || warm_count(&agent) == 2).await;
    agent.shutdown(Duration::from_secs(5)).await;
    let broken = fake.pod_ids()[0].clone();
    world.db_down.lock().unwrap().insert(broken.clone());

    let agent = start_agent(&fake, dir.path(), &[]).await;
    assert!(agent
        .pool
        .pod(&broken)
        .map(|p| p.state != PodState::Warm)
        .unwrap_or(true));
    wait_for("the broken pod removed", WAIT, || {
        !fake.pod_ids().contains(&broken)
    })
    .await;
    wait_for("2 WARM again", WAIT, || warm_count(&agent) == 2).await;
    agent.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn an_unreachable_runtime_at_start_fills_the_pool_once_it_answers() {
    let (dir, fake, _world) = setup();
    fake.set_reachable(false);
    let agent = start_agent(&fake, dir.path(), &[]).await;
    assert!(!agent.pool.ready().await, "not ready without the runtime");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        agent.pool.capacity().unwrap().starting,
        0,
        "nothing started blind"
    );
    fake.set_reachable(true);
    assert!(agent.pool.ready().await);
    wait_for("2 WARM pods", WAIT, || warm_count(&agent) == 2).await;
    agent.shutdown(Duration::from_secs(5)).await;
}
