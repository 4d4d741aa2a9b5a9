//! Reads the printed form back into a graph (the inverse of `print.rs`). Types are
//! re-inferred while parsing and must equal the printed ones, so a parsed graph is
//! verified as it is read.

use super::graph::{Graph, NodeId};
use super::op::*;
use super::types::{DType, Dim, Shape, TensorType};
use std::collections::HashMap;

/// Parses IR text; errors carry the 1-based line.
pub fn parse_graph(text: &str) -> Result<Graph, String> {
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim().starts_with('#'));
    let (_, head) = lines.next().ok_or("empty IR text")?;
    let name = head
        .trim()
        .strip_prefix("graph ")
        .and_then(|r| r.strip_suffix('{'))
        .ok_or("line 1: expected `graph NAME {`")?
        .trim();
    let mut g = Graph::new(name);
    let mut ssa: HashMap<String, NodeId> = HashMap::new();
    for (i, line) in lines {
        let line = line.trim();
        let at = |e: String| format!("line {}: {e}", i + 1);
        if line == "}" {
            return Ok(g);
        }
        if let Some(rest) = line.strip_prefix("out ") {
            let (name, val) = rest
                .split_once(" = ")
                .ok_or_else(|| at("expected `out \"name\" = %N`".into()))?;
            let name = unquote(name.trim()).map_err(at)?;
            let id = *ssa
                .get(val.trim())
                .ok_or_else(|| at(format!("unknown value {val}")))?;
            g.outputs.push((name, id));
            continue;
        }
        let (lhs, rhs) = line
            .split_once(" = ")
            .ok_or_else(|| at("expected `%N = op ...`".into()))?;
        let (node_name, node) = parse_node(&ssa, rhs).map_err(at)?;
        let nid = g.add(node.0, &node.1, Some(node.2)).map_err(at)?;
        if let Some(n) = node_name {
            g.set_name(nid, &n);
        }
        ssa.insert(lhs.trim().to_string(), nid);
    }
    Err("missing closing `}`".into())
}

type NodeParts = (Op, Vec<NodeId>, TensorType);

fn parse_node(
    ssa: &HashMap<String, NodeId>,
    rhs: &str,
) -> Result<(Option<String>, NodeParts), String> {
    // Split off the trailing `@name`, then the `: type`.
    let (body, name) = match rhs.rfind(" @") {
        Some(p) => (&rhs[..p], Some(rhs[p + 2..].to_string())),
        None => (rhs, None),
    };
    let (body, ty) = body.rsplit_once(" : ").ok_or("missing ` : type`")?;
    let ty = parse_type(ty.trim())?;
    let body = body.trim();
    // `mnemonic[attrs] operands` or `mnemonic operands`.
    let stop = body.find(['[', ' ']).unwrap_or(body.len());
    let mnemonic = &body[..stop];
    let (attrs, rest) = if body[stop..].starts_with('[') {
        let close = body.find(']').ok_or("unclosed `[`")?;
        (&body[stop + 1..close], body[close + 1..].trim())
    } else {
        ("", body[stop..].trim())
    };
    let kv = parse_attrs(attrs);
    let get = |k: &str| {
        kv.iter()
            .find(|(a, _)| a == k)
            .map(|(_, v)| v.as_str())
            .ok_or(format!("missing attribute `{k}`"))
    };
    let num =
        |k: &str| -> Result<u64, String> { get(k)?.parse().map_err(|_| format!("bad `{k}`")) };
    let operands = |s: &str| -> Result<Vec<NodeId>, String> {
        s.split(',')
            .map(|t| t.trim())
            .filter(|t| !t.is_empty())
            .map(|t| ssa.get(t).copied().ok_or(format!("unknown value {t}")))
            .collect()
    };
    let op = match mnemonic {
        "param" => {
            let (path, r) = take_string(rest)?;
            let r = r.trim().strip_prefix("ckpt").ok_or("expected `ckpt`")?;
            let (ckpt, _) = take_string(r.trim())?;
            return Ok((name, (Op::Param { path, ckpt }, vec![], ty)));
        }
        "input" => {
            let (n, _) = take_string(rest)?;
            return Ok((name, (Op::Input { name: n }, vec![], ty)));
        }
        "const" => {
            let v = parse_f64(rest)?;
            return Ok((name, (Op::Const { value: F64(v) }, vec![], ty)));
        }
        "iota" => Op::Iota {
            axis: num("axis")? as usize,
        },
        "concat" => Op::Concat {
            axis: num("axis")? as usize,
        },
        "reduce_sum" => Op::Reduce {
            op: ReduceOp::Sum,
            axis: num("axis")? as usize,
        },
        "reduce_max" => Op::Reduce {
            op: ReduceOp::Max,
            axis: num("axis")? as usize,
        },
        "permute" => Op::Permute {
            perm: attrs
                .split(',')
                .map(|p| {
                    p.trim()
                        .parse::<usize>()
                        .map_err(|_| "bad permutation".to_string())
                })
                .collect::<Result<_, _>>()?,
        },
        "slice" => Op::Slice {
            axis: num("axis")? as usize,
            start: num("start")?,
            end: num("end")?,
        },
        "shift" => Op::Shift {
            axis: num("axis")? as usize,
            offset: get("offset")?.parse().map_err(|_| "bad `offset`")?,
            fill: F64(parse_f64(get("fill")?)?),
        },
        "attention" => Op::Attention(attention_attrs(&get)?),
        "attention_grad" => Op::AttentionGrad {
            attrs: attention_attrs(&get)?,
            wrt: match get("wrt")? {
                "q" => AttnOperand::Q,
                "k" => AttnOperand::K,
                "v" => AttnOperand::V,
                w => return Err(format!("unknown attention operand `{w}`")),
            },
        },
        "cross_entropy" => Op::CrossEntropy {
            ignore_index: get("ignore")?.parse().map_err(|_| "bad `ignore`")?,
        },
        "cross_entropy_grad" => Op::CrossEntropyGrad {
            ignore_index: get("ignore")?.parse().map_err(|_| "bad `ignore`")?,
        },
        "where" => Op::Where,
        "cast" => Op::Cast,
        "reshape" => Op::Reshape,
        "expand" => Op::Expand,
        "gather" => Op::Gather,
        "scatter_add" => Op::ScatterAdd,
        "matmul" => Op::MatMul,
        "dequant" => Op::Dequant,
        m => Op::elementwise_from_mnemonic(m).ok_or(format!("unknown op `{m}`"))?,
    };
    Ok((name, (op, operands(rest)?, ty)))
}

fn parse_attrs(s: &str) -> Vec<(String, String)> {
    s.split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn parse_f64(s: &str) -> Result<f64, String> {
    match s.trim() {
        "inf" => Ok(f64::INFINITY),
        "-inf" => Ok(f64::NEG_INFINITY),
        t => t.parse().map_err(|_| format!("bad number `{t}`")),
    }
}

fn take_string(s: &str) -> Result<(String, &str), String> {
    let s = s.trim_start();
    let body = s.strip_prefix('"').ok_or("expected a string")?;
    let mut out = String::new();
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((out, &body[i + 1..])),
            '\\' => {
                if let Some((_, e)) = chars.next() {
                    out.push(match e {
                        'n' => '\n',
                        't' => '\t',
                        o => o,
                    });
                }
            }
            c => out.push(c),
        }
    }
    Err("unterminated string".into())
}

fn unquote(s: &str) -> Result<String, String> {
    take_string(s).map(|(v, _)| v)
}

pub fn parse_type(s: &str) -> Result<TensorType, String> {
    let open = s.find('[').ok_or(format!("bad type `{s}`"))?;
    let dtype = DType::from_name(&s[..open]).ok_or(format!("unknown dtype `{}`", &s[..open]))?;
    let inner = s[open + 1..]
        .strip_suffix(']')
        .ok_or(format!("bad type `{s}`"))?;
    let dims = inner
        .split(',')
        .map(|d| d.trim())
        .filter(|d| !d.is_empty())
        .map(|d| match d.parse::<u64>() {
            Ok(n) => Dim::Known(n),
            Err(_) => Dim::Sym(d.to_string()),
        })
        .collect();
    Ok(TensorType {
        dtype,
        shape: Shape(dims),
    })
}

fn attention_attrs<'a>(
    get: &impl Fn(&str) -> Result<&'a str, String>,
) -> Result<AttentionAttrs, String> {
    Ok(AttentionAttrs {
        mode: match get("mode")? {
            "bidirectional" => AttnMode::Bidirectional,
            "causal" => AttnMode::Causal,
            m => return Err(format!("unknown attention mode `{m}`")),
        },
        window: match get("window")? {
            "none" => None,
            w => Some(w.parse().map_err(|_| "bad `window`")?),
        },
        window_rule: match get("rule")? {
            "inclusive" => WindowRule::Inclusive,
            "exclusive" => WindowRule::Exclusive,
            r => return Err(format!("unknown window rule `{r}`")),
        },
        softcap: match get("softcap")? {
            "none" => None,
            c => Some(F64(parse_f64(c)?)),
        },
        scale: F64(parse_f64(get("scale")?)?),
    })
}
