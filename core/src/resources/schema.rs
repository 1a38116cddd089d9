//! Hand-written schema fragments for fields schemars cannot describe structurally.

use schemars::{Schema, SchemaGenerator, json_schema};

/// Any JSON object, kept as written (JSON Schemas, free-form maps).
pub fn free_form_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// Any JSON value (string, number, boolean, object, array).
pub fn any_value(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "x-kubernetes-preserve-unknown-fields": true,
    })
}
