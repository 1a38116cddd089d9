//! W3C Trace Context (`traceparent`), parsed strictly: a caller's value is used only when it is exactly
//! what the recommendation allows, and anything else is ignored, never trusted in part.
//!
//! The SDK's own propagator accepts short or signed hex fields (`00-1-2-01`), so the gateway parses the
//! header itself. Only `traceparent` is taken from a caller: `tracestate` is free text a caller chooses,
//! and the gateway passes nothing of it on to tools.

use opentelemetry::trace::{SpanId, TraceFlags, TraceId};

/// The parts of a valid `traceparent` the gateway uses: a remote parent span.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parent {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// The caller's sampled flag (the only flag defined).
    pub sampled: bool,
}

/// `version-traceid-parentid-flags` of version 00 is exactly this long.
const V00_LEN: usize = 55;

/// Parses a `traceparent` value. `None` for anything malformed: wrong length or separators, upper-case or
/// non-hex digits, version `ff`, an all-zero trace or span id, or a version-00 value with more after it.
/// A higher version is read by its first four fields, as the recommendation asks, when a `-` follows them.
pub fn parse_traceparent(value: &str) -> Option<Parent> {
    let bytes = value.as_bytes();
    if bytes.len() < V00_LEN {
        return None;
    }
    let version = hex_field(&bytes[0..2])?;
    if version == 0xff || bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
        return None;
    }
    match (version, bytes.len()) {
        (0, V00_LEN) => {}
        (0, _) => return None,
        (_, V00_LEN) => {}
        (_, _) if bytes[V00_LEN] == b'-' => {}
        _ => return None,
    }
    let trace_id = hex_field(&bytes[3..35])?;
    let span_id = hex_field(&bytes[36..52])?;
    let flags = hex_field(&bytes[53..55])?;
    if trace_id == 0 || span_id == 0 {
        return None;
    }
    Some(Parent {
        trace_id: TraceId::from(trace_id),
        span_id: SpanId::from(span_id as u64),
        sampled: flags as u8 & TraceFlags::SAMPLED.to_u8() != 0,
    })
}

/// A field of lower-case hex digits (at most 32), as a number; `None` for any other character.
fn hex_field(digits: &[u8]) -> Option<u128> {
    let mut value: u128 = 0;
    for &d in digits {
        let nibble = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => return None,
        };
        value = (value << 4) | u128::from(nibble);
    }
    Some(value)
}

/// The `traceparent` (version 00) naming `span_id` of `trace_id` as the parent of what it is sent to.
pub fn format_traceparent(trace_id: TraceId, span_id: SpanId, sampled: bool) -> String {
    format!("00-{trace_id:032x}-{span_id:016x}-{:02x}", u8::from(sampled))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_is_read_and_written_back_the_same() {
        let parent = parse_traceparent(GOOD).expect("valid");
        assert_eq!(format!("{:032x}", parent.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(format!("{:016x}", parent.span_id), "00f067aa0ba902b7");
        assert!(parent.sampled);
        assert_eq!(format_traceparent(parent.trace_id, parent.span_id, parent.sampled), GOOD);
        let unsampled = parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        assert!(!unsampled.sampled);
        assert!(parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03").unwrap().sampled, "other flags are ignored");
    }

    #[test]
    fn a_later_version_is_read_by_its_first_four_fields() {
        assert!(parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").is_some());
        assert!(parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes-next").is_some());
        assert!(parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x").is_none());
    }

    #[test]
    fn anything_malformed_is_ignored() {
        for bad in [
            "",
            "00-1-2-01",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0G",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\nX-Injected: 1",
            "00-4bf92f3577b34da6a3ce929d0e0é736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad:?}");
        }
    }
}
