//! hatch's node: runs containers on runc with hatch-init as PID 1, and serves the Docker Engine
//! API on a root-only unix socket.

pub mod agent;
pub mod demo;
pub mod docker;
pub mod engine;
pub mod k8s;
