//! TEMPORARY scratch harness (to be deleted): runs PodCommands against hand-made containers via the docker CLI.
use async_trait::async_trait;
use clonepool_agent::pod_commands::PodCommands;
use clonepool_agent::runtime::*;
use clonepool_agent::secrets::Secret;
use clonepool_common::ids::{NodeName, PodId};
use clonepool_common::pod::ContainerRole;
use futures_util::stream::BoxStream;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Cli;
#[async_trait]
impl ContainerRuntime for Cli {
    async fn ping(&self) -> Result<(), RuntimeError> { Ok(()) }
    async fn image_present(&self, _: &str) -> Result<bool, RuntimeError> { Ok(true) }
    async fn create_pod(&self, _: &PodSpec) -> Result<PodInfo, RuntimeError> { unimplemented!() }
    async fn start_pod(&self, _: &PodId) -> Result<PodInfo, RuntimeError> { unimplemented!() }
    async fn stop_pod(&self, _: &PodId, _: Duration) -> Result<(), RuntimeError> { unimplemented!() }
    async fn remove_pod(&self, _: &PodId) -> Result<(), RuntimeError> { unimplemented!() }
    async fn start_container(&self, _: &PodId, _: ContainerRole) -> Result<(), RuntimeError> { unimplemented!() }
    async fn stop_container(&self, _: &PodId, _: ContainerRole, _: Duration) -> Result<(), RuntimeError> { unimplemented!() }
    async fn recreate_container(&self, _: &PodId, _: ContainerRole) -> Result<(), RuntimeError> { unimplemented!() }
    async fn exec(&self, _: &PodId, role: ContainerRole, r: ExecRequest) -> Result<ExecOutput, RuntimeError> {
        let name = format!("xp-{role}");
        let r2 = r.clone();
        tokio::task::spawn_blocking(move || {
            let mut c = std::process::Command::new("docker");
            c.arg("exec").arg("-i").arg(&name).arg("timeout").arg("-s").arg("KILL").arg("60");
            c.args(&r2.cmd);
            c.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
            let mut ch = c.spawn().unwrap();
            let mut si = ch.stdin.take().unwrap();
            if let Some(b) = &r2.stdin { si.write_all(b).unwrap(); }
            drop(si);
            let o = ch.wait_with_output().unwrap();
            Ok(ExecOutput { exit_code: o.status.code().unwrap_or(-1) as i64, stdout: o.stdout, stderr: o.stderr })
        }).await.unwrap()
    }
    async fn put_archive(&self, _: &PodId, _: ContainerRole, _: &str, _: ArchiveStream) -> Result<(), RuntimeError> { unimplemented!() }
    async fn get_archive(&self, _: &PodId, _: ContainerRole, _: &str) -> Result<ArchiveStream, RuntimeError> { unimplemented!() }
    async fn inspect_pod(&self, _: &PodId) -> Result<PodInfo, RuntimeError> { unimplemented!() }
    async fn list_pods(&self, _: &NodeName) -> Result<Vec<PodInfo>, RuntimeError> { unimplemented!() }
    async fn events(&self, _: &NodeName) -> Result<BoxStream<'static, Result<RuntimeEvent, RuntimeError>>, RuntimeError> { unimplemented!() }
}

#[tokio::test]
#[ignore]
async fn scratch() {
    let c = PodCommands::new(Arc::new(Cli));
    let pod: PodId = "cp-x".parse().unwrap();
    let ip = std::env::var("XP_IP").unwrap();
    let site = format!("http://{ip}");
    let step = std::env::var("STEP").unwrap_or_default();
    let t = Instant::now();
    match step.as_str() {
        "snapshot" => c.snapshot_pristine(&pod).await.unwrap(),
        "fp" => { let f = c.fingerprint(&pod).await.unwrap(); println!("{}", serde_json::to_string_pretty(&f).unwrap()); std::fs::write(std::env::var("FP_OUT").unwrap(), f.to_json()).unwrap(); }
        "cmp" => { let f = c.fingerprint(&pod).await.unwrap(); let p = clonepool_agent::fingerprint::Fingerprint::from_json(&std::fs::read_to_string(std::env::var("FP_OUT").unwrap()).unwrap()).unwrap(); println!("cmp: {:?}", p.compare(&f).map(|m| m.to_string())); }
        "resetdb" => c.reset_database(&pod, &Secret::new("pw2"), true).await.unwrap(),
        "resetweb" => c.reset_web_in_place(&pod, &Secret::new("pw2"), &site).await.unwrap(),
        "reset" => { let pw = Secret::new("pw3"); let (a, b) = tokio::join!(c.reset_database(&pod, &pw, true), c.reset_web_in_place(&pod, &pw, &site)); a.unwrap(); b.unwrap(); }
        "claim" => { let np = Secret::new("NewPass1"); let (a, b) = tokio::join!(c.set_site_url(&pod, "http://shop.localhost:8080"), c.set_admin_password(&pod, &np)); a.unwrap(); b.unwrap(); }
        s => panic!("step {s}"),
    }
    println!("{step}: {:?}", t.elapsed());
}
