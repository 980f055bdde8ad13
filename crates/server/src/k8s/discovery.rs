//! Discovery: `/version`, `/api`, `/apis`, `/api/v1` — what kubectl asks before anything else.
//! Plain `application/json` answers make kubectl use legacy discovery, which every version accepts.

use serde_json::{Value, json};

use super::{KUBE_GIT_VERSION, KUBE_MAJOR, KUBE_MINOR};

pub fn version() -> Value {
    json!({
        "major": KUBE_MAJOR,
        "minor": KUBE_MINOR,
        "gitVersion": KUBE_GIT_VERSION,
        "gitCommit": "hatch",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "rust",
        "compiler": "rustc",
        "platform": "linux/amd64",
        // Not Kubernetes: how `hatch exec` learns that `-u`, `--privileged`, … will be honoured
        // here rather than silently ignored, as a Kubernetes API server ignores unknown parameters.
        "hatchExecExtensions": hatch_wire::exec_options::HATCH_EXTENSIONS,
    })
}

pub fn api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{ "clientCIDR": "0.0.0.0/0", "serverAddress": server_address }],
    })
}

pub fn api_group_list() -> Value {
    json!({ "kind": "APIGroupList", "apiVersion": "v1", "groups": [] })
}

fn resource(name: &str, singular: &str, namespaced: bool, kind: &str, verbs: &[&str], short: &[&str]) -> Value {
    let mut r = json!({
        "name": name,
        "singularName": singular,
        "namespaced": namespaced,
        "kind": kind,
        "verbs": verbs,
    });
    if !short.is_empty() {
        r["shortNames"] = json!(short);
    }
    r
}

pub fn core_v1_resources() -> Value {
    json!({
        "kind": "APIResourceList",
        "groupVersion": "v1",
        "resources": [
            resource("namespaces", "namespace", false, "Namespace", &["get", "list"], &["ns"]),
            resource("nodes", "node", false, "Node", &["get", "list"], &["no"]),
            resource("pods", "pod", true, "Pod", &["create", "delete", "get", "list", "watch"], &["po"]),
            resource("pods/exec", "", true, "PodExecOptions", &["create", "get"], &[]),
        ],
    })
}
