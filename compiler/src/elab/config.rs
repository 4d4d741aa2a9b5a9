//! Config resolution: a config type's defaults, then a preset, then an HF `config.json`,
//! then `--set` overrides; derived values and asserts are evaluated last.

use super::eval::{check_type, error, type_text, Evaluator, MAX_CONFIG_VALUE_SIZE, R};
use super::value::{Record, Value};
use encdecc_dsl::ast::*;
use encdecc_dsl::{Diagnostic, Span};
use std::collections::BTreeMap;
use std::rc::Rc;

/// Where an override came from, for error messages.
#[derive(Clone, Debug)]
pub enum Origin {
    Source(Span),
    Text(String),
}

/// Overrides as a tree mirroring nested configs (`encoder.hidden_size`).
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub leaves: BTreeMap<String, (Value, Origin)>,
    pub nested: BTreeMap<String, Overrides>,
}

impl Overrides {
    /// Sets a dotted path; a record value spreads into its fields.
    pub fn set(&mut self, path: &[String], v: Value, origin: Origin) {
        match path {
            [] => {}
            [last] => match &v {
                Value::Record(r) if r.type_name.is_empty() => {
                    let sub = self.nested.entry(last.clone()).or_default();
                    for (k, fv) in &r.fields {
                        sub.set(std::slice::from_ref(k), fv.clone(), origin.clone());
                    }
                }
                _ => {
                    self.leaves.insert(last.clone(), (v, origin));
                }
            },
            [head, rest @ ..] => self
                .nested
                .entry(head.clone())
                .or_default()
                .set(rest, v, origin),
        }
    }
}

fn origin_error(msg: String, origin: &Origin, fallback: Span) -> Diagnostic {
    match origin {
        Origin::Source(s) => Diagnostic::new(msg, *s),
        Origin::Text(t) => Diagnostic::new(format!("{msg} (from {t})"), fallback),
    }
}

/// Builds overrides from an HF `config.json` object for config type `def`: each field
/// reads its `from` keys (dotted paths) or its own name; nested configs read sub-objects.
pub fn hf_overrides(
    ev: &Evaluator,
    def: &ConfigDef,
    json: &serde_json::Value,
    prefix: &str,
) -> Overrides {
    let mut o = Overrides::default();
    for m in &def.members {
        let ConfigMember::Field(f) = m else { continue };
        let keys: Vec<String> = if f.from.is_empty() {
            vec![f.name.node.clone()]
        } else {
            f.from.iter().map(|k| k.node.clone()).collect()
        };
        let found = keys.iter().find_map(|k| {
            let mut cur = json;
            for part in k.split('.') {
                cur = cur.get(part)?;
            }
            Some((k.clone(), cur))
        });
        let Some((key, jv)) = found else { continue };
        let origin = Origin::Text(format!("config.json key `{prefix}{key}`"));
        if let TypeKind::Named(n) = &f.ty.kind {
            if let Some(sub) = ev.configs.get(n) {
                if jv.is_object() {
                    let nested = hf_overrides(ev, sub, jv, &format!("{prefix}{key}."));
                    o.nested.insert(f.name.node.clone(), nested);
                    continue;
                }
            }
        }
        o.leaves
            .insert(f.name.node.clone(), (Value::from_json(jv), origin));
    }
    o
}

/// Resolves config type `def` with `over`, reporting unknown override keys.
pub fn resolve(
    ev: &mut Evaluator,
    def: &Rc<ConfigDef>,
    over: &Overrides,
    path: &str,
    span: Span,
) -> R<Value> {
    let known: Vec<&str> = def
        .members
        .iter()
        .filter_map(|m| match m {
            ConfigMember::Field(f) => Some(f.name.node.as_str()),
            _ => None,
        })
        .collect();
    for (k, (_, origin)) in &over.leaves {
        if !known.contains(&k.as_str()) {
            return Err(origin_error(
                format!("unknown config field `{path}{k}` in `{}`", def.name.node),
                origin,
                span,
            )
            .with_note(format!(
                "fields of `{}`: {}",
                def.name.node,
                known.join(", ")
            )));
        }
    }
    for k in over.nested.keys() {
        if !known.contains(&k.as_str()) {
            return error(
                format!("unknown config field `{path}{k}` in `{}`", def.name.node),
                span,
            )
            .map_err(|d| {
                d.with_note(format!(
                    "fields of `{}`: {}",
                    def.name.node,
                    known.join(", ")
                ))
            });
        }
    }
    for m in &def.members {
        if let ConfigMember::Field(f) = m {
            super::eval::check_type_names(&f.ty, &ev.configs)
                .map_err(|msg| Diagnostic::new(msg, f.ty.span))?;
        }
    }
    let mut fields: Vec<(String, Value)> = vec![];
    // A derived value or an assert that fails often does so because of a `--set`: name them.
    let sets: Vec<&str> = over
        .leaves
        .values()
        .filter_map(|(_, o)| match o {
            Origin::Text(t) if t.starts_with("--set ") => Some(t.as_str()),
            _ => None,
        })
        .collect();
    let with_sets = |d: Diagnostic| {
        if sets.is_empty() {
            d
        } else {
            d.with_note(format!("this config was given {}", sets.join(", ")))
        }
    };
    ev.push_scope();
    let r = (|| {
        for m in &def.members {
            match m {
                ConfigMember::Field(f) => {
                    let name = &f.name.node;
                    let sub_def = match &f.ty.kind {
                        TypeKind::Named(n) => ev.configs.get(n).cloned(),
                        _ => None,
                    };
                    let v = if let Some(sub) = sub_def {
                        let empty = Overrides::default();
                        let o = over.nested.get(name).unwrap_or(&empty);
                        resolve(ev, &sub, o, &format!("{path}{name}."), span)?
                    } else if let Some((v, origin)) = over.leaves.get(name) {
                        check_config_size(v, &format!("{path}{name}"), f.name.span)?;
                        let v = coerce(v.clone(), &f.ty);
                        check_type(&v, &f.ty, &ev.configs, &mut ev.fuel).map_err(|m| {
                            origin_error(
                                format!("config field `{path}{name}`: {m}"),
                                origin,
                                f.name.span,
                            )
                        })?;
                        v
                    } else if let Some(d) = &f.default {
                        let v = ev.eval(d).map_err(|e| {
                            with_sets(e.with_note(format!(
                                "while computing the default of `{path}{name}`"
                            )))
                        })?;
                        check_config_size(&v, &format!("{path}{name}"), d.span)?;
                        let v = coerce(v, &f.ty);
                        check_type(&v, &f.ty, &ev.configs, &mut ev.fuel).map_err(|m| {
                            Diagnostic::new(format!("default of `{path}{name}`: {m}"), d.span)
                        })?;
                        v
                    } else {
                        return error(
                            format!("config field `{path}{name}` has no default and was not set"),
                            f.name.span,
                        )
                        .map_err(|d| {
                            d.with_note(format!(
                                "set it with `--set {path}{name}=...`, a preset or --hf-config"
                            ))
                        });
                    };
                    ev.define(name, v.clone());
                    fields.push((name.clone(), v));
                }
                ConfigMember::Stmt(Stmt::Let { name, value }) => {
                    let v = ev.eval(value).map_err(with_sets)?;
                    check_config_size(&v, &format!("{path}{}", name.node), value.span)?;
                    ev.define(&name.node, v.clone());
                    fields.push((name.node.clone(), v));
                }
                ConfigMember::Stmt(s) => {
                    ev.exec(s).map_err(|d| {
                        let what = if path.is_empty() {
                            String::new()
                        } else {
                            format!(" `{}`", path.trim_end_matches('.'))
                        };
                        with_sets(
                            d.with_note(format!("while checking config{what} ({})", def.name.node)),
                        )
                    })?;
                }
            }
        }
        Ok(())
    })();
    ev.pop_scope();
    r?;
    Ok(Value::Record(Rc::new(Record {
        type_name: def.name.node.clone(),
        fields,
    })))
}

/// Config values are dumped (`--emit summary`) and walked (type checks, coercion): each
/// stays within [`MAX_CONFIG_VALUE_SIZE`] values.
fn check_config_size(v: &Value, field: &str, span: Span) -> R<()> {
    if v.size_within(MAX_CONFIG_VALUE_SIZE).is_some() {
        return Ok(());
    }
    error(
        format!("config field `{field}` holds more than {MAX_CONFIG_VALUE_SIZE} values, the elaboration limit"),
        span,
    )
}

/// Ints where floats are expected; JSON integers for float fields.
fn coerce(v: Value, ty: &TypeExpr) -> Value {
    match (&ty.kind, v) {
        (TypeKind::Named(n), Value::Int(i)) if n == "float" => Value::Float(i as f64),
        (TypeKind::List(inner), Value::List(items)) => Value::List(Rc::new(
            items.iter().map(|it| coerce(it.clone(), inner)).collect(),
        )),
        (_, v) => v,
    }
}

/// [`parse_set_value`], except that an integer no i64 holds is an error, not a float or a
/// string.
pub fn set_value(text: &str) -> Result<Value, String> {
    let t = text.trim();
    let digits = t.strip_prefix(['-', '+']).unwrap_or(t);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) && t.parse::<i64>().is_err()
    {
        return Err(format!(
            "`{t}` is out of range: integers must fit in 64 bits (at most {})",
            i64::MAX
        ));
    }
    Ok(parse_set_value(text))
}

/// Parses the value of `--set K=V`: a number, bool, `none`, a JSON list, or else a string.
pub fn parse_set_value(text: &str) -> Value {
    let t = text.trim();
    match t {
        "true" => return Value::Bool(true),
        "false" => return Value::Bool(false),
        "none" | "null" => return Value::None,
        _ => {}
    }
    if let Ok(i) = t.parse::<i64>() {
        return Value::Int(i);
    }
    if let Ok(f) = t.parse::<f64>() {
        return Value::Float(f);
    }
    if t.starts_with('[') {
        if let Ok(j) = serde_json::from_str::<serde_json::Value>(t) {
            return Value::from_json(&j);
        }
    }
    Value::Str(t.trim_matches('"').into())
}

pub fn describe_type(ty: &TypeExpr) -> String {
    type_text(ty)
}
