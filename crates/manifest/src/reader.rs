//! Typed access to the span-carrying TOML tree (`toml::de::DeTable`), so every error — wrong
//! type, unknown key, missing key, or a semantic rule — points at a line and column and names the
//! dotted key.

use std::ops::Range;
use std::path::Path;

use toml::de::{DeTable, DeValue};

use crate::error::{ErrorKind, ManifestError, Problem};

/// The manifest text and where it came from.
pub(crate) struct Doc<'t> {
    pub text: &'t str,
    pub origin: &'t Path,
}

impl Doc<'_> {
    pub fn error(&self, span: Range<usize>, key: &str, p: Problem) -> ManifestError {
        let key = if key.is_empty() { None } else { Some(key.to_string()) };
        ManifestError::at(self.origin, self.text, span, key, p.kind, p.message, p.fix)
    }

    /// The source text of a span, shortened for messages.
    fn snippet(&self, span: &Range<usize>) -> String {
        let raw = self.text.get(span.clone()).unwrap_or("").trim();
        let first_line = raw.lines().next().unwrap_or("");
        if first_line.chars().count() > 40 || first_line.len() < raw.len() {
            format!("{}...", first_line.chars().take(40).collect::<String>())
        } else {
            first_line.to_string()
        }
    }
}

/// Joins a table path and a key, quoting keys that are not bare TOML keys.
fn join(prefix: &str, key: &str) -> String {
    let bare =
        !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let key = if bare { key.to_string() } else { format!("{key:?}") };
    if prefix.is_empty() {
        key
    } else {
        format!("{prefix}.{key}")
    }
}

/// A value in the tree, with its dotted key and span.
#[derive(Clone)]
pub(crate) struct Node<'a, 'i> {
    pub doc: &'a Doc<'a>,
    pub key: String,
    pub value: &'a DeValue<'i>,
    pub span: Range<usize>,
}

type Res<T> = Result<T, ManifestError>;

impl<'a, 'i> Node<'a, 'i> {
    /// Places a problem at this value.
    pub fn fail(&self, p: Problem) -> ManifestError {
        self.doc.error(self.span.clone(), &self.key, p)
    }

    pub fn err(&self, kind: ErrorKind, message: String, fix: String) -> ManifestError {
        self.fail(Problem { kind, message, fix })
    }

    /// A wrong-type error: "expected WHAT, got TYPE `text`"; fix "write e.g. `EXAMPLE`".
    pub fn wrong_type(&self, what: &str, example: &str) -> ManifestError {
        self.err(
            ErrorKind::WrongType,
            format!(
                "expected {what}, got {} `{}`",
                self.value.type_str(),
                self.doc.snippet(&self.span)
            ),
            format!("write it like `{example}`"),
        )
    }

    pub fn str(&self, what: &str, example: &str) -> Res<&'a str> {
        match self.value {
            DeValue::String(s) => Ok(s.as_ref()),
            _ => Err(self.wrong_type(what, example)),
        }
    }

    pub fn bool(&self, example: &str) -> Res<bool> {
        self.value.as_bool().ok_or_else(|| self.wrong_type("true or false", example))
    }

    pub fn int(&self, what: &str, example: &str) -> Res<i64> {
        let i = self.value.as_integer().ok_or_else(|| self.wrong_type(what, example))?;
        i64::from_str_radix(i.as_str(), i.radix()).map_err(|_| {
            self.err(
                ErrorKind::InvalidValue,
                format!("expected {what}, got an out-of-range integer"),
                format!("write it like `{example}`"),
            )
        })
    }

    /// An integer within `min..=max`.
    pub fn int_in(&self, min: i64, max: i64, what: &str, example: &str) -> Res<i64> {
        let v = self.int(what, example)?;
        if v < min || v > max {
            return Err(self.err(
                ErrorKind::InvalidValue,
                format!("expected {what} between {min} and {max}, got {v}"),
                format!("use a value between {min} and {max}, e.g. `{example}`"),
            ));
        }
        Ok(v)
    }

    /// A float (an integer is accepted too); non-finite values are refused.
    pub fn number(&self, what: &str, example: &str) -> Res<f64> {
        let v = match self.value {
            DeValue::Float(f) => f.as_str().parse::<f64>().ok(),
            DeValue::Integer(_) => Some(self.int(what, example)? as f64),
            _ => return Err(self.wrong_type(what, example)),
        };
        match v {
            Some(v) if v.is_finite() => Ok(v),
            _ => Err(self.err(
                ErrorKind::InvalidValue,
                format!("expected {what}, got `{}`", self.doc.snippet(&self.span)),
                format!("write a finite number, e.g. `{example}`"),
            )),
        }
    }

    pub fn array(&self, what: &str, example: &str) -> Res<Vec<Node<'a, 'i>>> {
        let arr = match self.value {
            DeValue::Array(a) => a,
            _ => return Err(self.wrong_type(what, example)),
        };
        Ok(arr
            .iter()
            .enumerate()
            .map(|(i, v)| Node {
                doc: self.doc,
                key: format!("{}[{i}]", self.key),
                value: v.get_ref(),
                span: v.span(),
            })
            .collect())
    }

    /// An array of strings.
    pub fn strings(&self, what: &str, example: &str) -> Res<Vec<(Node<'a, 'i>, &'a str)>> {
        self.array(what, example)?
            .into_iter()
            .map(|n| {
                let s = n.str(what, example)?;
                Ok((n, s))
            })
            .collect()
    }

    pub fn table(&self, what: &str, example: &str) -> Res<Table<'a, 'i>> {
        match self.value {
            DeValue::Table(t) => Ok(Table {
                doc: self.doc,
                prefix: self.key.clone(),
                table: t,
                span: self.span.clone(),
            }),
            _ => Err(self.wrong_type(what, example)),
        }
    }

    /// A size: a byte count (integer) or a string like `"16M"`.
    pub fn size(&self, example: &str) -> Res<u64> {
        match self.value {
            DeValue::String(s) => crate::units::parse_size(s).map_err(|p| self.fail(p)),
            DeValue::Integer(_) => Ok(self.int_in(0, i64::MAX, "a size in bytes", example)? as u64),
            _ => Err(self.wrong_type("a size like \"128M\"", example)),
        }
    }
}

/// A TOML table, with the dotted path that leads to it.
pub(crate) struct Table<'a, 'i> {
    pub doc: &'a Doc<'a>,
    pub prefix: String,
    pub table: &'a DeTable<'i>,
    pub span: Range<usize>,
}

impl<'a, 'i> Table<'a, 'i> {
    /// Refuses the first (in file order) key not in `valid`, listing the valid ones.
    pub fn deny_unknown(&self, valid: &[&str]) -> Res<()> {
        let unknown = self
            .table
            .iter()
            .filter(|(k, _)| !valid.contains(&k.get_ref().as_ref()))
            .min_by_key(|(k, _)| k.span().start);
        if let Some((k, _)) = unknown {
            let key = join(&self.prefix, k.get_ref());
            let level = if self.prefix.is_empty() {
                "the top level".to_string()
            } else {
                format!("[{}]", self.prefix)
            };
            let close = valid
                .iter()
                .find(|v| close_enough(v, k.get_ref()))
                .map(|v| format!("did you mean `{v}`? "))
                .unwrap_or_default();
            return Err(self.doc.error(
                k.span(),
                &key,
                Problem {
                    kind: ErrorKind::UnknownKey,
                    message: format!(
                        "unknown key `{}` in {level}; valid keys are: {}",
                        k.get_ref(),
                        valid.join(", ")
                    ),
                    fix: format!("{close}remove or rename the key (see docs/manifest.md)"),
                },
            ));
        }
        Ok(())
    }

    pub fn get(&self, key: &str) -> Option<Node<'a, 'i>> {
        self.table.iter().find(|(k, _)| k.get_ref().as_ref() == key).map(|(_, v)| Node {
            doc: self.doc,
            key: join(&self.prefix, key),
            value: v.get_ref(),
            span: v.span(),
        })
    }

    /// A required key; the error points at the table (its header) and shows an example.
    pub fn require(&self, key: &str, what: &str, example: &str) -> Res<Node<'a, 'i>> {
        self.get(key).ok_or_else(|| {
            let level = if self.prefix.is_empty() {
                "at the top of the file".to_string()
            } else {
                format!("in [{}]", self.prefix)
            };
            self.doc.error(
                self.span.clone(),
                &join(&self.prefix, key),
                Problem {
                    kind: ErrorKind::MissingKey,
                    message: format!("missing required key `{key}` ({what}) {level}"),
                    fix: format!("add `{example}`"),
                },
            )
        })
    }

    /// Every entry, in file order, as (key span, key, value node).
    pub fn entries(&self) -> Vec<(Range<usize>, &'a str, Node<'a, 'i>)> {
        let mut out: Vec<_> = self
            .table
            .iter()
            .map(|(k, v)| {
                (
                    k.span(),
                    k.get_ref().as_ref(),
                    Node {
                        doc: self.doc,
                        key: join(&self.prefix, k.get_ref()),
                        value: v.get_ref(),
                        span: v.span(),
                    },
                )
            })
            .collect();
        out.sort_by_key(|(span, _, _)| span.start);
        out
    }
}

/// A typo heuristic: same length ±1 and at most two differing characters, or one is a prefix.
fn close_enough(valid: &str, given: &str) -> bool {
    let (a, b): (Vec<char>, Vec<char>) = (valid.chars().collect(), given.chars().collect());
    if a.len().abs_diff(b.len()) > 1 {
        return false;
    }
    if a.len() == b.len() {
        return a.iter().zip(&b).filter(|(x, y)| x != y).count() <= 2;
    }
    // One insertion or deletion.
    let (long, short) = if a.len() > b.len() { (&a, &b) } else { (&b, &a) };
    (0..long.len()).any(|skip| {
        long.iter().enumerate().filter(|(i, _)| *i != skip).map(|(_, c)| c).eq(short.iter())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_joined_and_quoted() {
        assert_eq!(join("", "name"), "name");
        assert_eq!(join("service.env", "LANG"), "service.env.LANG");
        assert_eq!(join("service.env", "A.B"), "service.env.\"A.B\"");
    }

    #[test]
    fn typo_heuristic() {
        assert!(close_enough("memory", "memroy"));
        assert!(close_enough("memory", "memry"));
        assert!(close_enough("exec", "execs"));
        assert!(!close_enough("memory", "pids"));
    }
}
