//! Toolwarden's pure core: the resource types, manifest loading, the compiler (manifests → gateway
//! config), the policy engine, argument rules, approval tokens and the audit record type.
//!
//! Nothing here does I/O beyond reading manifest files in [`manifest`], and nothing talks to Kubernetes:
//! the operator, the gateway and `toolwarden policy` all call the same functions.

pub mod approval;
pub mod audit;
pub mod canonical;
pub mod compiler;
pub mod config;
pub mod crdgen;
pub mod duration;
pub mod manifest;
pub mod names;
pub mod policy;
pub mod resources;
