//! Fusion decisions that the numeric tests cannot see: what the kernel program stores.

use encdecc_compiler::fuse::{fuse, print_program, Step};
use encdecc_compiler::ir::parse::parse_graph;
use encdecc_compiler::ir::Op;

/// An iota read by two kernels of its own shape is recomputed in each (as the loop
/// index), never stored: cross-entropy's loss and gradient both compare labels with the
/// class index over `[B, T, V]`.
#[test]
fn shared_iota_is_recomputed_per_kernel() {
    let g = parse_graph(
        "graph g {
  %0 = input \"x\" : f32[2, 3, 5]
  %1 = input \"y\" : i64[2, 3, 1]
  %2 = iota[axis=2] : i64[2, 3, 5]
  %3 = eq %2, %1 : bool[2, 3, 5]
  %4 = const 0.0 : f32[]
  %5 = where %3, %0, %4 : f32[2, 3, 5]
  %6 = reduce_sum[axis=2] %5 : f32[2, 3, 1]
  %7 = eq %1, %2 : bool[2, 3, 5]
  %8 = const 1.0 : f32[]
  %9 = where %7, %8, %4 : f32[2, 3, 5]
  %10 = sub %0, %9 : f32[2, 3, 5]
  out \"picked\" = %6
  out \"d\" = %10
}",
    )
    .unwrap();
    let p = fuse(g);
    let text = print_program(&p);
    let loops = p
        .steps
        .iter()
        .filter(|s| matches!(s, Step::Loop { .. }))
        .count();
    assert_eq!(loops, 2, "{text}");
    for s in &p.steps {
        if let Step::Node(n) = s {
            assert!(!matches!(p.graph.node(*n).op, Op::Iota { .. }), "{text}");
        }
        if let Step::Loop { inputs, .. } = s {
            for i in inputs {
                assert!(!matches!(p.graph.node(*i).op, Op::Iota { .. }), "{text}");
            }
        }
    }
    assert_eq!(text.matches("index 2").count(), 2, "{text}");
}

/// An iota that is not the whole space of a user is still stored: inside a larger space
/// its size-1 axes would read the loop index.
#[test]
fn broadcast_iota_is_not_inlined() {
    let g = parse_graph(
        "graph g {
  %0 = input \"x\" : f32[2, 4]
  %1 = iota[axis=1] : i64[1, 4]
  %2 = cast %1 : f32[1, 4]
  %3 = add %0, %2 : f32[2, 4]
  %4 = mul %0, %2 : f32[2, 4]
  out \"a\" = %3
  out \"b\" = %4
}",
    )
    .unwrap();
    let p = fuse(g);
    let text = print_program(&p);
    // The table is computed once over its own space and loaded by both users.
    assert!(
        text.contains("loop k0 over [1, 4]: () -> (%2)\n    stage 0: v0 = index 1"),
        "{text}"
    );
    assert_eq!(text.matches("index").count(), 1, "{text}");
}
