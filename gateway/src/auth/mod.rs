//! Authentication of MCP callers. Being built (issue 4).
