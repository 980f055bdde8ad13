//! The cluster state over the store: scheduling, the desired-pods long poll, status from node
//! reports, graceful deletion finished by the node, and nodes that go silent.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use hatch_server::contract::{ContainerReport, NodeStatusReport, PodReport};
use hatch_server::registry::{Deleted, Registry};
use hatch_server::store::{EmbeddedStore, Store};
use serde_json::json;

async fn registry(timeout: Duration) -> (Arc<Registry>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&dir.path().join("s.redb")).await.unwrap());
    (Arc::new(Registry::open(store, timeout).await.unwrap()), dir)
}

fn pod(name: &str) -> serde_json::Value {
    json!({"metadata": {"name": name}, "spec": {"containers": [{"name": "c", "image": "bb"}]}})
}

fn report(pods: Vec<PodReport>) -> NodeStatusReport {
    NodeStatusReport { ready: true, streaming_address: "10.0.0.5:10250".into(), pods, ..Default::default() }
}

fn running(p: &serde_json::Value) -> PodReport {
    PodReport {
        namespace: "default".into(),
        name: p["metadata"]["name"].as_str().unwrap().into(),
        uid: p["metadata"]["uid"].as_str().unwrap().into(),
        containers: vec![ContainerReport {
            name: "c".into(),
            state: "running".into(),
            id: "abc".into(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_are_scheduled_run_and_deleted_through_their_node() {
    let (reg, _dir) = registry(Duration::from_secs(40)).await;
    reg.report_status("n1", report(vec![])).await.unwrap();

    let created = reg.create_pod("default", pod("web"), false).await.unwrap();
    assert_eq!(created["spec"]["nodeName"], "n1", "bound to the only ready node");
    assert!(reg.create_pod("default", pod("web"), false).await.is_err(), "names are unique");

    // The node learns about it at once, and its version is stable while nothing changes.
    let first = reg.desired_pods("n1", "", Duration::from_secs(5)).await.unwrap();
    assert_eq!(first.pods.len(), 1);
    let started = Instant::now();
    let same = reg.desired_pods("n1", &first.resource_version, Duration::from_millis(300)).await.unwrap();
    assert_eq!(same.resource_version, first.resource_version);
    assert!(started.elapsed() >= Duration::from_millis(300), "a long poll waits");
    assert!(reg.desired_pods("n2", "", Duration::from_secs(1)).await.unwrap().pods.is_empty());

    // Its report becomes the pod's status.
    reg.report_status("n1", report(vec![running(&created)])).await.unwrap();
    let stored = reg.get_pod("default", "web").await.unwrap().unwrap();
    assert_eq!(stored["status"]["phase"], "Running");
    assert_eq!(stored["status"]["hostIP"], "10.0.0.5");
    assert_eq!(stored["status"]["containerStatuses"][0]["containerID"], "hatch://abc");
    let rv = stored["metadata"]["resourceVersion"].clone();
    reg.report_status("n1", report(vec![running(&created)])).await.unwrap();
    assert_eq!(
        reg.get_pod("default", "web").await.unwrap().unwrap()["metadata"]["resourceVersion"],
        rv,
        "no write for an unchanged status"
    );

    // Deleting wakes the node's long poll with the pod marked.
    let poll = {
        let reg = reg.clone();
        let known = first.resource_version.clone();
        tokio::spawn(async move { reg.desired_pods("n1", &known, Duration::from_secs(20)).await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(matches!(reg.delete_pod("default", "web", None, false).await.unwrap(), Deleted::Terminating(_)));
    let woken = tokio::time::timeout(Duration::from_secs(5), poll).await.unwrap().unwrap();
    assert_ne!(woken.resource_version, first.resource_version);
    assert!(woken.pods[0]["metadata"]["deletionTimestamp"].is_string());

    // While the node still reports it, it stays; once its containers are gone, it is removed.
    reg.report_status("n1", report(vec![running(&created)])).await.unwrap();
    assert!(reg.get_pod("default", "web").await.unwrap().is_some());
    reg.report_status("n1", report(vec![])).await.unwrap();
    assert!(reg.get_pod("default", "web").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_nodes_get_no_pods_and_lose_theirs_at_once() {
    let (reg, _dir) = registry(Duration::from_secs(1)).await;
    reg.report_status("gone", report(vec![])).await.unwrap();
    let p = reg.create_pod("default", pod("stuck"), false).await.unwrap();
    assert_eq!(p["spec"]["nodeName"], "gone");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let (nodes, _) = reg.nodes().await.unwrap();
    assert!(!reg.is_ready(&nodes[0].0));
    assert_eq!(reg.node_object(&nodes[0].0, nodes[0].1)["status"]["conditions"][0]["status"], "Unknown");

    // Nothing is scheduled on it; the sweeper binds the pod when a ready node appears.
    let waiting = reg.create_pod("default", pod("later"), false).await.unwrap();
    assert!(waiting["spec"]["nodeName"].as_str().unwrap_or("").is_empty());
    assert_eq!(waiting["status"]["conditions"][0]["reason"], "Unschedulable");
    reg.report_status("fresh", report(vec![])).await.unwrap();
    reg.sweep().await.unwrap();
    assert_eq!(reg.get_pod("default", "later").await.unwrap().unwrap()["spec"]["nodeName"], "fresh");

    // A pod of a silent node is deleted without waiting for it.
    assert!(matches!(reg.delete_pod("default", "stuck", None, false).await.unwrap(), Deleted::Gone(_)));
    assert!(reg.get_pod("default", "stuck").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_pods_come_from_reports_and_hold_their_names() {
    let (reg, _dir) = registry(Duration::from_secs(40)).await;
    let mirror = |name: &str| PodReport {
        namespace: "default".into(),
        name: name.into(),
        mirror: true,
        containers: vec![ContainerReport { name: name.into(), state: "running".into(), ..Default::default() }],
        ..Default::default()
    };
    reg.report_status("n1", report(vec![mirror("dk"), mirror("clash")])).await.unwrap();
    let stored = reg
        .create_pod("default", json!({"metadata": {"name": "clash"}, "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "bb"}]}}), false)
        .await;
    assert!(stored.is_err(), "a mirror pod's name is taken");
    let (pods, _) = reg.list_pods(None).await.unwrap();
    let names: Vec<&str> = pods.iter().map(|p| p["metadata"]["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["clash", "dk"]);
    let dk = reg.get_pod("default", "dk").await.unwrap().unwrap();
    assert_eq!(dk["metadata"]["annotations"]["kubernetes.io/config.mirror"], "docker");
    let refused = reg.delete_pod("default", "dk", None, false).await;
    assert!(refused.is_err_and(|e| e.status().message.contains("docker rm")));
    assert!(reg.get_pod("other", "dk").await.unwrap().is_none());
}
