//! Bounds on argument values, checked before any schema or rule runs.

use serde_json::Value;

/// Depth and size bounds for one call's arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArgumentLimits {
    pub max_depth: usize,
    /// Approximate serialised size in bytes.
    pub max_bytes: usize,
}

impl Default for ArgumentLimits {
    fn default() -> Self {
        ArgumentLimits { max_depth: 32, max_bytes: 256 * 1024 }
    }
}

/// Refuses arguments nested deeper than `max_depth` or larger than `max_bytes`, without recursion.
pub fn check_argument_limits(args: &Value, limits: ArgumentLimits) -> Result<(), String> {
    let mut bytes = 0usize;
    let mut stack = vec![(args, 1usize)];
    while let Some((value, depth)) = stack.pop() {
        if depth > limits.max_depth {
            return Err(format!("arguments are nested deeper than {} levels", limits.max_depth));
        }
        bytes += match value {
            Value::String(s) => s.len() + 2,
            Value::Array(items) => {
                stack.extend(items.iter().map(|v| (v, depth + 1)));
                2 + items.len()
            }
            Value::Object(map) => {
                for (k, v) in map {
                    bytes += k.len() + 4;
                    stack.push((v, depth + 1));
                }
                2
            }
            _ => 8,
        };
        if bytes > limits.max_bytes {
            return Err(format!("arguments are larger than {} bytes", limits.max_bytes));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn deep_and_huge_arguments_are_refused() {
        let mut deep = json!(1);
        for _ in 0..40 {
            deep = json!({"a": deep});
        }
        assert!(check_argument_limits(&deep, ArgumentLimits::default()).unwrap_err().contains("deeper"));
        let huge = json!({"a": "x".repeat(300 * 1024)});
        assert!(check_argument_limits(&huge, ArgumentLimits::default()).unwrap_err().contains("larger"));
        assert!(check_argument_limits(&json!({"a": [1, 2, {"b": "c"}]}), ArgumentLimits::default()).is_ok());
    }
}
