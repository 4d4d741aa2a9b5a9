//! Reduced precision as a lowering of the graph: after it, the IR says which values are
//! stored in bf16 and which matmuls read bf16 operands, and every backend (the reference
//! interpreter included) computes exactly what it says.
//!
//! `Precision::Bf16` (`--dtype bf16` on the CPU):
//! - a weight whose every use is a matmul operand (directly or through a transpose) or a
//!   gather's table is *stored* in bf16: its param node, the transposes of it and the
//!   gathers from it are retyped, and a `cast` to f32 follows each gather, so the loader
//!   keeps one bf16 copy of it and nothing else changes;
//! - every other f32 matmul operand (activations) gets a `cast` to bf16 in front of it:
//!   matmuls multiply bf16 by bf16 and accumulate in f32 (the `matmul` typing rule);
//! - everything else — norms, softmax and its statistics, softcaps, residual adds,
//!   attention, the loss — stays f32, as in PyTorch's autocast and the CUDA backend.
//!
//! Rounding to bf16 is to nearest even, as `tensor.to(torch.bfloat16)`.
//!
//! `Precision::Int8` (`--dtype int8`): weight-only int8, as CTranslate2's `int8` compute
//! type. The same weights are stored as i8 beside a new f32 param `<path>_scale` of one
//! scale per row (symmetric: `max |row| / 127`), and read through `dequant(q, scale)`, the
//! f32 weight `q · scale`; activations and everything else stay f32. Backends read the
//! dequantised weight in place (the CPU's decode GEMV streams the int8 bytes).

use crate::ir::{DType, Graph, NodeId, Op, TensorType};
use crate::passes::{cse, dce};
use petgraph::visit::EdgeRef;
use petgraph::Direction;

/// How a graph stores its weights and feeds its matmuls.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    #[default]
    F32,
    /// bf16 weights and matmul operands, f32 accumulation; f32 everywhere else.
    Bf16,
    /// int8 matmul weights with per-row f32 scales; f32 everywhere else.
    Int8,
}

impl Precision {
    pub fn parse(s: &str) -> Result<Precision, String> {
        match s {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            "int8" => Ok(Precision::Int8),
            other => Err(format!("unknown dtype `{other}` (dtypes: f32, bf16, int8)")),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::Int8 => "int8",
        }
    }
}

/// What `lower` did: the params now stored in reduced precision (their paths, in graph
/// order), which the loader must provide in that dtype (for i8, with their scales at
/// `scale_path`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lowered {
    pub stored: Vec<(String, DType)>,
}

/// Lowers `g` to `p` (f32: unchanged).
pub fn lower(g: &mut Graph, p: Precision) -> Lowered {
    match p {
        Precision::F32 => Lowered::default(),
        Precision::Bf16 => to_bf16(g),
        Precision::Int8 => to_int8(g),
    }
}

/// The DSL path (and checkpoint name) of the per-row scales of the int8 weight `path`.
pub fn scale_path(path: &str) -> String {
    format!("{path}_scale")
}

fn to_int8(g: &mut Graph) -> Lowered {
    let mut out = Lowered::default();
    for p in g.params() {
        let ty = g.node(p).ty.clone();
        if ty.dtype != DType::F32 || ty.shape.rank() < 2 || !matmul_weight(g, p) {
            continue;
        }
        let Op::Param { path, ckpt } = g.node(p).op.clone() else {
            continue;
        };
        let mut row = ty.shape.clone();
        let r = row.rank();
        row.0[r - 1] = crate::ir::Dim::Known(1);
        let scale = g
            .add(
                Op::Param {
                    path: scale_path(&path),
                    ckpt: scale_path(&ckpt),
                },
                &[],
                Some(TensorType {
                    dtype: DType::F32,
                    shape: row,
                }),
            )
            .expect("a param of its declared type");
        let users = g.users(p);
        g.dag[p].ty.dtype = DType::I8;
        let d = g
            .add(Op::Dequant, &[p, scale], None)
            .expect("i8 values and their row scales");
        for (u, pos) in users {
            set_operand(g, u, pos, p, d);
        }
        out.stored.push((path, DType::I8));
    }
    out
}

fn to_bf16(g: &mut Graph) -> Lowered {
    let mut out = Lowered::default();
    for p in g.params() {
        if g.node(p).ty.dtype != DType::F32 || !matmul_weight(g, p) {
            continue;
        }
        if let Op::Param { path, .. } = &g.node(p).op {
            out.stored.push((path.clone(), DType::Bf16));
        }
        g.dag[p].ty.dtype = DType::Bf16;
        for (u, _) in g.users(p) {
            match g.node(u).op {
                Op::Permute { .. } => g.dag[u].ty.dtype = DType::Bf16,
                Op::Gather => {
                    g.dag[u].ty.dtype = DType::Bf16;
                    insert_cast_after(g, u, DType::F32);
                }
                _ => {}
            }
        }
    }
    let matmuls: Vec<NodeId> = g
        .topo_order()
        .into_iter()
        .filter(|&n| matches!(g.node(n).op, Op::MatMul))
        .collect();
    for m in matmuls {
        for (pos, o) in g.operands(m).into_iter().enumerate() {
            if g.node(o).ty.dtype == DType::F32 {
                let c = cast(g, o, DType::Bf16);
                set_operand(g, m, pos as u32, o, c);
            }
        }
    }
    // The q, k and v projections read one activation: their casts become one.
    cse::run(g);
    dce::run(g);
    out
}

/// Every use of `p` is a matmul operand (directly or through a transpose that only
/// matmuls read) or a gather's table, and it has at least one.
fn matmul_weight(g: &Graph, p: NodeId) -> bool {
    let users = g.users(p);
    !users.is_empty()
        && !g.outputs.iter().any(|(_, o)| *o == p)
        && users.iter().all(|&(u, pos)| match g.node(u).op {
            Op::MatMul => true,
            // (A gather that is an output stays one: the cast after it takes its place.)
            Op::Gather => pos == 0,
            Op::Permute { .. } => {
                let uu = g.users(u);
                !uu.is_empty()
                    && !g.outputs.iter().any(|(_, o)| *o == u)
                    && uu.iter().all(|(x, _)| matches!(g.node(*x).op, Op::MatMul))
            }
            _ => false,
        })
}

fn cast(g: &mut Graph, x: NodeId, to: DType) -> NodeId {
    let ty = TensorType {
        dtype: to,
        shape: g.node(x).ty.shape.clone(),
    };
    g.add(Op::Cast, &[x], Some(ty))
        .expect("a cast keeps the shape")
}

/// A cast of `x` that takes over every use of `x` (outputs and its name too).
fn insert_cast_after(g: &mut Graph, x: NodeId, to: DType) {
    let users = g.users(x);
    let c = cast(g, x, to);
    for (u, pos) in users {
        set_operand(g, u, pos, x, c);
    }
    for out in &mut g.outputs {
        if out.1 == x {
            out.1 = c;
        }
    }
    g.dag[c].name = g.dag[x].name.take();
}

/// Points operand `pos` of `user` (now `old`) at `new`.
fn set_operand(g: &mut Graph, user: NodeId, pos: u32, old: NodeId, new: NodeId) {
    let e = g
        .dag
        .edges_directed(user, Direction::Incoming)
        .find(|e| e.source() == old && *e.weight() == pos)
        .map(|e| e.id())
        .expect("the operand's edge");
    g.dag.remove_edge(e);
    g.dag.add_edge(new, user, pos);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::parse::parse_graph;
    use crate::ir::print::print_graph;
    use crate::ir::verify::verify;

    /// Lowers `src` to bf16 and compares the printed result with `want` (from the line
    /// after `graph g {`), and the stored params with `stored`.
    fn check(src: &str, want: &str, stored: &[&str]) {
        let mut g = parse_graph(src).expect("parses");
        let l = lower(&mut g, Precision::Bf16);
        verify(&g).expect("verifies");
        let text = print_graph(&g);
        let body = &text[text.find('\n').unwrap() + 1..];
        assert_eq!(body.trim(), want.trim(), "got:\n{text}");
        let got: Vec<&str> = l.stored.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(got, stored);
        assert!(l.stored.iter().all(|(_, d)| *d == DType::Bf16));
    }

    #[test]
    fn weights_only_read_by_matmuls_are_stored_in_bf16() {
        // `w` feeds a matmul through its transpose; `n` is also added to: it stays f32,
        // and its matmul reads a cast of it. Both projections of `x` share one cast.
        check(
            r#"graph g {
  %0 = input "x" : f32[B, 4]
  %1 = param "w" ckpt "w" : f32[3, 4]
  %2 = param "n" ckpt "n" : f32[4, 3]
  %3 = permute[1, 0] %1 : f32[4, 3]
  %4 = matmul %0, %3 : f32[B, 3]
  %5 = matmul %0, %2 : f32[B, 3]
  %6 = add %2, %2 : f32[4, 3]
  out "a" = %4
  out "b" = %5
  out "c" = %6
}"#,
            r#"
  %0 = input "x" : f32[B, 4]
  %1 = param "w" ckpt "w" : bf16[3, 4]
  %2 = param "n" ckpt "n" : f32[4, 3]
  %3 = permute[1, 0] %1 : bf16[4, 3]
  %4 = add %2, %2 : f32[4, 3]
  %5 = cast %0 : bf16[B, 4]
  %6 = matmul %5, %3 : f32[B, 3]
  %7 = cast %2 : bf16[4, 3]
  %8 = matmul %5, %7 : f32[B, 3]
  out "a" = %6
  out "b" = %8
  out "c" = %4
}"#,
            &["w"],
        );
    }

    #[test]
    fn a_tied_embedding_is_gathered_in_bf16_and_cast_back() {
        check(
            r#"graph g {
  %0 = input "ids" : i64[B]
  %1 = param "emb" ckpt "emb" : f32[10, 4]
  %2 = gather %1, %0 : f32[B, 4] @h
  %3 = permute[1, 0] %1 : f32[4, 10]
  %4 = matmul %2, %3 : f32[B, 10]
  out "logits" = %4
  out "h" = %2
}"#,
            r#"
  %0 = input "ids" : i64[B]
  %1 = param "emb" ckpt "emb" : bf16[10, 4]
  %2 = gather %1, %0 : bf16[B, 4]
  %3 = permute[1, 0] %1 : bf16[4, 10]
  %4 = cast %2 : f32[B, 4] @h
  %5 = cast %4 : bf16[B, 4]
  %6 = matmul %5, %3 : f32[B, 10]
  out "logits" = %6
  out "h" = %4
}"#,
            &["emb"],
        );
    }

    #[test]
    fn a_weight_that_is_an_output_or_unused_stays_f32() {
        check(
            r#"graph g {
  %0 = input "x" : f32[B, 4]
  %1 = param "w" ckpt "w" : f32[4, 4]
  %2 = param "unused" ckpt "unused" : f32[2]
  %3 = matmul %0, %1 : f32[B, 4]
  out "y" = %3
  out "w" = %1
}"#,
            r#"
  %0 = input "x" : f32[B, 4]
  %1 = param "w" ckpt "w" : f32[4, 4]
  %2 = param "unused" ckpt "unused" : f32[2]
  %3 = cast %0 : bf16[B, 4]
  %4 = cast %1 : bf16[4, 4]
  %5 = matmul %3, %4 : f32[B, 4]
  out "y" = %5
  out "w" = %1
}"#,
            &[],
        );
    }

    #[test]
    fn f32_leaves_the_graph_as_it_is() {
        let src = r#"graph g {
  %0 = input "x" : f32[B, 4]
  %1 = param "w" ckpt "w" : f32[4, 4]
  %2 = matmul %0, %1 : f32[B, 4]
  out "y" = %2
}"#;
        let mut g = parse_graph(src).unwrap();
        let before = print_graph(&g);
        assert_eq!(lower(&mut g, Precision::F32), Lowered::default());
        assert_eq!(print_graph(&g), before);
    }

    #[test]
    fn typing_keeps_arithmetic_off_bf16() {
        let bad = [
            ("add", "%2 = add %1, %1 : bf16[4]"),
            ("reduce", "%2 = reduce_sum[axis=0] %1 : bf16[1]"),
            ("mixed matmul", "%2 = matmul %1, %0 : f32[4, 4]"),
        ];
        for (what, line) in bad {
            let src = format!(
                "graph g {{\n  %0 = input \"x\" : f32[4, 4]\n  %1 = param \"w\" ckpt \"w\" : bf16[4]\n  {line}\n  out \"y\" = %2\n}}"
            );
            match parse_graph(&src) {
                Ok(_) => panic!("{what} on bf16 was accepted"),
                Err(e) => assert!(e.contains("bf16"), "{what}: {e}"),
            }
        }
    }
}
