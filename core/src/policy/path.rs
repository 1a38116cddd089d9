//! `pathWithin`: a path argument must stay inside a base directory, whatever spelling it uses.

use percent_encoding::percent_decode_str;

/// Lexically normalises an absolute path (`.`, `..`, repeated `/`); `None` when `..` climbs above `/`.
fn normalize(path: &str) -> Option<Vec<&str>> {
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            other => parts.push(other),
        }
    }
    Some(parts)
}

/// Every spelling a program might decode the value to: as written, and percent-decoded up to 3 times.
fn spellings(value: &str) -> Vec<String> {
    let mut out = vec![value.to_string()];
    for _ in 0..3 {
        let last = out.last().expect("starts non-empty");
        let decoded = percent_decode_str(last).decode_utf8_lossy().into_owned();
        if &decoded == last {
            break;
        }
        out.push(decoded);
    }
    out
}

/// Checks that `value`, read relative to `base` (or as an absolute path), stays within `base`.
/// Refuses NUL bytes and backslashes outright: no program should receive them in a path.
pub fn check_path_within(base: &str, value: &str) -> Result<(), String> {
    let base_parts = normalize(base).ok_or_else(|| format!("base directory `{base}` is not a valid path"))?;
    for spelling in spellings(value) {
        if spelling.contains('\0') || spelling.contains('\\') {
            return Err(format!("path `{value}` holds a NUL byte or backslash"));
        }
        let joined = if spelling.starts_with('/') { spelling.clone() } else { format!("{base}/{spelling}") };
        let inside = normalize(&joined).is_some_and(|parts| parts.starts_with(&base_parts));
        if !inside {
            return Err(format!("path `{value}` leaves `{base}`"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn paths_inside_pass() {
        for ok in ["notes.txt", "a/b/c.md", "./a", "a/../b", "/workspace/x", "/workspace", "a//b", "%61.txt"] {
            assert_eq!(check_path_within("/workspace", ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn escapes_are_refused() {
        for bad in [
            "..", "../etc/passwd", "a/../../etc", "/etc/passwd", "/workspace/../etc", "/workspacex/a",
            "%2e%2e/etc", "%2E%2E%2Fetc", "%252e%252e/etc", "..%2fetc", "a\\..\\..\\etc", "a\0b",
        ] {
            assert!(check_path_within("/workspace", bad).is_err(), "{bad}");
        }
    }

    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("..".to_string()),
            Just(".".to_string()),
            Just("%2e%2e".to_string()),
            Just("%2E.".to_string()),
            Just("%252e%252e".to_string()),
            Just("".to_string()),
            Just("%2f".to_string()),
            Just("/".to_string()),
            "[a-z]{1,4}",
            "[a-z%./]{1,6}",
        ]
    }

    proptest! {
        /// Whatever is accepted resolves inside the base under every decoding a program might apply.
        #[test]
        fn accepted_paths_never_escape(parts in proptest::collection::vec(segment(), 1..8), absolute in any::<bool>()) {
            let value = format!("{}{}", if absolute { "/" } else { "" }, parts.join("/"));
            if check_path_within("/srv/data", &value).is_ok() {
                for spelling in spellings(&value) {
                    let joined = if spelling.starts_with('/') { spelling.clone() } else { format!("/srv/data/{spelling}") };
                    let parts = normalize(&joined).expect("accepted paths never climb above /");
                    prop_assert!(parts.len() >= 2 && parts[0] == "srv" && parts[1] == "data", "{value} -> {joined}");
                }
            }
        }

        /// Any path with more `..` than the depth it went down is refused.
        #[test]
        fn climbing_out_is_refused(down in 0usize..4, up in 1usize..6) {
            prop_assume!(up > down);
            let value = format!("{}{}", "d/".repeat(down), "../".repeat(up));
            prop_assert!(check_path_within("/srv/data", &value).is_err());
        }
    }
}
