//! The hatch client verbs. Each module is one verb family; they all talk to the API server named
//! in the kubeconfig ([`cluster`]).

pub mod cluster;
pub mod exec;
pub mod image;
pub mod kubeconfig;
pub mod pods;
pub mod table;
pub mod terminal;
pub mod token;
