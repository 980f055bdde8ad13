//! hatch's API server: the Kubernetes API subset kubectl 1.27–1.33 needs (discovery, pods, nodes,
//! Tables, watch, `pods/exec`), authentication (bearer tokens, node certificates), the exec policy,
//! the audit log, the store (embedded redb, or etcd with the `etcd` feature), and the transparent
//! upgrade proxy to the node that runs a pod.

pub mod api;
pub mod audit;
pub mod auth;
pub mod contract;
pub mod dialer;
pub mod error;
pub mod k8s;
pub mod pki;
pub mod registry;
mod server;
pub mod store;
pub mod tls;

pub use api::Body;
pub use server::{DEFAULT_NODE_TIMEOUT, JOIN_TOKEN_PREFIX, LocalNode, Server, ServerConfig, ServerError};
