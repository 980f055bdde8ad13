//! Pods as the node sees them: containers grouped by the Kubernetes labels the node agent sets
//! (as the kubelet labels its containers). A container made through the Docker API, without
//! those labels, is a one-container "mirror" pod in namespace `default` named after it.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::container::Container;
use super::{Engine, EngineError};

pub const LABEL_POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
pub const LABEL_POD_NAME: &str = "io.kubernetes.pod.name";
pub const LABEL_POD_UID: &str = "io.kubernetes.pod.uid";
pub const LABEL_CONTAINER_NAME: &str = "io.kubernetes.container.name";
/// Namespace of mirror pods.
pub const MIRROR_NAMESPACE: &str = "default";

/// One pod on this node.
#[derive(Clone)]
pub struct PodView {
    pub namespace: String,
    pub name: String,
    /// Empty for mirror pods.
    pub uid: String,
    pub mirror: bool,
    /// (container name in the pod, container), in creation order.
    pub containers: Vec<(String, Arc<Container>)>,
}

/// Where a container belongs: (namespace, pod, container name in the pod, uid, mirror).
pub fn pod_identity(c: &Container) -> (String, String, String, String, bool) {
    let r = c.record();
    let labels = &r.spec.labels;
    match (labels.get(LABEL_POD_NAMESPACE), labels.get(LABEL_POD_NAME), labels.get(LABEL_CONTAINER_NAME)) {
        (Some(ns), Some(pod), Some(name)) => {
            (ns.clone(), pod.clone(), name.clone(), labels.get(LABEL_POD_UID).cloned().unwrap_or_default(), false)
        }
        _ => (MIRROR_NAMESPACE.to_string(), r.name.clone(), r.name.clone(), String::new(), true),
    }
}

impl Engine {
    /// Every pod on this node, sorted by namespace and name.
    pub fn pods(&self) -> Vec<PodView> {
        let mut pods: BTreeMap<(String, String), PodView> = BTreeMap::new();
        let mut containers = self.list();
        containers.reverse(); // oldest first
        for c in containers {
            let (namespace, name, container, uid, mirror) = pod_identity(&c);
            pods.entry((namespace.clone(), name.clone()))
                .or_insert_with(|| PodView { namespace, name, uid, mirror, containers: Vec::new() })
                .containers
                .push((container, c));
        }
        pods.into_values().collect()
    }

    pub fn pod(&self, namespace: &str, name: &str) -> Result<PodView, EngineError> {
        self.pods()
            .into_iter()
            .find(|p| p.namespace == namespace && p.name == name)
            .ok_or_else(|| EngineError::NoSuchPod(format!("{namespace}/{name}")))
    }

    /// The container an exec targets: by name, or the pod's only/first container when `None`.
    pub fn pod_container(
        &self,
        namespace: &str,
        pod: &str,
        container: Option<&str>,
    ) -> Result<Arc<Container>, EngineError> {
        let view = self.pod(namespace, pod)?;
        let found = match container.filter(|c| !c.is_empty()) {
            Some(name) => view.containers.iter().find(|(n, _)| n == name),
            None => view.containers.first(),
        };
        found.map(|(_, c)| c.clone()).ok_or_else(|| {
            EngineError::BadRequest(format!("container {} is not valid for pod {pod}", container.unwrap_or_default()))
        })
    }
}
