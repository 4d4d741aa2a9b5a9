//! Checkpoint-name patterns: `model.layers.{i}.mlp.*`. A literal segment matches itself, a
//! `{var}` any one segment (the same one wherever `var` appears in a rule), a final `*` one
//! or more segments. A match binds the variables and the rest, which a source pattern then
//! substitutes back.

use encdecc_dsl::ast::{Pattern, PatternSeg};
use std::fmt;

/// A pattern without its source position: what the trainer keeps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamePattern {
    pub segments: Vec<PatternSeg>,
}

/// What a match bound: variables in order of first appearance, and the `*` rest.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bindings {
    pub vars: Vec<(String, String)>,
    pub rest: Option<String>,
}

impl Bindings {
    fn var(&self, name: &str) -> Option<&str> {
        self.vars
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

impl NamePattern {
    pub fn new(p: &Pattern) -> NamePattern {
        NamePattern {
            segments: p.segments.clone(),
        }
    }

    /// Parses the textual form (`a.{i}.*`); `None` when it is not a pattern.
    pub fn parse(text: &str) -> Option<NamePattern> {
        let parts: Vec<&str> = text.split('.').collect();
        let mut segments = vec![];
        for (k, s) in parts.iter().enumerate() {
            let seg = if *s == "*" && k + 1 == parts.len() {
                PatternSeg::Rest
            } else if let Some(v) = s.strip_prefix('{').and_then(|v| v.strip_suffix('}')) {
                let ok = v
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !ok {
                    return None;
                }
                PatternSeg::Var(v.to_string())
            } else if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                PatternSeg::Lit(s.to_string())
            } else {
                return None;
            };
            segments.push(seg);
        }
        Some(NamePattern { segments })
    }

    /// Every checkpoint name.
    pub fn all() -> NamePattern {
        NamePattern {
            segments: vec![PatternSeg::Rest],
        }
    }

    pub fn matches(&self, name: &str) -> bool {
        self.bind(name).is_some()
    }

    /// Matches `name`; the bindings on success.
    pub fn bind(&self, name: &str) -> Option<Bindings> {
        let parts: Vec<&str> = name.split('.').collect();
        let mut b = Bindings::default();
        for (k, seg) in self.segments.iter().enumerate() {
            match seg {
                PatternSeg::Rest => {
                    if k >= parts.len() {
                        return None;
                    }
                    b.rest = Some(parts[k..].join("."));
                    return Some(b);
                }
                PatternSeg::Lit(l) => {
                    if parts.get(k) != Some(&l.as_str()) {
                        return None;
                    }
                }
                PatternSeg::Var(v) => {
                    let part = *parts.get(k)?;
                    match b.var(v) {
                        Some(bound) if bound != part => return None,
                        Some(_) => {}
                        None => b.vars.push((v.clone(), part.to_string())),
                    }
                }
            }
        }
        (parts.len() == self.segments.len()).then_some(b)
    }

    /// The name this pattern stands for under `b`; `None` when it uses a variable (or `*`)
    /// that `b` does not bind.
    pub fn substitute(&self, b: &Bindings) -> Option<String> {
        let mut out: Vec<&str> = vec![];
        for seg in &self.segments {
            out.push(match seg {
                PatternSeg::Lit(l) => l,
                PatternSeg::Var(v) => b.var(v)?,
                PatternSeg::Rest => b.rest.as_deref()?,
            });
        }
        Some(out.join("."))
    }

    pub fn vars(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|s| match s {
            PatternSeg::Var(v) => Some(v.as_str()),
            _ => None,
        })
    }

    pub fn has_rest(&self) -> bool {
        self.segments.last() == Some(&PatternSeg::Rest)
    }
}

impl fmt::Display for NamePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (k, seg) in self.segments.iter().enumerate() {
            if k > 0 {
                f.write_str(".")?;
            }
            match seg {
                PatternSeg::Lit(l) => f.write_str(l)?,
                PatternSeg::Var(v) => write!(f, "{{{v}}}")?,
                PatternSeg::Rest => f.write_str("*")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `pattern` against `name`: the substituted `source` pattern, or `None` for no match.
    fn check(pattern: &str, name: &str, source: &str, expect: Option<&str>) {
        let p = NamePattern::parse(pattern).expect("a pattern");
        let s = NamePattern::parse(source).expect("a pattern");
        let got = p.bind(name).and_then(|b| s.substitute(&b));
        assert_eq!(got.as_deref(), expect, "{pattern} ~ {name} -> {source}");
        assert_eq!(p.to_string(), pattern, "printed form");
    }

    #[test]
    fn matching_and_substitution() {
        let cases: &[(&str, &str, &str, Option<&str>)] = &[
            ("a.b", "a.b", "x", Some("x")),
            ("a.b", "a.c", "x", None),
            ("a.b", "a.b.c", "x", None),
            ("a.b.c", "a.b", "x", None),
            ("a.{i}.w", "a.3.w", "b.{i}.v", Some("b.3.v")),
            ("a.{i}.w", "a.3.x", "b.{i}.v", None),
            ("a.{i}.{j}", "a.1.2", "{j}.{i}", Some("2.1")),
            ("a.{i}.{i}", "a.1.1", "{i}", Some("1")),
            ("a.{i}.{i}", "a.1.2", "{i}", None),
            ("a.*", "a.b.c.d", "z.*", Some("z.b.c.d")),
            ("a.*", "a", "z.*", None),
            (
                "a.{i}.*",
                "a.0.self_attn.q.weight",
                "b.{i}.*",
                Some("b.0.self_attn.q.weight"),
            ),
            ("*", "anything.at.all", "x", Some("x")),
            ("a.{i}", "a.1", "b.{j}", None),
            ("a.b", "a.b", "b.*", None),
        ];
        for (p, n, s, e) in cases {
            check(p, n, s, *e);
        }
    }

    #[test]
    fn textual_form() {
        for bad in ["", "a..b", "a.{1}", "a.*.b", "a.{i", "a-b"] {
            assert!(NamePattern::parse(bad).is_none(), "{bad:?} parsed");
        }
        assert!(NamePattern::all().matches("model.x"));
    }
}
