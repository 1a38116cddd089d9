//! Toolwarden's Kubernetes controllers (being built: see issue 5).
pub mod cli;
