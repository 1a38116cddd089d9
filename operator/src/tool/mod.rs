//! The McpTool controller: NetworkPolicy and scoped Secret per tool, and the tool's status.

pub mod build;
pub mod cidr;
pub mod reconcile;
pub mod secret;
pub mod status;

pub use reconcile::{CONTROLLER, error_policy, reconcile};
