//! Toolwarden's Kubernetes controllers.
//!
//! Each reconcile is a pipeline: dereference (read what the object points at) → validate → build the
//! desired objects with pure functions (`*/build.rs`, no client) → apply them by server-side apply under
//! one field manager → write status and Events. The pure parts are unit-tested next to the code; the
//! I/O parts are tested against a scripted API server in `tests/`.
//!
//! - [`tool`]: McpTool → NetworkPolicy `toolwarden-tool-<name>`, scoped Secret, status.
//! - [`namespace`]: every McpTool and ToolPolicy of a namespace → the gateway config ConfigMap, the
//!   worker baseline NetworkPolicy, ToolPolicy status, and per-tool verdicts the tool controller reads.
//! - [`session_gc`]: McpSessions the gateway stopped looking after → Expired, then deleted.
//! - [`leader`]: a coordination.k8s.io Lease so that only one replica writes.

pub mod cleanup;
pub mod cli;
pub mod context;
pub mod error;
pub mod leader;
pub mod metrics;
pub mod namespace;
pub mod objects;
pub mod run;
pub mod session_gc;
pub mod tool;

pub use context::{Context, Settings};
pub use error::Error;
