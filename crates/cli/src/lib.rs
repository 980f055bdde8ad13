//! The hatch client verbs. Each module is one verb family; they share the transports in
//! [`docker_socket`] (the node's Docker Engine API) and, for the cluster verbs, the API server
//! named in the kubeconfig.

pub mod docker_socket;
pub mod image;
pub mod table;
