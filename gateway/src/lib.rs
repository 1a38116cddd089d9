//! Toolwarden's MCP gateway: authentication, sessions, enforcement, approvals, audit, metrics, and the
//! worker runtimes (`local` sandboxed processes, `kubernetes` pods).
//!
//! A request flows `http` (authenticate, session ownership) → rmcp → `mcp` (catalog, session) → `call`
//! (decide, limits, audit, approvals, runtime, taint). `state::Gateway` holds what they share.
pub mod approvals;
pub mod approvals_carry;
pub mod approvals_api;
pub mod approvals_check;
pub mod approvals_client;
pub mod audit;
pub mod auth;
pub mod call;
pub mod catalog;
pub mod cli;
pub mod config_dev;
pub mod config_kube;
pub mod direct_call;
pub mod elicit;
pub mod failover;
pub mod http;
pub mod json_reply;
pub mod kubernetes;
pub mod mcp;
pub mod origin;
pub mod parking;
pub mod metrics;
pub mod ratelimit;
pub mod refusal;
pub mod rpc_body;
pub mod running;
pub mod runtime;
pub mod serve;
pub mod session_manager;
pub mod sessions;
pub mod state;
pub mod stateless;
pub mod trace;
pub mod write_stall;

#[cfg(test)]
mod parking_tests;
#[cfg(test)]
mod replicas_tests;
#[cfg(test)]
mod stateless_tests;
