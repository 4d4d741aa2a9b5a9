//! Elaboration: a loaded `.edl` program plus a configuration (preset, HF config, `--set`)
//! becomes a graph for one entry point of one model.

pub mod builtins;
pub mod config;
pub mod eval;
pub mod value;

use crate::ir::verify::verify;
use crate::ir::{DType, Dim, Graph, Op, Shape, TensorType};
use config::{hf_overrides, resolve, set_value, Origin, Overrides};
use encdecc_dsl::ast::*;
use encdecc_dsl::{Diagnostic, Program, Span};
pub use eval::ParamInfo;
use eval::{error, CallArg, Evaluator, R};
use std::collections::HashMap;
use std::rc::Rc;
pub use value::Value;

#[derive(Clone, Debug, Default)]
pub struct ElabOptions {
    /// The model to build; by default the only `model` of the root file.
    pub model: Option<String>,
    pub preset: Option<String>,
    /// An HF `config.json`, already parsed.
    pub hf_config: Option<serde_json::Value>,
    /// `K=V` overrides, applied last.
    pub sets: Vec<String>,
    /// The entry point; `forward` by default.
    pub entry: Option<String>,
    /// Names of the inputs that will be given; `None` means every declared input.
    pub inputs: Option<Vec<String>>,
    /// Also output `probe` values (per-layer states, masks).
    pub probes: bool,
}

impl ElabOptions {
    /// Options from the `# key: value` comments that open a source file, as the elaboration
    /// test resources write them: `# preset: s-s`, `# sets: K=V K=V`, `# model: M`,
    /// `# entry: E`. The first line not starting with `#` ends them; other comments and
    /// keys are skipped.
    pub fn from_header(text: &str) -> ElabOptions {
        let mut opts = ElabOptions::default();
        for line in text.lines() {
            let Some(directive) = line.strip_prefix('#') else {
                break;
            };
            let Some((key, value)) = directive.split_once(':') else {
                continue;
            };
            let value = value.trim().to_string();
            match key.trim() {
                "preset" => opts.preset = Some(value),
                "sets" => opts.sets = value.split_whitespace().map(str::to_string).collect(),
                "model" => opts.model = Some(value),
                "entry" => opts.entry = Some(value),
                _ => {}
            }
        }
        opts
    }
}

/// Declared entry-point input.
#[derive(Clone, Debug)]
pub struct InputInfo {
    pub name: String,
    pub ty: TensorType,
    pub optional: bool,
}

pub struct Elaborated {
    pub graph: Graph,
    pub model: String,
    pub config: Value,
    /// Every parameter of the model (tied ones once), in declaration order.
    pub params: Vec<ParamInfo>,
    pub inputs: Vec<InputInfo>,
    /// Names of the model's entry points.
    pub entries: Vec<String>,
    pub presets: Vec<String>,
}

impl Evaluator {
    pub fn push_scope(&mut self) {
        self.push_frame_scope();
    }
}

pub fn elaborate(prog: &Program, opts: &ElabOptions) -> Result<Elaborated, Diagnostic> {
    let mut ev = Evaluator::new(opts.probes);
    let root = prog.modules.last().map(|m| m.file).unwrap_or(0);
    let mut models: Vec<Rc<BlockDef>> = vec![];
    let mut presets: Vec<Rc<PresetDef>> = vec![];
    let mut defined: HashMap<String, Span> = HashMap::new();
    let mut global_lets = vec![];
    for m in &prog.modules {
        for item in &m.items {
            let (name, span) = match item {
                Item::Config(c) => (&c.name.node, c.name.span),
                Item::Block(b) => (&b.name.node, b.name.span),
                Item::Fn(f) => match &f.name {
                    Some(n) => (&n.node, n.span),
                    None => continue,
                },
                Item::Preset(p) => {
                    if m.file == root {
                        presets.push(p.clone());
                    }
                    continue;
                }
                Item::Let(s) => {
                    global_lets.push(s.clone());
                    continue;
                }
                Item::Import(_) => continue,
                // Adaptation rules are read by `adapt`, not by elaboration.
                Item::Adapt(_) => continue,
            };
            if defined.contains_key(name) {
                return error(format!("`{name}` is defined twice"), span).map_err(|d| {
                    d.with_note("names of configs, blocks and functions share one namespace")
                });
            }
            defined.insert(name.clone(), span);
            match item {
                Item::Config(c) => {
                    ev.configs.insert(name.clone(), c.clone());
                }
                Item::Block(b) => {
                    ev.globals.insert(name.clone(), Value::Block(b.clone()));
                    if b.kind == BlockKind::Model && m.file == root {
                        models.push(b.clone());
                    }
                }
                Item::Fn(f) => {
                    ev.globals.insert(name.clone(), Value::Fn(f.clone()));
                }
                _ => {}
            }
        }
    }
    for s in &global_lets {
        if let Stmt::Let { name, value } = s {
            let v = ev.eval(value)?;
            ev.globals.insert(name.node.clone(), v);
        }
    }
    let model = match &opts.model {
        Some(n) => models
            .iter()
            .find(|m| m.name.node == *n)
            .cloned()
            .ok_or_else(|| {
                Diagnostic::unlocated(format!("no model `{n}` in this file")).with_note(format!(
                    "models: {}",
                    models
                        .iter()
                        .map(|m| m.name.node.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?,
        None => match models.as_slice() {
            [one] => one.clone(),
            [] => return Err(Diagnostic::unlocated("this file defines no `model`")),
            many => {
                return Err(Diagnostic::unlocated(
                    "this file defines several models; pick one with --model",
                )
                .with_note(format!(
                    "models: {}",
                    many.iter()
                        .map(|m| m.name.node.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )))
            }
        },
    };
    let cfg_param = match model.params.as_slice() {
        [p] => p,
        _ => {
            return error(
                "a model takes exactly one parameter: its config",
                model.name.span,
            )
        }
    };
    let cfg_def = match cfg_param.ty.as_ref().map(|t| &t.kind) {
        Some(TypeKind::Named(n)) => ev.configs.get(n).cloned(),
        _ => None,
    }
    .ok_or_else(|| {
        Diagnostic::new(
            "the model's parameter must have a config type",
            cfg_param.name.span,
        )
    })?;

    // Overrides: preset, then HF config, then --set.
    let mut over = Overrides::default();
    if let Some(p) = &opts.preset {
        let preset = presets.iter().find(|x| x.name.node == *p).ok_or_else(|| {
            Diagnostic::unlocated(format!("unknown preset `{p}`")).with_note(format!(
                "presets: {}",
                presets
                    .iter()
                    .map(|x| x.name.node.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        for (path, e) in &preset.assigns {
            let v = ev.eval(e)?;
            over.set(&path.node, v, Origin::Source(path.span));
        }
    }
    if let Some(j) = &opts.hf_config {
        if !j.is_object() {
            return Err(Diagnostic::unlocated("the HF config must be a JSON object"));
        }
        merge(&mut over, hf_overrides(&ev, &cfg_def, j, ""));
    }
    for s in &opts.sets {
        let (k, v) = s.split_once('=').ok_or_else(|| {
            Diagnostic::unlocated(format!(
                "`--set {s}`: expected KEY=VALUE, e.g. --set encoder.num_hidden_layers=4"
            ))
        })?;
        let path: Vec<String> = k.trim().split('.').map(|p| p.to_string()).collect();
        let value = set_value(v).map_err(|m| Diagnostic::unlocated(format!("`--set {s}`: {m}")))?;
        over.set(&path, value, Origin::Text(format!("--set {s}")));
    }
    let config = resolve(&mut ev, &cfg_def, &over, "", cfg_def.name.span)?;

    let arg = CallArg {
        name: None,
        value: config.clone(),
        span: model.name.span,
    };
    // A budget hit while building the model is most often a `--set` size: name them.
    let sets_note = |ev: &Evaluator, d: Diagnostic| {
        if ev.over_budget && !opts.sets.is_empty() {
            let sets: Vec<String> = opts.sets.iter().map(|s| format!("--set {s}")).collect();
            d.with_note(format!("the model was configured with {}", sets.join(", ")))
        } else {
            d
        }
    };
    let inst = ev
        .instantiate(
            model.clone(),
            vec![arg],
            String::new(),
            String::new(),
            model.name.span,
        )
        .map_err(|d| sets_note(&ev, d))?;

    let entries: Vec<Rc<EntryDef>> = model
        .members
        .iter()
        .filter_map(|m| match m {
            Member::Entry(e) => Some(e.clone()),
            _ => None,
        })
        .collect();
    let entry_name = opts.entry.clone().unwrap_or_else(|| "forward".into());
    let entry = entries
        .iter()
        .find(|e| e.name.node == entry_name)
        .ok_or_else(|| {
            Diagnostic::unlocated(format!(
                "model `{}` has no entry point `{entry_name}`",
                model.name.node
            ))
            .with_note(format!(
                "entry points: {}",
                entries
                    .iter()
                    .map(|e| e.name.node.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
    let mut inputs = vec![];
    let mut bound = vec![];
    for d in &entry.inputs {
        let dtype = DType::from_name(&d.dtype.node).ok_or_else(|| {
            Diagnostic::new(format!("unknown dtype `{}`", d.dtype.node), d.dtype.span)
                .with_note("dtypes: f32, i64, bool")
        })?;
        let dims = d
            .dims
            .iter()
            .map(|x| match &x.node {
                DimExpr::Known(n) if *n >= 0 => Ok(Dim::Known(*n as u64)),
                DimExpr::Known(n) => error(format!("negative dimension {n}"), x.span),
                // A name bound to an int by the model (a `let`) is that size, so an input can
                // be shaped by the config (a decode step's caches: [layers, B, heads, C, dim]).
                DimExpr::Sym(s) => match inst.get(s) {
                    Some(Value::Int(n)) if n >= 0 => Ok(Dim::Known(n as u64)),
                    _ => Ok(Dim::Sym(s.clone())),
                },
            })
            .collect::<R<Vec<_>>>()?;
        let ty = TensorType {
            dtype,
            shape: Shape(dims),
        };
        inputs.push(InputInfo {
            name: d.name.node.clone(),
            ty: ty.clone(),
            optional: d.optional,
        });
        let given = opts
            .inputs
            .as_ref()
            .is_none_or(|names| names.contains(&d.name.node));
        let v = if given {
            let n = ev.add(
                Op::Input {
                    name: d.name.node.clone(),
                },
                &[],
                Some(ty),
                d.name.span,
            )?;
            Value::Tensor(n)
        } else if d.optional {
            Value::None
        } else {
            return Err(Diagnostic::unlocated(format!(
                "entry `{entry_name}` needs input `{}`",
                d.name.node
            )));
        };
        bound.push((d.name.node.clone(), v));
    }
    if let Some(names) = &opts.inputs {
        for n in names {
            if !entry.inputs.iter().any(|d| d.name.node == *n) {
                return Err(Diagnostic::unlocated(format!(
                    "entry `{entry_name}` has no input `{n}`"
                ))
                .with_note(format!(
                    "inputs: {}",
                    entry
                        .inputs
                        .iter()
                        .map(|d| d.name.node.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
    }
    ev.run_entry(inst, bound, &entry.body)
        .map_err(|d| sets_note(&ev, d))?;
    if ev.graph.outputs.is_empty() {
        return error(
            format!("entry `{entry_name}` produces no `out` values"),
            entry.name.span,
        );
    }
    ev.graph.name = entry_name;
    ev.graph.remove_dead();
    verify(&ev.graph).map_err(|e| {
        Diagnostic::unlocated(format!(
            "internal error: the elaborated graph does not verify: {e}"
        ))
    })?;
    Ok(Elaborated {
        graph: ev.graph,
        model: model.name.node.clone(),
        config,
        params: ev.params,
        inputs,
        entries: entries.iter().map(|e| e.name.node.clone()).collect(),
        presets: presets.iter().map(|p| p.name.node.clone()).collect(),
    })
}

fn merge(into: &mut Overrides, from: Overrides) {
    into.leaves.extend(from.leaves);
    for (k, v) in from.nested {
        merge(into.nested.entry(k).or_default(), v);
    }
}
