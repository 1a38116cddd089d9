//! The `local` runtime: one sandboxed worker process per (session, tool). Being built (issue 4).
