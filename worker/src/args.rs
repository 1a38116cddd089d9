//! A small flag parser (`--name value`, `--name=value`, repeatable flags, `--` ends the flags), so the
//! worker stays free of a CLI framework.

use std::ffi::OsString;

pub struct Args {
    flags: Vec<(String, Option<String>)>,
    /// Everything after `--`.
    pub rest: Vec<OsString>,
}

/// Flags that take no value.
const SWITCHES: &[&str] = &["--unsafe-no-sandbox", "--no-call-log"];

impl Args {
    pub fn new(args: Vec<OsString>) -> Result<Args, String> {
        let mut flags = Vec::new();
        let mut iter = args.into_iter();
        let mut rest = Vec::new();
        while let Some(arg) = iter.next() {
            let text = arg.to_str().ok_or_else(|| format!("argument {arg:?} is not UTF-8"))?.to_string();
            if text == "--" {
                rest = iter.collect();
                break;
            }
            if !text.starts_with("--") {
                return Err(format!("unexpected argument `{text}`"));
            }
            if let Some((name, value)) = text.split_once('=') {
                flags.push((name.to_string(), Some(value.to_string())));
            } else if SWITCHES.contains(&text.as_str()) {
                flags.push((text, None));
            } else {
                let value = iter.next().ok_or_else(|| format!("{text} needs a value"))?;
                let value = value.into_string().map_err(|v| format!("{text}: value {v:?} is not UTF-8"))?;
                flags.push((text, Some(value)));
            }
        }
        Ok(Args { flags, rest })
    }

    /// All values of a repeatable flag.
    pub fn all(&mut self, name: &str) -> Result<Vec<String>, String> {
        let mut values = Vec::new();
        let mut kept = Vec::new();
        for (flag, value) in self.flags.drain(..) {
            if flag == name {
                values.push(value.ok_or_else(|| format!("{name} needs a value"))?);
            } else {
                kept.push((flag, value));
            }
        }
        self.flags = kept;
        Ok(values)
    }

    pub fn optional(&mut self, name: &str) -> Result<Option<String>, String> {
        let mut values = self.all(name)?;
        if values.len() > 1 {
            return Err(format!("{name} is given more than once"));
        }
        Ok(values.pop())
    }

    pub fn required(&mut self, name: &str) -> Result<String, String> {
        self.optional(name)?.ok_or_else(|| format!("{name} is required"))
    }

    pub fn number(&mut self, name: &str) -> Result<Option<u64>, String> {
        self.optional(name)?
            .map(|v| v.parse::<u64>().map_err(|_| format!("{name} must be a whole number, not `{v}`")))
            .transpose()
    }

    pub fn switch(&mut self, name: &str) -> bool {
        let before = self.flags.len();
        self.flags.retain(|(flag, _)| flag != name);
        self.flags.len() != before
    }

    /// Fails on any flag nobody asked for.
    pub fn finish(self) -> Result<(), String> {
        match self.flags.first() {
            Some((flag, _)) => Err(format!("unknown option `{flag}`")),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Args {
        Args::new(list.iter().map(OsString::from).collect()).unwrap()
    }

    #[test]
    fn flags_values_repeats_and_rest() {
        let mut a = args(&["--hide", "/home", "--hide=/root", "--unsafe-no-sandbox", "--n", "3", "--", "serve", "--x"]);
        assert_eq!(a.all("--hide").unwrap(), ["/home", "/root"]);
        assert!(a.switch("--unsafe-no-sandbox"));
        assert_eq!(a.number("--n").unwrap(), Some(3));
        assert_eq!(a.rest, [OsString::from("serve"), OsString::from("--x")]);
        a.finish().unwrap();
    }

    #[test]
    fn unknown_flags_and_bad_numbers_are_refused() {
        assert!(args(&["--what", "x"]).finish().unwrap_err().contains("--what"));
        assert!(args(&["--n", "many"]).number("--n").unwrap_err().contains("many"));
        assert!(Args::new(vec!["--listen".into()]).is_err());
    }
}
