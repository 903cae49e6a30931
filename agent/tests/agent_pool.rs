//! The pool manager against FakeRuntime (in-process agent, temp data dir): filling, claiming,
//! releasing, verification, dead containers, restarts and orphans.

mod agent_support;

use agent_support::*;
use clonepool_agent::app;
use clonepool_agent::pool::PoolError;
use clonepool_agent::runtime::fake::{CallKind, RecordedCall};
use clonepool_agent::runtime::ContainerLimits;
use clonepool_agent::runtime::{ContainerRuntime, FakeRuntime, PodSpec};
use clonepool_common::agent_api::{ClaimPath, ClaimRequest, CloneScheme};
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
        clone_scheme: Default::default(),
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
async fn a_clone_behind_a_tls_proxy_gets_https_site_urls_while_the_pod_speaks_http() {
    let (dir, fake, _world) = setup();
    let agent = start_agent(&fake, dir.path(), &[]).await;
    wait_for("2 WARM pods", WAIT, || warm_count(&agent) == 2).await;

    let request = ClaimRequest {
        clone_scheme: CloneScheme::Https,
        ..claim_req("secure")
    };
    let claim = agent.pool.claim(&request).await.unwrap();
    assert!(claim.endpoint.starts_with("http://"), "{}", claim.endpoint);
    let claim_sql: Vec<String> = fake
        .calls_of(CallKind::Exec)
        .into_iter()
        .filter_map(|c| match c {
            RecordedCall::Exec {
                pod,
                stdin: Some(s),
                ..
            } if pod == claim.pod_id => Some(String::from_utf8_lossy(&s.0).into_owned()),
            _ => None,
        })
        .filter(|sql| sql.contains("SELECT ROW_COUNT()"))
        .collect();
    assert_eq!(claim_sql.len(), 1);
    assert!(
        claim_sql[0].contains("'https://secure.localhost:8080'"),
        "{}",
        claim_sql[0]
    );
    assert!(!claim_sql[0].contains("'http://secure.localhost:8080'"));

    // The scheme is part of the saved claim: a plain claim of another clone stays http.
    let plain = agent.pool.claim(&claim_req("plain")).await.unwrap();
    assert_ne!(plain.pod_id, claim.pod_id);
    let saved = agent
        .pool
        .store()
        .find_by_clone(&"secure".parse().unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(
        saved.site_url().as_deref(),
        Some("https://secure.localhost:8080")
    );
    let saved = agent
        .pool
        .store()
        .find_by_clone(&"plain".parse().unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(
        saved.site_url().as_deref(),
        Some("http://plain.localhost:8080")
    );
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
    match agent.pool.claim(&claim_req("tooearly")).await {
        Err(PoolError::Unavailable(_)) => {}
        other => panic!("no claims before the pods are adopted: {other:?}"),
    }
    fake.set_reachable(true);
    let deadline = std::time::Instant::now() + WAIT;
    while !agent.pool.ready().await {
        assert!(
            std::time::Instant::now() < deadline,
            "never ready after the runtime came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(agent.pool.capacity().unwrap().runtime_reachable);
    wait_for("2 WARM pods", WAIT, || warm_count(&agent) == 2).await;
    agent.shutdown(Duration::from_secs(5)).await;
}

/// A probe that makes the runtime unreachable at its first check (the engine goes away while
/// the adopted pods are being checked) and fails that check.
struct EngineVanishesAtFirstCheck {
    fake: FakeRuntime,
    fired: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl clonepool_agent::provision::SiteProbe for EngineVanishesAtFirstCheck {
    async fn check(&self, endpoint: &str) -> Result<(), String> {
        if !self.fired.swap(true, Ordering::SeqCst) {
            self.fake.set_reachable(false);
            return Err(format!("GET {endpoint}/: connection refused (engine gone)"));
        }
        Ok(())
    }
}

#[tokio::test]
async fn adopted_warm_pods_are_kept_when_the_runtime_vanishes_during_their_check() {
    let (dir, fake, _world) = setup();
    let agent = start_agent(&fake, dir.path(), &[]).await;
    wait_for("2 WARM pods", WAIT, || warm_count(&agent) == 2).await;
    agent.shutdown(Duration::from_secs(5)).await;
    let pods: HashSet<PodId> = fake.pod_ids().into_iter().collect();

    let probe = Arc::new(EngineVanishesAtFirstCheck {
        fake: fake.clone(),
        fired: Default::default(),
    });
    let agent = start_agent_with_probe(&fake, dir.path(), &[], probe).await;
    assert!(!agent.pool.capacity().unwrap().runtime_reachable);
    tokio::time::sleep(Duration::from_millis(300)).await;
    fake.set_reachable(true);
    wait_for(
        "the adoption finished once the engine is back",
        WAIT,
        || agent.pool.capacity().unwrap().runtime_reachable,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after: HashSet<PodId> = fake.pod_ids().into_iter().collect();
    assert_eq!(pods, after, "no adopted pod was quarantined for the outage");
    assert_eq!(warm_count(&agent), 2);
    assert!(
        !agent
            .pool
            .events(1000)
            .unwrap()
            .iter()
            .any(|e| e.kind == "quarantined"),
        "no quarantine"
    );
    agent.shutdown(Duration::from_secs(5)).await;
}

// ----- outages, crashes mid-claim, lost pods, cold-path limits ---------------------------

/// The kinds of the events about `pod`.
fn event_kinds_of(agent: &app::RunningAgent, pod: &PodId) -> Vec<String> {
    agent
        .pool
        .events(1000)
        .unwrap()
        .into_iter()
        .filter(|e| e.pod_id.as_deref() == Some(pod.as_str()))
        .map(|e| e.kind)
        .collect()
}

#[tokio::test]
async fn a_claim_while_the_runtime_is_unreachable_answers_unavailable_and_keeps_every_warm_pod() {
    let (dir, fake, _world) = setup();
    let agent = start_agent(&fake, dir.path(), &[]).await;
    wait_for("2 WARM pods", WAIT, || warm_count(&agent) == 2).await;
    let warm_before: HashSet<PodId> = agent
        .pool
        .pods()
        .unwrap()
        .into_iter()
        .map(|p| p.pod_id)
        .collect();
    fake.set_reachable(false);
    // The reconcile loop (every second here) notices the outage.
    wait_for("the outage noticed", WAIT, || {
        !agent.pool.capacity().unwrap().runtime_reachable
    })
    .await;
    for i in 0..3 {
        match agent.pool.claim(&claim_req(&format!("outage{i}"))).await {
            Err(PoolError::Unavailable(m)) => assert!(m.contains("unreachable"), "{m}"),
            other => panic!("expected unavailable, got {other:?}"),
        }
    }
    let cap = agent.pool.capacity().unwrap();
    assert_eq!(
        (cap.warm, cap.assigned, cap.quarantined),
        (2, 0, 0),
        "no pod consumed: {cap:?}"
    );
    fake.set_reachable(true);
    wait_for("the engine back", WAIT, || {
        agent.pool.capacity().unwrap().runtime_reachable
    })
    .await;
    let resp = agent.pool.claim(&claim_req("outage0")).await.unwrap();
    assert!(warm_before.contains(&resp.pod_id));
    for pod in &warm_before {
        assert!(
            !event_kinds_of(&agent, pod).contains(&"quarantined".to_string()),
            "pod {pod} was quarantined by the outage"
        );
    }
    agent.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_claim_cut_off_by_an_unreachable_runtime_resets_the_pod_and_frees_the_clone() {
    let (dir, fake, world) = setup();
    let agent = start_agent(
        &fake,
        dir.path(),
        &["--warm-target", "1", "--max-pods", "1"],
    )
    .await;
    wait_for("1 WARM pod", WAIT, || warm_count(&agent) == 1).await;
    let pod = agent.pool.pods().unwrap()[0].pod_id.clone();
    world.claims_unreachable.store(true, Ordering::SeqCst);
    match agent.pool.claim(&claim_req("cutoff")).await {
        Err(PoolError::Unavailable(_)) => {}
        other => panic!("expected unavailable, got {other:?}"),
    }
    // Not quarantined: reset (its settings may have half-applied) and back in the pool.
    let after = agent.pool.pod(&pod).expect("the pod is kept");
    assert_ne!(after.state, PodState::Quarantined, "{after:?}");
    assert_eq!(after.clone_id, None, "the clone no longer holds it");
    wait_for("the pod reset and WARM again", WAIT, || {
        state_of(&agent, &pod) == Some(PodState::Warm)
    })
    .await;
    let kinds = event_kinds_of(&agent, &pod);
    assert!(!kinds.contains(&"quarantined".to_string()), "{kinds:?}");
    assert!(kinds.contains(&"resetting".to_string()), "{kinds:?}");
    // The clone retries and gets the same (now clean) pod.
    wait_for("the engine counted reachable again", WAIT, || {
        agent.pool.capacity().unwrap().runtime_reachable
    })
    .await;
    let resp = agent.pool.claim(&claim_req("cutoff")).await.unwrap();
    assert_eq!(resp.pod_id, pod);
    assert_eq!(fake.pod_ids(), vec![pod.clone()], "no pod was replaced");
    agent.shutdown(Duration::from_secs(5)).await;
}

/// The claim SQL execs (site URL + admin password) sent to `pod`.
fn claim_sql_to(fake: &FakeRuntime, pod: &PodId) -> Vec<String> {
    fake.calls_of(CallKind::Exec)
        .into_iter()
        .filter_map(|c| match c {
            RecordedCall::Exec {
                pod: p,
                stdin: Some(s),
                ..
            } if &p == pod && String::from_utf8_lossy(&s.0).contains("SELECT ROW_COUNT()") => {
                Some(String::from_utf8_lossy(&s.0).into_owned())
            }
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_claim_saved_but_not_applied_before_a_crash_is_applied_when_the_clone_asks_again() {
    use clonepool_agent::secrets::Secret;
    use clonepool_agent::store::{Assignment, ClaimOutcome, Store};
    let (dir, fake, _world) = setup();
    let agent = start_agent(
        &fake,
        dir.path(),
        &["--warm-target", "1", "--max-pods", "2"],
    )
    .await;
    wait_for("1 WARM pod", WAIT, || warm_count(&agent) == 1).await;
    agent.shutdown(Duration::from_secs(5)).await;

    // What a crash between "claim saved" and "settings applied" leaves on disk.
    let pod = {
        let store = Store::open(&dir.path().join("agent.sqlite")).unwrap();
        let password = Secret::new("saved-but-never-applied-pw");
        let clone: CloneId = "crashy".parse().unwrap();
        match store
            .claim(&Assignment {
                clone: &clone,
                clone_host: "crashy.localhost:8080",
                clone_scheme: Default::default(),
                admin_user: "admin",
                admin_password: &password,
            })
            .unwrap()
        {
            ClaimOutcome::Claimed(rec) => rec.id,
            other => panic!("{other:?}"),
        }
    };
    fake.clear_calls();

    let agent = start_agent(
        &fake,
        dir.path(),
        &["--warm-target", "1", "--max-pods", "2"],
    )
    .await;
    let resp = agent.pool.claim(&claim_req("crashy")).await.unwrap();
    assert_eq!(resp.pod_id, pod);
    assert_eq!(
        resp.credentials.admin_password,
        "saved-but-never-applied-pw"
    );
    let applied = claim_sql_to(&fake, &pod);
    assert_eq!(
        applied.len(),
        1,
        "the settings were applied once: {applied:?}"
    );
    assert!(
        applied[0].contains(&format!("MD5('{}')", resp.credentials.admin_password)),
        "the password answered is the one applied"
    );
    assert!(applied[0].contains("'http://crashy.localhost:8080'"));
    // Once applied, a repeat answers from the state file without touching the pod.
    let again = agent.pool.claim(&claim_req("crashy")).await.unwrap();
    assert_eq!(again, resp);
    assert_eq!(claim_sql_to(&fake, &pod).len(), 1);
    agent.shutdown(Duration::from_secs(5)).await;
}

/// Claims a pod for `clone`, marks it READY and kills its db container: a lost pod.
async fn lose_a_pod(agent: &app::RunningAgent, fake: &FakeRuntime, clone: &str) -> PodId {
    let claimed = agent.pool.claim(&claim_req(clone)).await.unwrap();
    agent
        .pool
        .mark_ready(&clone.parse().unwrap())
        .await
        .unwrap();
    assert!(fake.kill_container(&claimed.pod_id, ContainerRole::Db, 137));
    wait_for("the pod reported lost", WAIT, || {
        agent
            .pool
            .pod(&claimed.pod_id)
            .is_ok_and(|p| p.state == PodState::Quarantined)
    })
    .await;
    claimed.pod_id
}

#[tokio::test]
async fn an_operator_force_reset_removes_a_lost_pod_and_the_pool_replaces_it() {
    let (dir, fake, _world) = setup();
    let agent = start_agent(
        &fake,
        dir.path(),
        &["--warm-target", "1", "--max-pods", "2"],
    )
    .await;
    wait_for("1 WARM pod", WAIT, || warm_count(&agent) == 1).await;
    let lost = lose_a_pod(&agent, &fake, "gone").await;
    wait_for("a replacement WARM pod", WAIT, || warm_count(&agent) == 1).await;
    // The lost pod holds a slot: the node is full.
    assert_eq!(agent.pool.pods().unwrap().len(), 2);
    match agent.pool.reset_pod(&lost, false).await {
        Err(PoolError::Conflict(m)) => assert!(m.contains("--force"), "{m}"),
        other => panic!("a lost pod needs --force: {other:?}"),
    }
    agent.pool.reset_pod(&lost, true).await.unwrap();
    wait_for("the lost pod removed", WAIT, || {
        !fake.pod_ids().contains(&lost) && agent.pool.pod(&lost).is_err()
    })
    .await;
    // The slot is free again: a claim and the pool's refill both find room.
    agent.pool.claim(&claim_req("next")).await.unwrap();
    wait_for("the pool refilled", WAIT, || warm_count(&agent) == 1).await;
    // The lost clone's release now finds nothing to release.
    match agent.pool.release(&"gone".parse().unwrap()).await {
        Err(PoolError::NotFound(m)) => assert!(m.contains("gone"), "{m}"),
        other => panic!("expected not found, got {other:?}"),
    }
    agent.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_lost_pod_is_removed_after_the_grace_period_even_if_nobody_releases_it() {
    let (dir, fake, _world) = setup();
    let agent = start_agent(
        &fake,
        dir.path(),
        &[
            "--warm-target",
            "1",
            "--max-pods",
            "2",
            "--lost-pod-grace-secs",
            "2",
        ],
    )
    .await;
    wait_for("1 WARM pod", WAIT, || warm_count(&agent) == 1).await;
    // The grace counts from the quarantine, which comes after this and before the next line.
    let before_loss = std::time::Instant::now();
    let lost = lose_a_pod(&agent, &fake, "forgotten").await;
    // Visible to its clone for the grace period ...
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(state_of(&agent, &lost), Some(PodState::Quarantined));
    // ... then removed, and its slot counts no more.
    wait_for("the lost pod removed", WAIT, || {
        agent.pool.pod(&lost).is_err() && !fake.pod_ids().contains(&lost)
    })
    .await;
    assert!(before_loss.elapsed() >= Duration::from_millis(1900));
    let removed = agent
        .pool
        .events(1000)
        .unwrap()
        .into_iter()
        .find(|e| e.kind == "removed" && e.pod_id.as_deref() == Some(lost.as_str()))
        .expect("a removal event");
    assert!(
        removed.message.contains("forgotten") && removed.message.contains("grace"),
        "{}",
        removed.message
    );
    assert_eq!(agent.pool.capacity().unwrap().quarantined, 0);
    match agent.pool.release(&"forgotten".parse().unwrap()).await {
        Err(PoolError::NotFound(_)) => {}
        other => panic!("expected not found, got {other:?}"),
    }
    agent.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn the_cold_path_waits_for_a_creation_slot_and_is_counted_in_provision_duration() {
    let (dir, fake, _world) = setup();
    let probe = Arc::new(GatedProbe::default());
    probe.closed.store(true, Ordering::SeqCst);
    let agent = start_agent_with_probe(
        &fake,
        dir.path(),
        &[
            "--warm-target",
            "1",
            "--max-pods",
            "3",
            "--create-parallelism",
            "1",
        ],
        probe.clone(),
    )
    .await;
    wait_for("the pool's pod being created", WAIT, || {
        probe.active.load(Ordering::SeqCst) == 1
    })
    .await;
    let pool = agent.pool.clone();
    let cold = tokio::spawn(async move {
        let mut req = claim_req("coldslot");
        req.allow_cold = true;
        pool.claim(&req).await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        probe.max_active.load(Ordering::SeqCst),
        1,
        "the cold pod was created beside the pool's one despite --create-parallelism 1"
    );
    probe.closed.store(false, Ordering::SeqCst);
    let resp = cold.await.unwrap().unwrap();
    assert_eq!(resp.path, ClaimPath::Cold);
    assert_eq!(probe.max_active.load(Ordering::SeqCst), 1);
    wait_for("the pool pod WARM", WAIT, || warm_count(&agent) == 1).await;
    let text = metrics_text(&agent).await;
    assert!(
        text.contains("clonepool_agent_provision_duration_seconds_count 2"),
        "both creations observed: {text}"
    );
    agent.shutdown(Duration::from_secs(5)).await;
}
