//! Path arguments: one canonical form for every rule, and `pathWithin`.
//!
//! An argument the tool's inputSchema declares a path (`x-toolwarden-path: /base`) is rewritten, before
//! any rule runs, to its canonical form: relative to the base, no `.`, `..`, empty or trailing segments
//! (`./releases//v1.md`, `/base/releases/v1.md` and `drafts/../releases/v1.md` all become
//! `releases/v1.md`). Spellings that programs read in different ways are refused instead of guessed at:
//! percent-encoding, backslashes, control characters, and Unicode characters that fold into `.`, `/`
//! or `\` or are invisible. Every rule, in allow and deny policies, sees the canonical form, and so does
//! the tool.

use percent_encoding::percent_decode_str;

/// Why a path value was refused; each reads as the end of "argument `path` …".
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathRefusal {
    Empty,
    Control,
    Backslash,
    PercentEncoded,
    LookAlike(char),
    Invisible(char),
    Leaves(String),
}

impl std::fmt::Display for PathRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PathRefusal::Empty => write!(f, "is empty; name a file or directory (`.` is the base directory itself)"),
            PathRefusal::Control => write!(f, "holds a control character (such as NUL, a tab or a newline); paths are plain text"),
            PathRefusal::Backslash => write!(f, "holds a backslash; separate directories with `/`"),
            PathRefusal::PercentEncoded => {
                write!(f, "holds percent-encoding (such as %2e or %2f); send the path as plain characters")
            }
            PathRefusal::LookAlike(c) => write!(
                f,
                "holds U+{:04X}, a character that reads as or folds into `.`, `/` or `\\`; write paths with plain `.` and `/`",
                *c as u32
            ),
            PathRefusal::Invisible(c) => write!(f, "holds U+{:04X}, an invisible formatting character", *c as u32),
            PathRefusal::Leaves(base) => write!(f, "leaves {base}; give a path inside it, relative to it (such as dir/file.md)"),
        }
    }
}

/// Characters that Unicode compatibility normalisation (NFKC, Unicode 14) folds into text holding `.`,
/// `/` or `\`, plus the common slash look-alikes that have no folding at all.
fn is_look_alike(c: char) -> bool {
    matches!(c,
        '\u{2024}'..='\u{2026}' | '\u{2100}' | '\u{2101}' | '\u{2105}' | '\u{2106}' | '\u{2488}'..='\u{249B}'
        | '\u{33C2}' | '\u{33C7}' | '\u{33D8}' | '\u{FE19}' | '\u{FE30}' | '\u{FE52}' | '\u{FE68}' | '\u{FF0E}'
        | '\u{FF0F}' | '\u{FF3C}' | '\u{1F100}'
        // Slashes and dots by looks only: division and fraction slash, big solidus, set minus, ideographic stops.
        | '\u{2044}' | '\u{2215}' | '\u{2216}' | '\u{2571}' | '\u{2572}' | '\u{29F5}' | '\u{29F8}' | '\u{29F9}'
        | '\u{3002}' | '\u{FF61}')
}

/// Format characters (Unicode category Cf) that change how a name reads without being seen.
fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{206F}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}'
        | '\u{E0001}' | '\u{E0020}'..='\u{E007F}')
}

/// `%` followed by two hex digits anywhere in the text.
fn holds_percent_encoding(text: &str) -> bool {
    text.as_bytes().windows(3).any(|w| w[0] == b'%' && w[1].is_ascii_hexdigit() && w[2].is_ascii_hexdigit())
}

fn check_characters(value: &str) -> Result<(), PathRefusal> {
    for c in value.chars() {
        if c.is_control() {
            return Err(PathRefusal::Control);
        }
        if c == '\\' {
            return Err(PathRefusal::Backslash);
        }
        if is_look_alike(c) {
            return Err(PathRefusal::LookAlike(c));
        }
        if is_invisible(c) {
            return Err(PathRefusal::Invisible(c));
        }
    }
    if holds_percent_encoding(value) {
        return Err(PathRefusal::PercentEncoded);
    }
    Ok(())
}

/// The segments of an absolute path after `.`, `..` and empty segments; `None` when `..` climbs above `/`.
pub(crate) fn normalize(path: &str) -> Option<Vec<&str>> {
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

/// Checks a declared base directory: absolute and already canonical (`/notes`, not `/notes/` or `/a/../b`).
pub fn check_base(base: &str) -> Result<(), String> {
    if !base.starts_with('/') {
        return Err(format!("`{base}` must be an absolute directory such as /workspace"));
    }
    if check_characters(base).is_err() {
        return Err(format!("`{base}` holds characters a path base cannot hold (controls, `\\`, `%XX`, look-alikes)"));
    }
    let canonical = normalize(base).map(|parts| format!("/{}", parts.join("/")));
    if canonical.as_deref() != Some(base) {
        return Err(format!("`{base}` must be written in canonical form (no `.`, `..`, `//` or trailing `/`)"));
    }
    Ok(())
}

/// The canonical form of `value` as a path under `base` (canonical itself, see [`check_base`]): relative
/// to `base`, `.` for `base` itself. Absolute values must lie inside `base`.
pub fn canonical_path(base: &str, value: &str) -> Result<String, PathRefusal> {
    if value.is_empty() {
        return Err(PathRefusal::Empty);
    }
    check_characters(value)?;
    let base_parts = normalize(base).unwrap_or_default();
    let joined = if value.starts_with('/') { value.to_string() } else { format!("{base}/{value}") };
    let leaves = || PathRefusal::Leaves(base.to_string());
    let parts = normalize(&joined).ok_or_else(leaves)?;
    let relative = parts.strip_prefix(base_parts.as_slice()).ok_or_else(leaves)?;
    Ok(if relative.is_empty() { ".".to_string() } else { relative.join("/") })
}

/// The absolute form of a canonical path under `base`, as `pathWithin` reads it.
pub fn absolute(base: &str, canonical: &str) -> String {
    match (base, canonical) {
        (_, ".") => base.to_string(),
        ("/", _) => format!("/{canonical}"),
        _ => format!("{base}/{canonical}"),
    }
}

/// Whether an absolute, canonical path is `dir` or lies below it.
pub fn is_within(dir: &str, path: &str) -> bool {
    let dir = dir.trim_end_matches('/');
    path == dir || dir.is_empty() || path.strip_prefix(dir).is_some_and(|rest| rest.starts_with('/'))
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

/// `pathWithin` on an argument that is not declared a path: `value`, read relative to `base` (or as an
/// absolute path), stays within `base` under every decoding. NUL bytes and backslashes are refused.
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

    #[test]
    fn every_respelling_has_one_canonical_form() {
        for spelling in [
            "published/v1.md",
            "./published/v1.md",
            "/docs/published/v1.md",
            "drafts/../published/v1.md",
            "published//v1.md",
            "published/./v1.md",
            "published/v1.md/",
            ".//published/x/../v1.md",
            "/docs/../docs/published/v1.md",
            "../docs/published/v1.md",
        ] {
            assert_eq!(canonical_path("/docs", spelling), Ok("published/v1.md".to_string()), "{spelling}");
        }
        assert_eq!(canonical_path("/docs", "."), Ok(".".to_string()));
        assert_eq!(canonical_path("/docs", "/docs/"), Ok(".".to_string()));
        assert_eq!(canonical_path("/", "/etc/passwd"), Ok("etc/passwd".to_string()));
        assert_eq!(canonical_path("/docs", "100%.md"), Ok("100%.md".to_string()), "a lone % is plain text");
    }

    #[test]
    fn ambiguous_or_escaping_paths_are_refused() {
        use PathRefusal::*;
        for (value, refusal) in [
            ("", Empty),
            ("..", Leaves("/docs".into())),
            ("../docsx/a", Leaves("/docs".into())),
            ("/etc/passwd", Leaves("/docs".into())),
            ("/docsx/a", Leaves("/docs".into())),
            ("a/../../x", Leaves("/docs".into())),
            ("%2e%2e/etc", PercentEncoded),
            ("published%2fv1.md", PercentEncoded),
            ("%2E%2E", PercentEncoded),
            ("a\\..\\..\\etc", Backslash),
            ("a\0b", Control),
            ("a\nb", Control),
            ("a\u{85}b", Control),
            ("\u{FF0E}\u{FF0E}\u{FF0F}etc", LookAlike('\u{FF0E}')),
            ("\u{2025}/etc", LookAlike('\u{2025}')),
            ("published\u{2215}v1.md", LookAlike('\u{2215}')),
            ("published\u{200B}/v1.md", Invisible('\u{200B}')),
            ("\u{202E}dm.1v/dehsilbup", Invisible('\u{202E}')),
        ] {
            assert_eq!(canonical_path("/docs", value), Err(refusal), "{value:?}");
        }
    }

    #[test]
    fn bases_must_be_canonical_absolute_directories() {
        assert!(check_base("/notes").is_ok());
        assert!(check_base("/").is_ok());
        for bad in ["notes", "/notes/", "/a/../b", "//notes", "/a/./b", "/no\\tes", "/%2e"] {
            assert!(check_base(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn within_compares_whole_segments() {
        assert!(is_within("/docs", "/docs"));
        assert!(is_within("/docs", "/docs/a"));
        assert!(!is_within("/docs", "/docsx/a"));
        assert!(is_within("/", "/anything"));
        assert_eq!(absolute("/docs", "."), "/docs");
        assert_eq!(absolute("/", "a/b"), "/a/b");
        assert_eq!(absolute("/docs", "a/b"), "/docs/a/b");
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
            Just("docs".to_string()),
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

        /// A canonical form is a fixed point, holds no `.`/`..`/empty segment, and names a place inside
        /// the base that the original spelling names too.
        #[test]
        fn canonical_forms_are_fixed_points_inside_the_base(parts in proptest::collection::vec(segment(), 1..8), absolute_value in any::<bool>()) {
            let value = format!("{}{}", if absolute_value { "/" } else { "" }, parts.join("/"));
            if let Ok(canonical) = canonical_path("/srv/data", &value) {
                prop_assert_eq!(canonical_path("/srv/data", &canonical), Ok(canonical.clone()));
                prop_assert!(canonical == "." || canonical.split('/').all(|s| !s.is_empty() && s != "." && s != ".."), "{}", canonical);
                let joined = if value.starts_with('/') { value.clone() } else { format!("/srv/data/{value}") };
                let original = normalize(&joined).map(|p| format!("/{}", p.join("/")));
                prop_assert_eq!(original, Some(super::absolute("/srv/data", &canonical)));
            }
        }
    }
}
