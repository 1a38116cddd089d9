//! Toolwarden's MCP gateway (being built: see issue 4).
pub mod cli;
pub mod kubernetes;
