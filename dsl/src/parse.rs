//! pest parse tree → AST. Grammar errors become [`Diagnostic`]s with a code frame.

use crate::ast::*;
use crate::diagnostic::Diagnostic;
use crate::source::{Span, Spanned};
use pest::iterators::Pair;
use pest::Parser;
use std::rc::Rc;

#[derive(pest_derive::Parser)]
#[grammar = "edl.pest"]
struct EdlParser;

/// Parses one file's text. `file` is its id in the caller's `SourceMap`.
pub fn parse_module(file: u32, text: &str) -> Result<Module, Diagnostic> {
    pest::set_error_detail(true);
    check_nesting(file, text)?;
    let mut pairs = EdlParser::parse(Rule::file, text).map_err(|e| grammar_error(file, text, e))?;
    let root = pairs.next().expect("pest returns the file rule");
    let cx = Cx {
        file,
        depth: std::cell::Cell::new(0),
    };
    let mut inner = root.into_inner();
    let header = inner.next().expect("grammar: header first");
    let version_pair = header.into_inner().next().expect("grammar: header int");
    let version = Spanned {
        node: cx.int(&version_pair)?,
        span: cx.span(&version_pair),
    };
    let mut items = vec![];
    for pair in inner {
        if pair.as_rule() == Rule::EOI {
            break;
        }
        items.push(cx.item(pair)?);
    }
    Ok(Module {
        file,
        version,
        items,
    })
}

/// Deeper nesting of brackets is rejected before parsing.
const MAX_NESTING: usize = 128;

/// pest, this parser and every later walk of the tree recurse once or more per bracket
/// level (`(`, `[`, `{`: blocks as much as expressions), so deep nesting could overflow the
/// stack before [`MAX_DEPTH`] is reached; a scan of the text bounds it first. Strings and
/// comments are skipped; unbalanced brackets are left to the grammar.
fn check_nesting(file: u32, text: &str) -> Result<(), Diagnostic> {
    let b = text.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' && b[i] != b'\n' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'(' | b'[' | b'{' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(Diagnostic::new(
                        format!("brackets nested too deeply (more than {MAX_NESTING} levels)"),
                        Span::new(file, i, i + 1),
                    )
                    .with_label("here")
                    .with_note("split it into `let` bindings or functions"));
                }
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

fn grammar_error(file: u32, text: &str, e: pest::error::Error<Rule>) -> Diagnostic {
    let mut pos = match e.location {
        pest::error::InputLocation::Pos(p) => p,
        pest::error::InputLocation::Span((s, _)) => s,
    };
    let mut expected: Vec<String> = vec![];
    // With error detail on, pest reports the furthest position it reached and the tokens
    // (`)`, `=`, …) and rules it wanted there; its plain report knows only rules.
    if let Some(att) = e.parse_attempts() {
        pos = att.max_position;
        for st in att.call_stacks() {
            if let Some(name) = st.parent.and_then(rule_name) {
                expected.push(name.to_string());
            }
        }
        // pest does not export the token type; its printed form is the token itself, or
        // `a..z` for a character range.
        for t in att.expected_tokens() {
            let t = t.to_string();
            match t.as_str() {
                "0..9" | "1..9" => expected.push("a number".into()),
                "a..z" | "A..Z" => expected.push("a name".into()),
                x if x.trim().is_empty() || x == "#" || x.contains("..") || x == "BUILTIN_RULE" => {
                }
                x => expected.push(format!("`{x}`")),
            }
        }
    } else if let pest::error::ErrorVariant::ParsingError { positives, .. } = &e.variant {
        expected.extend(
            positives
                .iter()
                .filter_map(|r| rule_name(*r))
                .map(|s| s.to_string()),
        );
    }
    // After a keyword pest stops at the following space; point at the word instead.
    if text[pos.min(text.len())..].starts_with([' ', '\t']) {
        let word_start = text[..pos]
            .trim_end_matches(|c: char| c.is_alphanumeric() || c == '_')
            .len();
        if word_start < pos {
            pos = word_start;
        }
    }
    // An expected word that is already there (`let` when `let` is found) only confuses.
    let found = describe_found(text, pos);
    expected.retain(|x| *x != found);
    expected.sort();
    expected.dedup();
    collapse(&mut expected);
    let names: Vec<&str> = expected.iter().map(|s| s.as_str()).collect();
    let message = if names.is_empty() {
        format!("syntax error: unexpected {found}")
    } else {
        format!("syntax error: expected {}, found {found}", join_or(&names))
    };
    let end = (pos + 1).min(text.len()).max(pos);
    Diagnostic::new(message, Span::new(file, pos, end)).with_label("here")
}

/// Long lists of alternatives say less than their summary: operators become "an operator",
/// the ways to start an expression "an expression". Closing brackets and `=` stay.
fn collapse(expected: &mut Vec<String>) {
    const OPERATORS: &[&str] = &[
        "`!=`",
        "`%`",
        "`**`",
        "`*`",
        "`+`",
        "`-`",
        "`.`",
        "`/`",
        "`<=`",
        "`<`",
        "`==`",
        "`>=`",
        "`>`",
        "`@`",
        "`and`",
        "`or`",
        "`(`",
        "`[`",
        "`..`",
        "an operator",
    ];
    const STARTS: &[&str] = &[
        "`\"`",
        "`(`",
        "`-`",
        "`[`",
        "`_`",
        "`false`",
        "`none`",
        "`true`",
        "`{`",
        "`if`",
        "`not`",
        "a name",
        "a number",
        "a string",
        "an expression",
    ];
    let count =
        |set: &[&str], v: &Vec<String>| v.iter().filter(|x| set.contains(&x.as_str())).count();
    // Only a real expression position also accepts literals like `true`.
    if count(STARTS, expected) >= 4 && expected.iter().any(|x| x == "`true`") {
        expected.retain(|x| !STARTS.contains(&x.as_str()));
        expected.push("an expression".into());
    }
    if count(OPERATORS, expected) >= 3 {
        expected.retain(|x| !OPERATORS.contains(&x.as_str()));
        expected.push("an operator".into());
    }
    if expected.iter().any(|x| x == "a name") {
        expected.retain(|x| x != "`_`");
    }
    expected.sort();
    expected.dedup();
}

fn describe_found(text: &str, pos: usize) -> String {
    match text[pos.min(text.len())..].chars().next() {
        None => "end of file".into(),
        Some('\n') => "end of line".into(),
        Some(_) => {
            let word: String = text[pos..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .take(64)
                .collect();
            if word.is_empty() {
                format!("`{}`", text[pos..].chars().next().unwrap_or(' '))
            } else {
                format!("`{word}`")
            }
        }
    }
}

fn join_or(names: &[&str]) -> String {
    match names {
        [] => String::new(),
        [one] => one.to_string(),
        _ => format!(
            "{} or {}",
            names[..names.len() - 1].join(", "),
            names[names.len() - 1]
        ),
    }
}

/// Human names of the rules that can appear in "expected …"; internal rules return `None`.
fn rule_name(rule: Rule) -> Option<&'static str> {
    Some(match rule {
        Rule::EOI => "end of file",
        Rule::header => "a version header `edl 1`",
        Rule::ident => "a name",
        Rule::int | Rule::int_lit => "an integer",
        Rule::float | Rule::float_lit => "a number",
        Rule::string => "a string",
        Rule::import => "`import`",
        Rule::config_def => "`config`",
        Rule::preset_def => "`preset`",
        Rule::block_def => "`block`",
        Rule::model_def => "`model`",
        Rule::fn_def | Rule::fn_member => "`fn`",
        Rule::let_stmt => "`let`",
        Rule::expr | Rule::primary => "an expression",
        Rule::type_expr => "a type",
        Rule::body => "`{`",
        Rule::param_decl | Rule::param_list => "a parameter",
        Rule::field_def => "a field",
        Rule::stmt => "a statement",
        Rule::path => "a dotted name",
        Rule::dim => "a dimension",
        Rule::call_args => "`(`",
        Rule::adapt_def => "`adapt`",
        Rule::adapt_rule | Rule::pattern => "a parameter pattern",
        Rule::source_ref => "a source tensor",
        Rule::init_call => "an initialiser",
        Rule::init_arg => "an argument `name: number`",
        Rule::init_number => "a number",
        Rule::phase_def | Rule::phase_kw => "`phase`",
        Rule::phase_steps => "`steps`",
        Rule::phase_train => "`train`",
        Rule::cmp_op
        | Rule::add_op
        | Rule::mul_op
        | Rule::pow_op
        | Rule::range_op
        | Rule::or_op
        | Rule::and_op => "an operator",
        _ => return None,
    })
}

struct Cx {
    file: u32,
    /// Nesting of `expr` calls plus the length of the operator chain being built: bounds
    /// the syntax tree's depth, so neither this parser nor later recursive walks (and
    /// drops) of the tree can overflow the stack on hostile input.
    depth: std::cell::Cell<usize>,
}

/// Deeper expressions are rejected with a diagnostic.
const MAX_DEPTH: usize = 600;

type PResult<T> = Result<T, Diagnostic>;

impl Cx {
    /// The pair's span without the whitespace pest skipped at its end (before an optional
    /// part that matched nothing), so carets cover only the text.
    fn span(&self, p: &Pair<Rule>) -> Span {
        let s = p.as_span();
        let len = s.as_str().trim_end().len();
        Span::new(self.file, s.start(), s.start() + len)
    }

    fn ident(&self, p: Pair<Rule>) -> Ident {
        Spanned {
            span: self.span(&p),
            node: p.as_str().to_string(),
        }
    }

    fn int(&self, p: &Pair<Rule>) -> PResult<i64> {
        p.as_str().parse::<i64>().map_err(|_| {
            Diagnostic::new("integer literal out of range", self.span(p))
                .with_note("integers must fit in 64 bits")
        })
    }

    fn string(&self, p: Pair<Rule>) -> Spanned<String> {
        let span = self.span(&p);
        let inner = p.into_inner().next().map(|i| i.as_str()).unwrap_or("");
        let mut s = String::new();
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                match chars.next() {
                    Some('n') => s.push('\n'),
                    Some(other) => s.push(other),
                    None => {}
                }
            } else {
                s.push(c);
            }
        }
        Spanned { node: s, span }
    }

    fn path(&self, p: Pair<Rule>) -> Spanned<Vec<String>> {
        let span = self.span(&p);
        Spanned {
            node: p.into_inner().map(|i| i.as_str().to_string()).collect(),
            span,
        }
    }

    fn item(&self, p: Pair<Rule>) -> PResult<Item> {
        Ok(match p.as_rule() {
            Rule::import => Item::Import(self.string(p.into_inner().next().unwrap())),
            Rule::config_def => Item::Config(Rc::new(self.config(p)?)),
            Rule::preset_def => Item::Preset(Rc::new(self.preset(p)?)),
            Rule::block_def => Item::Block(Rc::new(self.block(p, BlockKind::Block)?)),
            Rule::model_def => Item::Block(Rc::new(self.block(p, BlockKind::Model)?)),
            Rule::fn_def => Item::Fn(Rc::new(self.fn_def(p)?)),
            Rule::let_stmt => Item::Let(self.stmt(p)?),
            Rule::adapt_def => Item::Adapt(Rc::new(self.adapt(p)?)),
            r => unreachable!("grammar: unexpected item {r:?}"),
        })
    }

    fn config(&self, p: Pair<Rule>) -> PResult<ConfigDef> {
        let mut inner = p.into_inner();
        let name = self.ident(inner.next().unwrap());
        let mut members = vec![];
        for m in inner {
            members.push(match m.as_rule() {
                Rule::field_def => ConfigMember::Field(self.field(m)?),
                _ => ConfigMember::Stmt(self.stmt(m)?),
            });
        }
        Ok(ConfigDef { name, members })
    }

    fn field(&self, p: Pair<Rule>) -> PResult<FieldDef> {
        let mut inner = p.into_inner();
        let name = self.ident(inner.next().unwrap());
        let ty = self.type_expr(inner.next().unwrap());
        let mut default = None;
        let mut from = vec![];
        for rest in inner {
            match rest.as_rule() {
                Rule::expr => default = Some(self.expr(rest)?),
                Rule::from_clause => from = rest.into_inner().map(|s| self.string(s)).collect(),
                r => unreachable!("grammar: field {r:?}"),
            }
        }
        Ok(FieldDef {
            name,
            ty,
            default,
            from,
        })
    }

    fn type_expr(&self, p: Pair<Rule>) -> TypeExpr {
        let span = self.span(&p);
        let mut inner = p.into_inner();
        let head = inner.next().unwrap();
        let kind = match head.as_rule() {
            Rule::list_type => {
                TypeKind::List(Box::new(self.type_expr(head.into_inner().next().unwrap())))
            }
            _ => TypeKind::Named(head.as_str().to_string()),
        };
        TypeExpr {
            kind,
            optional: inner.next().is_some(),
            span,
        }
    }

    fn preset(&self, p: Pair<Rule>) -> PResult<PresetDef> {
        let mut inner = p.into_inner();
        let name = self.string(inner.next().unwrap());
        let mut assigns = vec![];
        for a in inner {
            let mut ai = a.into_inner();
            let path = self.path(ai.next().unwrap());
            assigns.push((path, self.expr(ai.next().unwrap())?));
        }
        Ok(PresetDef { name, assigns })
    }

    fn params(&self, p: Option<Pair<Rule>>) -> PResult<Vec<ParamDecl>> {
        let Some(p) = p else { return Ok(vec![]) };
        let mut out = vec![];
        for d in p.into_inner() {
            let mut inner = d.into_inner();
            let name = self.ident(inner.next().unwrap());
            let mut ty = None;
            let mut default = None;
            for rest in inner {
                match rest.as_rule() {
                    Rule::type_expr => ty = Some(self.type_expr(rest)),
                    _ => default = Some(self.expr(rest)?),
                }
            }
            out.push(ParamDecl { name, ty, default });
        }
        Ok(out)
    }

    fn block(&self, p: Pair<Rule>, kind: BlockKind) -> PResult<BlockDef> {
        let mut inner = p.into_inner().peekable();
        let name = self.ident(inner.next().unwrap());
        let params = if inner.peek().map(|p| p.as_rule()) == Some(Rule::param_list) {
            self.params(inner.next())?
        } else {
            vec![]
        };
        let mut members = vec![];
        for m in inner {
            members.push(self.member(m)?);
        }
        Ok(BlockDef {
            kind,
            name,
            params,
            members,
        })
    }

    fn ckpt(&self, p: Option<Pair<Rule>>) -> Option<Spanned<String>> {
        p.map(|c| self.string(c.into_inner().next().unwrap()))
    }

    fn member(&self, p: Pair<Rule>) -> PResult<Member> {
        Ok(match p.as_rule() {
            Rule::param_stmt => {
                let mut inner = p.into_inner();
                let name = self.ident(inner.next().unwrap());
                let shape = self.expr(inner.next().unwrap())?;
                Member::Param {
                    name,
                    shape,
                    ckpt: self.ckpt(inner.next()),
                }
            }
            Rule::sub_stmt => {
                let mut inner = p.into_inner();
                let name = self.ident(inner.next().unwrap());
                let v = inner.next().unwrap();
                let value = if v.as_rule() == Rule::repeat_expr {
                    let mut ri = v.into_inner();
                    let var = self.ident(ri.next().unwrap());
                    let range = self.expr(ri.next().unwrap())?;
                    let body = self.expr(ri.next().unwrap())?;
                    SubValue::Repeat { var, range, body }
                } else {
                    SubValue::One(self.expr(v)?)
                };
                Member::Sub {
                    name,
                    value,
                    ckpt: self.ckpt(inner.next()),
                }
            }
            Rule::tie_stmt => {
                let mut inner = p.into_inner();
                let target = self.path(inner.next().unwrap());
                let source = self.path(inner.next().unwrap());
                let cond = inner.next().map(|c| self.expr(c)).transpose()?;
                Member::Tie {
                    target,
                    source,
                    cond,
                }
            }
            Rule::fn_member => Member::Fn(Rc::new(self.fn_like(p, None)?)),
            Rule::entry_def => Member::Entry(Rc::new(self.entry(p)?)),
            _ => Member::Stmt(self.stmt(p)?),
        })
    }

    fn fn_def(&self, p: Pair<Rule>) -> PResult<FnDef> {
        let span = self.span(&p);
        let mut inner = p.into_inner();
        let name = self.ident(inner.next().unwrap());
        let mut f = self.fn_rest(inner, span)?;
        f.name = Some(name);
        Ok(f)
    }

    fn fn_like(&self, p: Pair<Rule>, name: Option<Ident>) -> PResult<FnDef> {
        let span = self.span(&p);
        let mut f = self.fn_rest(p.into_inner(), span)?;
        f.name = name;
        Ok(f)
    }

    fn fn_rest(&self, inner: pest::iterators::Pairs<Rule>, span: Span) -> PResult<FnDef> {
        let mut params = vec![];
        let mut body = vec![];
        for p in inner {
            match p.as_rule() {
                Rule::param_list => params = self.params(Some(p))?,
                Rule::body => body = self.body(p)?,
                r => unreachable!("grammar: fn {r:?}"),
            }
        }
        Ok(FnDef {
            name: None,
            params,
            body,
            span,
        })
    }

    fn entry(&self, p: Pair<Rule>) -> PResult<EntryDef> {
        let mut inner = p.into_inner();
        let name = self.ident(inner.next().unwrap());
        let mut inputs = vec![];
        let mut body = vec![];
        for p in inner {
            match p.as_rule() {
                Rule::input_list => {
                    for d in p.into_inner() {
                        let mut di = d.into_inner();
                        let name = self.ident(di.next().unwrap());
                        let dtype = self.ident(di.next().unwrap());
                        let mut dims = vec![];
                        let mut optional = false;
                        for rest in di {
                            match rest.as_rule() {
                                Rule::dim => {
                                    let span = self.span(&rest);
                                    let v = rest.into_inner().next().unwrap();
                                    let node = if v.as_rule() == Rule::int {
                                        DimExpr::Known(self.int(&v)?)
                                    } else {
                                        DimExpr::Sym(v.as_str().to_string())
                                    };
                                    dims.push(Spanned { node, span });
                                }
                                _ => optional = true,
                            }
                        }
                        inputs.push(InputDecl {
                            name,
                            dtype,
                            dims,
                            optional,
                        });
                    }
                }
                Rule::body => body = self.body(p)?,
                r => unreachable!("grammar: entry {r:?}"),
            }
        }
        Ok(EntryDef { name, inputs, body })
    }

    fn body(&self, p: Pair<Rule>) -> PResult<Vec<Stmt>> {
        p.into_inner().map(|s| self.stmt(s)).collect()
    }

    fn stmt(&self, p: Pair<Rule>) -> PResult<Stmt> {
        let span = self.span(&p);
        let rule = p.as_rule();
        let mut inner = p.into_inner();
        Ok(match rule {
            Rule::let_stmt | Rule::assign_stmt => {
                let name = self.ident(inner.next().unwrap());
                let value = self.expr(inner.next().unwrap())?;
                if rule == Rule::let_stmt {
                    Stmt::Let { name, value }
                } else {
                    Stmt::Assign { name, value }
                }
            }
            Rule::assert_stmt => {
                let cond = self.expr(inner.next().unwrap())?;
                let message = inner.next().map(|m| self.expr(m)).transpose()?;
                Stmt::Assert {
                    cond,
                    message,
                    span,
                }
            }
            Rule::if_stmt => {
                let cond = self.expr(inner.next().unwrap())?;
                let then = self.body(inner.next().unwrap())?;
                let otherwise = match inner.next() {
                    None => vec![],
                    Some(e) if e.as_rule() == Rule::body => self.body(e)?,
                    Some(e) => vec![self.stmt(e)?],
                };
                Stmt::If {
                    cond,
                    then,
                    otherwise,
                }
            }
            Rule::for_stmt => {
                let var = self.ident(inner.next().unwrap());
                let iter = self.expr(inner.next().unwrap())?;
                let body = self.body(inner.next().unwrap())?;
                Stmt::For { var, iter, body }
            }
            Rule::return_stmt => Stmt::Return(self.expr(inner.next().unwrap())?),
            Rule::out_stmt | Rule::probe_stmt => {
                let name = self.expr(inner.next().unwrap())?;
                let value = self.expr(inner.next().unwrap())?;
                if rule == Rule::out_stmt {
                    Stmt::Out { name, value }
                } else {
                    Stmt::Probe { name, value }
                }
            }
            r => unreachable!("grammar: statement {r:?}"),
        })
    }

    fn expr(&self, p: Pair<Rule>) -> PResult<Expr> {
        let d = self.depth.get() + 1;
        if d > MAX_DEPTH {
            return Err(
                Diagnostic::new("expression nested too deeply", self.span(&p))
                    .with_label("here")
                    .with_note("split it into `let` bindings"),
            );
        }
        self.depth.set(d);
        let r = self.expr_inner(p);
        self.depth.set(d - 1);
        r
    }

    fn expr_inner(&self, p: Pair<Rule>) -> PResult<Expr> {
        let span = self.span(&p);
        let rule = p.as_rule();
        match rule {
            Rule::string => {
                return Ok(Expr {
                    kind: ExprKind::Str(self.string(p).node),
                    span,
                })
            }
            Rule::ident => {
                return Ok(Expr {
                    kind: ExprKind::Name(p.as_str().to_string()),
                    span,
                })
            }
            _ => {}
        }
        let mut inner = p.into_inner();
        let mk = |kind| Ok(Expr { kind, span });
        match rule {
            Rule::expr | Rule::paren => self.expr(inner.next().unwrap()),
            Rule::cond_expr => {
                let cond = Box::new(self.expr(inner.next().unwrap())?);
                let then = Box::new(self.expr(inner.next().unwrap())?);
                let otherwise = Box::new(self.expr(inner.next().unwrap())?);
                mk(ExprKind::If {
                    cond,
                    then,
                    otherwise,
                })
            }
            Rule::or_expr
            | Rule::and_expr
            | Rule::cmp_expr
            | Rule::range_expr
            | Rule::add_expr
            | Rule::mul_expr
            | Rule::pow_expr => {
                let mut lhs = self.expr(inner.next().unwrap())?;
                let mut terms = 0;
                while let Some(op) = inner.next() {
                    terms += 1;
                    if self.depth.get() + terms > MAX_DEPTH {
                        return Err(Diagnostic::new("expression too long", span)
                            .with_note("split it into `let` bindings"));
                    }
                    let rhs = self.expr(inner.next().unwrap())?;
                    let op = bin_op(op.as_str());
                    let span = lhs.span.to(rhs.span);
                    lhs = Expr {
                        kind: ExprKind::Binary {
                            op,
                            lhs: Box::new(lhs),
                            rhs: Box::new(rhs),
                        },
                        span,
                    };
                }
                Ok(lhs)
            }
            Rule::not_expr | Rule::unary_expr => {
                let parts: Vec<Pair<Rule>> = inner.collect();
                let (ops, last) = parts.split_at(parts.len() - 1);
                let mut e = self.expr(last[0].clone())?;
                for op_pair in ops.iter().rev() {
                    let op = if op_pair.as_rule() == Rule::not_op {
                        UnOp::Not
                    } else {
                        UnOp::Neg
                    };
                    let span = self.span(op_pair).to(e.span);
                    e = Expr {
                        kind: ExprKind::Unary {
                            op,
                            operand: Box::new(e),
                        },
                        span,
                    };
                }
                Ok(e)
            }
            Rule::postfix_expr => {
                let mut e = self.expr(inner.next().unwrap())?;
                for post in inner {
                    let span = e.span.to(self.span(&post));
                    let kind = match post.as_rule() {
                        Rule::call_args => {
                            let mut args = vec![];
                            for a in post.into_inner() {
                                let mut ai = a.into_inner().peekable();
                                let name = if ai.peek().map(|p| p.as_rule()) == Some(Rule::ident) {
                                    Some(self.ident(ai.next().unwrap()))
                                } else {
                                    None
                                };
                                args.push(Arg {
                                    name,
                                    value: self.expr(ai.next().unwrap())?,
                                });
                            }
                            ExprKind::Call {
                                callee: Box::new(e),
                                args,
                            }
                        }
                        Rule::field_access => ExprKind::Field {
                            base: Box::new(e),
                            name: self.ident(post.into_inner().next().unwrap()),
                        },
                        Rule::index_access => ExprKind::Index {
                            base: Box::new(e),
                            index: Box::new(self.expr(post.into_inner().next().unwrap())?),
                        },
                        r => unreachable!("grammar: postfix {r:?}"),
                    };
                    e = Expr { kind, span };
                }
                Ok(e)
            }
            Rule::int_lit => mk(ExprKind::Int(self.int(&inner.next().unwrap())?)),
            Rule::float_lit => {
                let text = inner.next().unwrap().as_str();
                let v = text
                    .parse::<f64>()
                    .map_err(|_| Diagnostic::new("bad number", span))?;
                mk(ExprKind::Float(v))
            }
            Rule::true_lit => mk(ExprKind::Bool(true)),
            Rule::false_lit => mk(ExprKind::Bool(false)),
            Rule::none_lit => mk(ExprKind::None),
            Rule::list => {
                let parts: Vec<Pair<Rule>> = inner.collect();
                if let [elem, tail] = &parts[..] {
                    if tail.as_rule() == Rule::comp_tail {
                        let mut ti = tail.clone().into_inner();
                        let elem = Box::new(self.expr(elem.clone())?);
                        let var = self.ident(ti.next().unwrap());
                        let iter = Box::new(self.expr(ti.next().unwrap())?);
                        return mk(ExprKind::Comprehension { elem, var, iter });
                    }
                }
                let items = parts
                    .into_iter()
                    .map(|e| self.expr(e))
                    .collect::<PResult<Vec<_>>>()?;
                mk(ExprKind::List(items))
            }
            Rule::map_lit => {
                let mut entries = vec![];
                for e in inner {
                    let mut ei = e.into_inner();
                    let k = self.ident(ei.next().unwrap());
                    entries.push((k, self.expr(ei.next().unwrap())?));
                }
                mk(ExprKind::Map(entries))
            }
            r => unreachable!("grammar: expression {r:?}"),
        }
    }
}

impl Cx {
    fn adapt(&self, p: Pair<Rule>) -> PResult<AdaptDef> {
        let mut inner = p.into_inner().peekable();
        let name = self.ident(inner.next().unwrap());
        let mut sources = vec![];
        while inner.peek().map(|p| p.as_rule()) == Some(Rule::ident) {
            sources.push(self.ident(inner.next().unwrap()));
        }
        // The last name of the header is the target model.
        let target = sources.pop().expect("grammar: adapt target");
        let mut rules = vec![];
        let mut phases = vec![];
        for m in inner {
            match m.as_rule() {
                Rule::adapt_rule => rules.push(self.adapt_rule(m)?),
                Rule::phase_def => phases.push(self.phase(m)?),
                r => unreachable!("grammar: adapt member {r:?}"),
            }
        }
        Ok(AdaptDef {
            name,
            sources,
            target,
            rules,
            phases,
        })
    }

    fn adapt_rule(&self, p: Pair<Rule>) -> PResult<AdaptRule> {
        let span = self.span(&p);
        let mut inner = p.into_inner();
        let target = self.pattern(inner.next().unwrap());
        let v = inner.next().unwrap();
        let value = match v.as_rule() {
            Rule::source_ref => {
                let mut vi = v.into_inner();
                let first = vi.next().unwrap();
                if first.as_rule() == Rule::ident {
                    RuleValue::Copy {
                        role: Some(self.ident(first)),
                        source: self.pattern(vi.next().unwrap()),
                    }
                } else {
                    RuleValue::Copy {
                        role: None,
                        source: self.pattern(first),
                    }
                }
            }
            Rule::init_call => {
                let span = self.span(&v);
                let mut vi = v.into_inner();
                let name = self.ident(vi.next().unwrap());
                let mut args = vec![];
                for a in vi {
                    let mut ai = a.into_inner();
                    let key = self.ident(ai.next().unwrap());
                    let num = ai.next().unwrap();
                    let value = num.as_str().parse::<f64>().map_err(|_| {
                        Diagnostic::new("bad number", self.span(&num)).with_label("here")
                    })?;
                    args.push((
                        key,
                        Spanned {
                            node: value,
                            span: self.span(&num),
                        },
                    ));
                }
                RuleValue::Init { name, args, span }
            }
            r => unreachable!("grammar: adapt rule {r:?}"),
        };
        Ok(AdaptRule {
            target,
            value,
            span,
        })
    }

    fn phase(&self, p: Pair<Rule>) -> PResult<PhaseDef> {
        let span = self.span(&p);
        let mut inner = p.into_inner();
        inner.next().expect("grammar: `phase`");
        let name = self.ident(inner.next().unwrap());
        let mut steps = None;
        let mut train = None;
        for part in inner {
            match part.as_rule() {
                Rule::phase_steps => {
                    let n = part.into_inner().next().unwrap();
                    let span = self.span(&n);
                    let node = n.as_str().parse::<u64>().map_err(|_| {
                        Diagnostic::new("step count out of range", span)
                            .with_note("steps must fit in 64 bits")
                    })?;
                    steps = Some(Spanned { node, span });
                }
                Rule::phase_train => {
                    train = Some(part.into_inner().map(|x| self.pattern(x)).collect());
                }
                r => unreachable!("grammar: phase {r:?}"),
            }
        }
        Ok(PhaseDef {
            name,
            steps,
            train,
            span,
        })
    }

    /// The grammar has checked the pattern's form; this splits it into segments.
    fn pattern(&self, p: Pair<Rule>) -> Pattern {
        let segments = p
            .as_str()
            .split('.')
            .map(|s| {
                if s == "*" {
                    PatternSeg::Rest
                } else if let Some(v) = s.strip_prefix('{').and_then(|v| v.strip_suffix('}')) {
                    PatternSeg::Var(v.to_string())
                } else {
                    PatternSeg::Lit(s.to_string())
                }
            })
            .collect();
        Pattern {
            segments,
            span: self.span(&p),
        }
    }
}

fn bin_op(s: &str) -> BinOp {
    match s {
        "+" => BinOp::Add,
        "-" => BinOp::Sub,
        "*" => BinOp::Mul,
        "/" => BinOp::Div,
        "%" => BinOp::Rem,
        "@" => BinOp::MatMul,
        "**" => BinOp::Pow,
        "==" => BinOp::Eq,
        "!=" => BinOp::Ne,
        "<" => BinOp::Lt,
        "<=" => BinOp::Le,
        ">" => BinOp::Gt,
        ">=" => BinOp::Ge,
        "and" => BinOp::And,
        "or" => BinOp::Or,
        ".." => BinOp::Range,
        other => unreachable!("grammar: operator {other}"),
    }
}
