//! The namespace reconciler: every McpTool and ToolPolicy of one namespace → the gateway config
//! ConfigMap, the baseline NetworkPolicy for worker pods, ToolPolicy status, and the per-tool verdicts
//! that the tool controller turns into `Ready`.

pub mod build;
pub mod queue;
pub mod reconcile;

pub use reconcile::{CONTROLLER, reconcile_namespace};
