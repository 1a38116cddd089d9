//! Toolwarden's MCP gateway: authentication, sessions, enforcement, approvals, audit, metrics, and the
//! worker runtimes (`local` sandboxed processes, `kubernetes` pods).
pub mod approvals_client;
pub mod auth;
pub mod cli;
pub mod kubernetes;
pub mod runtime;
