//! The sandboxed executor (being built: see issue 3).
