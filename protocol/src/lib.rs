//! What Ferry's parts agree on.
//!
//! The controller, the node agents and the `ferry` CLI are built from one workspace and shipped in
//! one image, but they talk to each other over the Kubernetes API, over gRPC and through object
//! storage. Everything those conversations depend on lives here, so that a change to any of them is
//! a change to this crate.

pub mod agent;
pub mod crd;
pub mod layout;
pub mod pki;
pub mod tls;
pub mod volume;
