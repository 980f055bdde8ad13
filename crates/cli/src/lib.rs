//! The hatch client verbs. Each module is one verb family; they share the transports in
//! [`docker_socket`] (the node's Docker Engine API) and, for the cluster verbs, the API server
//! named in the kubeconfig.

pub mod cluster;
pub mod docker_socket;
pub mod exec;
pub mod image;
pub mod kubeconfig;
pub mod pods;
pub mod table;
pub mod terminal;
pub mod token;
