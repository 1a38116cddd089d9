//! The `kubernetes` worker runtime: one sandboxed worker pod per (session, tool), `McpSession` objects.
