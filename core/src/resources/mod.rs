//! The Toolwarden resources (API group `toolwarden.dev`, version `v1alpha1`), as Rust types.
//!
//! The CRD YAML in `crds/` is generated from these types (`toolwarden crd`); admission-time CEL rules
//! live next to the fields they check.

mod condition;
mod policy;
mod schema;
mod session;
mod tool;

pub use condition::{Condition, ConditionStatus, set_condition};
pub use policy::*;
pub use session::*;
pub use tool::*;

/// The API group of every Toolwarden resource.
pub const GROUP: &str = "toolwarden.dev";
/// The API version of every Toolwarden resource.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` as written in manifests.
pub const API_VERSION: &str = "toolwarden.dev/v1alpha1";
