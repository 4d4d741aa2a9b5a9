//! Adaptation rules (`adapt` items): which parameter of a target model comes from which
//! tensor of which source checkpoint, or from a fresh initialiser, and the training phases
//! that follow. [`plan`] checks the rules against the target's parameters and the sources'
//! tensor inventories (names, shapes, dtypes) and resolves them into a [`Plan`], one entry
//! per target parameter; the runtime applies it to the bytes. Like the rest of the compiler
//! this never reads tensor files.

pub mod pattern;
pub mod phase;

use crate::elab::{elaborate, ElabOptions, Elaborated, ParamInfo};
use encdecc_dsl::ast::{AdaptDef, AdaptRule, BlockKind, Item, RuleValue};
use encdecc_dsl::{Diagnostic, Program, SourceMap, Span};
pub use pattern::{Bindings, NamePattern};
pub use phase::{is_trainable, Phase, Phases};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

type R<T> = Result<T, Diagnostic>;

/// A tensor of a source checkpoint, as far as planning needs it.
#[derive(Clone, Debug, PartialEq)]
pub struct SourceTensor {
    pub shape: Vec<u64>,
    /// safetensors' name: `F32`, `BF16`, `F16`, …
    pub dtype: String,
}

/// What one source checkpoint holds, bound to a role of the `adapt` item.
#[derive(Clone, Debug)]
pub struct SourceInventory {
    pub role: String,
    /// Where it came from (a directory), for messages.
    pub origin: String,
    pub tensors: BTreeMap<String, SourceTensor>,
}

/// How one target tensor is made.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorInit {
    /// A bitwise copy of a source tensor.
    Copy {
        role: String,
        name: String,
    },
    Normal {
        mean: f64,
        std: f64,
    },
    Zeros,
    Ones,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PlannedTensor {
    /// The target's checkpoint name.
    pub name: String,
    pub shape: Vec<u64>,
    pub init: TensorInit,
}

/// Every parameter of the target, in declaration order, with how it is made.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub adapt: String,
    pub model: String,
    /// The dtype of every tensor written: that of the copied tensors (all alike), F32 when
    /// nothing is copied.
    pub dtype: String,
    pub tensors: Vec<PlannedTensor>,
    pub phases: Phases,
}

/// The float dtypes a checkpoint tensor may have.
pub const FLOAT_DTYPES: &[&str] = &["F32", "BF16", "F16"];

/// Finds the `adapt` item to use: the one named `name`, or else the only one whose sources
/// satisfy `fits` (`wanted` says what that means, for the error).
pub fn find(
    prog: &Program,
    name: Option<&str>,
    fits: impl Fn(&AdaptDef) -> bool,
    wanted: &str,
) -> R<Rc<AdaptDef>> {
    let all: Vec<Rc<AdaptDef>> = prog
        .items()
        .filter_map(|i| match i {
            Item::Adapt(a) => Some(a.clone()),
            _ => None,
        })
        .collect();
    let listing = || {
        let items: Vec<String> = all.iter().map(|a| signature(a)).collect();
        format!("adapt items: {}", items.join(", "))
    };
    if all.is_empty() {
        return Err(Diagnostic::unlocated("this file defines no `adapt` rules")
            .with_note("see models/t5gemma_adapt.edl"));
    }
    if let Some(n) = name {
        return all
            .iter()
            .find(|a| a.name.node == n)
            .cloned()
            .ok_or_else(|| {
                Diagnostic::unlocated(format!("no `adapt {n}` in this file")).with_note(listing())
            });
    }
    let fitting: Vec<&Rc<AdaptDef>> = all.iter().filter(|a| fits(a)).collect();
    match fitting.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(
            Diagnostic::unlocated(format!("no `adapt` item takes {wanted}")).with_note(listing()),
        ),
        many => Err(Diagnostic::unlocated(format!(
            "several `adapt` items take {wanted}; pick one with --rules NAME"
        ))
        .with_note(format!(
            "candidates: {}",
            many.iter()
                .map(|a| signature(a))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// `name(role, …) -> Model`, as written.
pub fn signature(a: &AdaptDef) -> String {
    let roles: Vec<&str> = a.sources.iter().map(|s| s.node.as_str()).collect();
    format!("{}({}) -> {}", a.name.node, roles.join(", "), a.target.node)
}

/// The training phases of an `adapt` item (checked on their own, without a target).
pub fn phases(def: &AdaptDef) -> R<Phases> {
    check(def)?;
    Ok(phases_of(def))
}

fn phases_of(def: &AdaptDef) -> Phases {
    Phases {
        phases: def
            .phases
            .iter()
            .map(|p| Phase {
                name: p.name.node.clone(),
                steps: p.steps.as_ref().map(|s| s.node),
                trainable: match &p.train {
                    Some(list) => list.iter().map(NamePattern::new).collect(),
                    None => vec![NamePattern::all()],
                },
            })
            .collect(),
    }
}

/// Elaborates the target model of `def` under `hf_config`: its parameters are what the
/// rules must cover. The model may live in an imported file (elaboration looks for models
/// in the root file, so the file defining it is put last; spans stay valid for `prog`).
pub fn elaborate_target(
    prog: &Program,
    def: &AdaptDef,
    hf_config: serde_json::Value,
) -> R<Elaborated> {
    let target = &def.target.node;
    let home = prog.modules.iter().position(|m| {
        m.items.iter().any(
            |i| matches!(i, Item::Block(b) if b.kind == BlockKind::Model && b.name.node == *target),
        )
    });
    let Some(home) = home else {
        return Err(Diagnostic::new(
            format!("no model `{target}` in this file or its imports"),
            def.target.span,
        )
        .with_label("the target model"));
    };
    let mut modules = prog.modules.clone();
    let m = modules.remove(home);
    modules.push(m);
    let view = Program {
        sources: SourceMap::default(),
        modules,
    };
    let opts = ElabOptions {
        model: Some(target.clone()),
        hf_config: Some(hf_config),
        ..ElabOptions::default()
    };
    elaborate(&view, &opts)
}

/// Resolves the rules of `def` against the target's parameters and the sources: each
/// parameter must be covered by exactly one rule, each source tensor must exist with the
/// parameter's shape and a float dtype shared by all copied tensors, every rule and `train`
/// pattern must match something. `sources` holds one inventory per role of `def`.
pub fn plan(
    prog: &Program,
    def: &AdaptDef,
    params: &[ParamInfo],
    sources: &[SourceInventory],
) -> R<Plan> {
    check(def)?;
    let at = |span: Span| where_is(&prog.sources, span);
    let model = &def.target.node;

    // Coverage: every parameter by exactly one rule; every rule covers something.
    let mut cover: Vec<Option<(usize, Bindings)>> = vec![None; params.len()];
    let mut used = vec![false; def.rules.len()];
    for (pi, p) in params.iter().enumerate() {
        for (ri, rule) in def.rules.iter().enumerate() {
            let Some(b) = NamePattern::new(&rule.target).bind(&p.ckpt) else {
                continue;
            };
            used[ri] = true;
            if let Some((first, _)) = &cover[pi] {
                return Err(Diagnostic::new(
                    format!("parameter `{}` is covered by two rules", p.ckpt),
                    rule.target.span,
                )
                .with_label("second rule")
                .with_note(format!(
                    "first covered at {}; rules must not overlap",
                    at(def.rules[*first].target.span)
                )));
            }
            cover[pi] = Some((ri, b));
        }
    }
    if let Some(ri) = used.iter().position(|u| !u) {
        let rule = &def.rules[ri];
        let pat = NamePattern::new(&rule.target);
        return Err(Diagnostic::new(
            format!("this rule covers no parameter of `{model}`"),
            rule.target.span,
        )
        .with_label("matches nothing")
        .with_note(nearest_note(&pat, params)));
    }
    let uncovered: Vec<&ParamInfo> = params
        .iter()
        .zip(&cover)
        .filter(|(_, c)| c.is_none())
        .map(|(p, _)| p)
        .collect();
    if !uncovered.is_empty() {
        let mut d = Diagnostic::new(
            format!(
                "{} parameter(s) of `{model}` are covered by no rule",
                uncovered.len()
            ),
            def.name.span,
        )
        .with_label("in these rules");
        for p in uncovered.iter().take(LIST_MAX) {
            d = d.with_note(format!("uncovered: {} {:?}", p.ckpt, p.shape));
        }
        if uncovered.len() > LIST_MAX {
            d = d.with_note(format!("… and {} more", uncovered.len() - LIST_MAX));
        }
        return Err(d);
    }

    // Sources: existence, shape, dtype.
    let by_role: HashMap<&str, &SourceInventory> =
        sources.iter().map(|s| (s.role.as_str(), s)).collect();
    for r in &def.sources {
        if !by_role.contains_key(r.node.as_str()) {
            return Err(Diagnostic::new(
                format!("no checkpoint was given for source `{}`", r.node),
                r.span,
            ));
        }
    }
    // The dtype of the first copied tensor: (dtype, "`name` of the `role` checkpoint", rule).
    let mut dtype: Option<(String, String, Span)> = None;
    let mut tensors = vec![];
    for (p, c) in params.iter().zip(&cover) {
        let (ri, b) = c.as_ref().expect("coverage checked");
        let rule = &def.rules[*ri];
        let init = match &rule.value {
            RuleValue::Copy { role, source } => {
                let role = role_of(def, role.as_ref().map(|r| r.node.as_str()));
                let inv = by_role[role];
                let name = NamePattern::new(source)
                    .substitute(b)
                    .expect("checked: source variables are bound by the target");
                let Some(t) = inv.tensors.get(&name) else {
                    return Err(missing_source(
                        def, rule, role, inv, &name, p, params, &cover,
                    ));
                };
                if t.shape != p.shape {
                    return Err(Diagnostic::new(
                        format!(
                            "`{}` {:?} cannot come from `{name}` {:?} ({}) of the `{role}` checkpoint",
                            p.ckpt, p.shape, t.shape, t.dtype
                        ),
                        rule.span,
                    )
                    .with_label("shapes differ")
                    .with_note(format!("in {}", inv.origin))
                    .with_note(format!("expected shape {:?}, found {:?}", p.shape, t.shape)));
                }
                if !FLOAT_DTYPES.contains(&t.dtype.as_str()) {
                    return Err(Diagnostic::new(
                        format!(
                            "source tensor `{name}` of the `{role}` checkpoint has dtype {}, expected F32, BF16 or F16",
                            t.dtype
                        ),
                        rule.span,
                    )
                    .with_label("copied here")
                    .with_note(format!("in {}", inv.origin)));
                }
                match &dtype {
                    None => {
                        let what = format!("`{name}` of the `{role}` checkpoint");
                        dtype = Some((t.dtype.clone(), what, rule.span))
                    }
                    Some((d, first, first_span)) if *d != t.dtype => {
                        return Err(Diagnostic::new(
                            format!(
                                "source tensor `{name}` of the `{role}` checkpoint is {}, but {first} is {d}: an adapted checkpoint has one dtype",
                                t.dtype
                            ),
                            rule.span,
                        )
                        .with_label(format!("expected {d}"))
                        .with_note(format!("{first} is copied at {}", at(*first_span)))
                        .with_note("convert one source first (e.g. save both in float32)"));
                    }
                    Some(_) => {}
                }
                TensorInit::Copy {
                    role: role.to_string(),
                    name,
                }
            }
            RuleValue::Init { name, args, .. } => {
                let arg = |k: &str| args.iter().find(|(a, _)| a.node == k).map(|(_, v)| v.node);
                match name.node.as_str() {
                    "normal" => TensorInit::Normal {
                        mean: arg("mean").unwrap_or(0.0),
                        std: arg("std").expect("checked: normal has std"),
                    },
                    "zeros" => TensorInit::Zeros,
                    "ones" => TensorInit::Ones,
                    other => unreachable!("checked initialiser {other}"),
                }
            }
        };
        tensors.push(PlannedTensor {
            name: p.ckpt.clone(),
            shape: p.shape.clone(),
            init,
        });
    }

    // Phases: each `train` pattern must name some parameter.
    for ph in &def.phases {
        for pat in ph.train.iter().flatten() {
            let np = NamePattern::new(pat);
            if !params.iter().any(|p| np.matches(&p.ckpt)) {
                return Err(Diagnostic::new(
                    format!(
                        "phase `{}` trains `{np}`, which matches no parameter of `{model}`",
                        ph.name.node
                    ),
                    pat.span,
                )
                .with_label("matches nothing")
                .with_note(nearest_note(&np, params)));
            }
        }
    }

    Ok(Plan {
        adapt: def.name.node.clone(),
        model: model.clone(),
        dtype: dtype.map(|(d, _, _)| d).unwrap_or_else(|| "F32".into()),
        tensors,
        phases: phases_of(def),
    })
}

/// How many names an error lists before it summarises.
const LIST_MAX: usize = 12;

/// The role a copy rule reads: the one written, or the only source.
fn role_of<'a>(def: &'a AdaptDef, role: Option<&'a str>) -> &'a str {
    role.unwrap_or_else(|| def.sources[0].node.as_str())
}

#[allow(clippy::too_many_arguments)]
fn missing_source(
    def: &AdaptDef,
    rule: &AdaptRule,
    role: &str,
    inv: &SourceInventory,
    name: &str,
    p: &ParamInfo,
    params: &[ParamInfo],
    cover: &[Option<(usize, Bindings)>],
) -> Diagnostic {
    // Every tensor this rule misses, so one run shows the whole problem.
    let rule_index = def.rules.iter().position(|r| std::ptr::eq(r, rule));
    let RuleValue::Copy { source, .. } = &rule.value else {
        unreachable!("a copy rule")
    };
    let src = NamePattern::new(source);
    let missing: Vec<String> = params
        .iter()
        .zip(cover)
        .filter(|(_, c)| c.as_ref().map(|(ri, _)| Some(*ri)) == Some(rule_index))
        .filter_map(|(_, c)| src.substitute(&c.as_ref().unwrap().1))
        .filter(|n| !inv.tensors.contains_key(n))
        .collect();
    let mut d = Diagnostic::new(
        format!("source tensor `{name}` is not in the `{role}` checkpoint"),
        source.span,
    )
    .with_label(format!("needed for `{}` {:?}", p.ckpt, p.shape))
    .with_note(format!("in {}", inv.origin));
    if missing.len() > 1 {
        d = d.with_note(format!(
            "this rule misses {} tensors: {}{}",
            missing.len(),
            missing
                .iter()
                .take(LIST_MAX)
                .cloned()
                .collect::<Vec<_>>()
                .join(", "),
            if missing.len() > LIST_MAX {
                ", …"
            } else {
                ""
            }
        ));
    }
    let near = nearest(&src, inv.tensors.keys().map(|s| s.as_str()));
    if let Some(n) = near {
        d = d.with_note(format!("the checkpoint has e.g. `{n}`"));
    }
    d
}

fn nearest_note(pat: &NamePattern, params: &[ParamInfo]) -> String {
    match nearest(pat, params.iter().map(|p| p.ckpt.as_str())) {
        Some(n) => format!("the closest parameter is `{n}`"),
        None => "the model has no parameters".into(),
    }
}

/// The name sharing the longest run of leading segments with the pattern's literal start.
fn nearest<'a>(pat: &NamePattern, names: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    use encdecc_dsl::ast::PatternSeg;
    let score = |n: &str| {
        n.split('.')
            .zip(&pat.segments)
            .take_while(|(part, seg)| match seg {
                PatternSeg::Lit(l) => l == part,
                _ => true,
            })
            .count()
    };
    names
        .map(|n| (score(n), n))
        .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(a.1)))
        .map(|(_, n)| n)
}

fn where_is(sources: &SourceMap, span: Span) -> String {
    if (span.file as usize) < sources.files.len() {
        let (line, col) = sources.line_col(span.file, span.start);
        format!("{}:{line}:{col}", sources.file(span.file).path)
    } else {
        "an earlier rule".into()
    }
}

/// Checks what can be checked without a target or sources: roles, initialisers, variables,
/// phases.
pub fn check(def: &AdaptDef) -> R<()> {
    let roles: Vec<&str> = def.sources.iter().map(|s| s.node.as_str()).collect();
    for (k, r) in def.sources.iter().enumerate() {
        if roles[..k].contains(&r.node.as_str()) {
            return Err(
                Diagnostic::new(format!("source `{}` is named twice", r.node), r.span)
                    .with_label("again here"),
            );
        }
    }
    for rule in &def.rules {
        check_rule(def, &roles, rule)?;
    }
    for (k, ph) in def.phases.iter().enumerate() {
        if def.phases[..k].iter().any(|p| p.name.node == ph.name.node) {
            return Err(Diagnostic::new(
                format!("phase `{}` is defined twice", ph.name.node),
                ph.name.span,
            )
            .with_label("again here"));
        }
        if let Some(s) = &ph.steps {
            if s.node == 0 {
                return Err(Diagnostic::new("a phase lasts at least one step", s.span)
                    .with_label("zero steps"));
            }
        } else if k + 1 < def.phases.len() {
            return Err(Diagnostic::new(
                format!(
                    "phase `{}` has no step count but is not the last phase",
                    ph.name.node
                ),
                ph.span,
            )
            .with_label("add `steps N`")
            .with_note("only the last phase may run until the end of training"));
        }
        if ph.train.as_ref().is_some_and(|t| t.is_empty()) {
            return Err(Diagnostic::new(
                format!("phase `{}` trains nothing", ph.name.node),
                ph.span,
            )
            .with_label("empty `train` list")
            .with_note("leave out `train [...]` to train every parameter"));
        }
    }
    Ok(())
}

fn check_rule(def: &AdaptDef, roles: &[&str], rule: &AdaptRule) -> R<()> {
    match &rule.value {
        RuleValue::Copy { role, source } => {
            match role {
                Some(r) if !roles.contains(&r.node.as_str()) => {
                    return Err(Diagnostic::new(
                        format!("`{}` is not a source of `adapt {}`", r.node, def.name.node),
                        r.span,
                    )
                    .with_label("unknown source")
                    .with_note(format!("sources: {}", roles.join(", "))));
                }
                None if roles.len() > 1 => {
                    return Err(Diagnostic::new(
                        "which source does this tensor come from?",
                        source.span,
                    )
                    .with_label("no source named")
                    .with_note(format!(
                        "write `{}: {}` (sources: {})",
                        roles[0],
                        NamePattern::new(source),
                        roles.join(", ")
                    )));
                }
                _ => {}
            }
            let target = NamePattern::new(&rule.target);
            let src = NamePattern::new(source);
            for v in src.vars() {
                if !target.vars().any(|t| t == v) {
                    return Err(Diagnostic::new(
                        format!("`{{{v}}}` is not bound by the target pattern"),
                        source.span,
                    )
                    .with_label("unbound variable")
                    .with_note(format!("the target `{target}` must use `{{{v}}}` too")));
                }
            }
            if src.has_rest() && !target.has_rest() {
                return Err(Diagnostic::new(
                    "`*` in the source but not in the target",
                    source.span,
                )
                .with_label("nothing to fill in")
                .with_note("end the target pattern with `.*` too"));
            }
        }
        RuleValue::Init { name, args, span } => {
            let allowed: &[&str] = match name.node.as_str() {
                "normal" => &["std", "mean"],
                "zeros" | "ones" => &[],
                other => {
                    return Err(Diagnostic::new(
                        format!("unknown initialiser `{other}`"),
                        name.span,
                    )
                    .with_label("not an initialiser")
                    .with_note("initialisers: normal(std: S, mean: M), zeros(), ones()"))
                }
            };
            for (k, (a, v)) in args.iter().enumerate() {
                if !allowed.contains(&a.node.as_str()) {
                    return Err(Diagnostic::new(
                        format!("`{}` takes no argument `{}`", name.node, a.node),
                        a.span,
                    )
                    .with_label("unknown argument")
                    .with_note(if allowed.is_empty() {
                        format!("`{}()` takes no arguments", name.node)
                    } else {
                        format!("arguments: {}", allowed.join(", "))
                    }));
                }
                if args[..k].iter().any(|(b, _)| b.node == a.node) {
                    return Err(Diagnostic::new(
                        format!("argument `{}` is given twice", a.node),
                        a.span,
                    ));
                }
                if !v.node.is_finite() || (a.node == "std" && v.node <= 0.0) {
                    return Err(Diagnostic::new(
                        format!(
                            "`{}` must be a finite{} number",
                            a.node,
                            if a.node == "std" { " positive" } else { "" }
                        ),
                        v.span,
                    )
                    .with_label("bad value"));
                }
            }
            if name.node == "normal" && !args.iter().any(|(a, _)| a.node == "std") {
                return Err(
                    Diagnostic::new("`normal` needs a standard deviation", *span)
                        .with_label("no `std`")
                        .with_note("e.g. normal(std: 0.02), HF's initializer_range"),
                );
            }
        }
    }
    Ok(())
}
