//! Desired pods as the node reads them from the server, and the containers that run them.
//!
//! A pod's containers carry the kubelet's labels (`io.kubernetes.pod.namespace|name|uid`,
//! `io.kubernetes.container.name`) and names `k8s_<container>_<pod>_<namespace>_<uid8>`.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::engine::container::ContainerSpec;
use crate::engine::pods::{LABEL_CONTAINER_NAME, LABEL_POD_NAME, LABEL_POD_NAMESPACE, LABEL_POD_UID};

#[derive(Debug, Clone, PartialEq)]
pub struct DesiredContainer {
    pub name: String,
    pub image: String,
    pub command: Option<Vec<String>>,
    pub args: Option<Vec<String>>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub tty: bool,
    pub stdin: bool,
    pub stdin_once: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DesiredPod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub terminating: bool,
    pub grace_seconds: i64,
    pub containers: Vec<DesiredContainer>,
}

fn s(v: &Value, key: &str) -> String {
    v.get(key).and_then(Value::as_str).unwrap_or("").to_string()
}

fn strings(v: Option<&Value>) -> Option<Vec<String>> {
    v?.as_array().map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
}

impl DesiredPod {
    /// The parts of a `v1.Pod` the node acts on; `None` for objects missing their identity.
    pub fn from_pod(pod: &Value) -> Option<DesiredPod> {
        let meta = pod.get("metadata")?;
        let (namespace, name, uid) = (s(meta, "namespace"), s(meta, "name"), s(meta, "uid"));
        if namespace.is_empty() || name.is_empty() || uid.is_empty() {
            return None;
        }
        let spec = pod.get("spec")?;
        let containers = spec
            .get("containers")?
            .as_array()?
            .iter()
            .map(|c| DesiredContainer {
                name: s(c, "name"),
                image: s(c, "image"),
                command: strings(c.get("command")).filter(|v| !v.is_empty()),
                args: strings(c.get("args")).filter(|v| !v.is_empty()),
                env: c
                    .get("env")
                    .and_then(Value::as_array)
                    .map(|env| {
                        env.iter()
                            .filter(|e| !s(e, "name").is_empty())
                            .map(|e| format!("{}={}", s(e, "name"), s(e, "value")))
                            .collect()
                    })
                    .unwrap_or_default(),
                working_dir: s(c, "workingDir"),
                tty: c.get("tty").and_then(Value::as_bool).unwrap_or(false),
                stdin: c.get("stdin").and_then(Value::as_bool).unwrap_or(false),
                stdin_once: c.get("stdinOnce").and_then(Value::as_bool).unwrap_or(false),
            })
            .collect();
        Some(DesiredPod {
            namespace,
            name,
            uid,
            terminating: meta.get("deletionTimestamp").is_some_and(|d| !d.is_null()),
            grace_seconds: spec.get("terminationGracePeriodSeconds").and_then(Value::as_i64).unwrap_or(30),
            containers,
        })
    }

    pub fn container_name(&self, container: &str) -> String {
        let uid8: String = self.uid.chars().filter(|c| *c != '-').take(8).collect();
        format!("k8s_{container}_{}_{}_{uid8}", self.name, self.namespace)
    }

    /// The engine spec of one of its containers: `command` replaces the image's entrypoint,
    /// `args` its cmd, as Kubernetes defines them.
    pub fn container_spec(&self, c: &DesiredContainer) -> ContainerSpec {
        let labels = BTreeMap::from([
            (LABEL_POD_NAMESPACE.to_string(), self.namespace.clone()),
            (LABEL_POD_NAME.to_string(), self.name.clone()),
            (LABEL_POD_UID.to_string(), self.uid.clone()),
            (LABEL_CONTAINER_NAME.to_string(), c.name.clone()),
        ]);
        let hostname: String = self.name.chars().take(63).collect();
        ContainerSpec {
            image: c.image.clone(),
            entrypoint: c.command.clone(),
            cmd: c.args.clone(),
            env: c.env.clone(),
            working_dir: c.working_dir.clone(),
            hostname: hostname.trim_end_matches(['-', '.']).to_string(),
            tty: c.tty,
            open_stdin: c.stdin,
            stdin_once: c.stdin_once,
            labels,
            stop_timeout: Some(self.grace_seconds),
            ..ContainerSpec::default()
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn pods_become_container_specs() {
        let pod = json!({
            "metadata": {"namespace": "default", "name": "web", "uid": "0f1e2d3c-aaaa-4bbb-8ccc-123456789abc"},
            "spec": {"terminationGracePeriodSeconds": 5, "containers": [
                {"name": "main", "image": "bb", "args": ["sleep", "1d"], "env": [{"name": "A", "value": "1"}]},
                {"name": "side", "image": "bb", "command": ["sh"], "tty": true, "stdin": true},
            ]},
        });
        let p = DesiredPod::from_pod(&pod).unwrap();
        assert!(!p.terminating);
        assert_eq!(p.container_name("main"), "k8s_main_web_default_0f1e2d3c");
        let main = p.container_spec(&p.containers[0]);
        assert_eq!((main.entrypoint.clone(), main.cmd.clone()), (None, Some(vec!["sleep".into(), "1d".into()])));
        assert_eq!(main.env, ["A=1"]);
        assert_eq!(main.labels[LABEL_POD_UID], "0f1e2d3c-aaaa-4bbb-8ccc-123456789abc");
        assert_eq!(main.labels[LABEL_CONTAINER_NAME], "main");
        assert_eq!(main.hostname, "web");
        assert_eq!(main.stop_timeout, Some(5));
        let side = p.container_spec(&p.containers[1]);
        assert_eq!((side.entrypoint, side.cmd), (Some(vec!["sh".into()]), None));
        assert!(side.tty && side.open_stdin);

        let mut gone = pod.clone();
        gone["metadata"]["deletionTimestamp"] = json!("2024-01-01T00:00:00Z");
        assert!(DesiredPod::from_pod(&gone).unwrap().terminating);
        assert!(DesiredPod::from_pod(&json!({"metadata": {"name": "x"}})).is_none());
    }
}
