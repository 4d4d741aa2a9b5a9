//! Token ids checked on the host before a run. A gather on the GPU flags an id outside its
//! table and the executor reports it once the GPU is done; a train step must report it
//! before its first in-place update, which took a synchronisation in the middle of every
//! step (the GPU then idles while the host launches the rest). When every gather and
//! scatter-add reads its ids straight from an input (token ids, as in every model here),
//! they are checked on the host instead, before anything is launched, with the
//! interpreter's message.

use crate::interp::{resolve, Bindings};
use crate::tensor::Tensor;
use encdecc_compiler::ir::{DType, Graph, NodeId, Op};
use std::collections::HashMap;

/// One index input and the table it indexes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexInput {
    pub input: String,
    /// The value whose first axis bounds the ids (the gathered table, or a scatter-add's
    /// result).
    pub table: NodeId,
}

/// Every gather's and scatter-add's index input (through reshapes), or `None` when some
/// index is computed on the device (then only the GPU can check it).
pub fn index_inputs(g: &Graph) -> Option<Vec<IndexInput>> {
    let mut out: Vec<IndexInput> = vec![];
    for n in g.topo_order() {
        let ops = g.operands(n);
        let (idx, table) = match g.node(n).op {
            Op::Gather => (ops[1], ops[0]),
            Op::ScatterAdd => (ops[0], n),
            _ => continue,
        };
        let mut src = idx;
        while matches!(g.node(src).op, Op::Reshape) {
            src = g.operands(src)[0];
        }
        let Op::Input { name } = &g.node(src).op else {
            return None;
        };
        let check = IndexInput {
            input: name.clone(),
            table,
        };
        if !out.contains(&check) {
            out.push(check);
        }
    }
    Some(out)
}

/// Checks every id of `checks` in `inputs` (an input left out is resident on the GPU and
/// was checked when it came).
pub fn check_ids(
    g: &Graph,
    checks: &[IndexInput],
    inputs: &HashMap<String, Tensor>,
    b: &Bindings,
) -> Result<(), String> {
    for c in checks {
        let Some(t) = inputs.get(&c.input) else {
            continue;
        };
        let rows = resolve(&g.node(c.table).ty.shape, b)?
            .first()
            .copied()
            .unwrap_or(0) as i64;
        let ids = crate::interp::convert(t, DType::I64);
        let ids = ids.as_i64().unwrap_or_default();
        if let Some(&bad) = ids.iter().find(|&&i| i < 0 || i >= rows) {
            let table = match &g.node(c.table).op {
                Op::Param { ckpt, .. } => ckpt.clone(),
                _ => g
                    .node(c.table)
                    .name
                    .clone()
                    .unwrap_or_else(|| "a computed table".into()),
            };
            return Err(format!(
                "id {bad} in `input {}` is out of range: `{table}` has {rows} rows (valid ids are 0..={})",
                c.input,
                (rows - 1).max(0)
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use encdecc_compiler::ir::{Shape, TensorType};

    fn ty(dtype: DType, s: &[u64]) -> TensorType {
        TensorType {
            dtype,
            shape: Shape::known(s),
        }
    }

    /// A table of 10 rows gathered by input `ids` [2, 3] (through a reshape) and, in
    /// `computed`, by ids that are themselves computed.
    fn graph(computed: bool) -> Graph {
        let mut g = Graph::new("g");
        let table = g
            .add(
                Op::Param {
                    path: "emb".into(),
                    ckpt: "model.emb.weight".into(),
                },
                &[],
                Some(ty(DType::F32, &[10, 4])),
            )
            .unwrap();
        let ids = g
            .add(
                Op::Input { name: "ids".into() },
                &[],
                Some(ty(DType::I64, &[2, 3])),
            )
            .unwrap();
        let ids = g
            .add(Op::Reshape, &[ids], Some(ty(DType::I64, &[6])))
            .unwrap();
        let ids = if computed {
            g.add(Op::Unary(encdecc_compiler::ir::UnaryOp::Neg), &[ids], None)
                .unwrap()
        } else {
            ids
        };
        let out = g.add(Op::Gather, &[table, ids], None).unwrap();
        g.outputs.push(("out".into(), out));
        g
    }

    #[test]
    fn ids_from_inputs_are_checked_on_the_host() {
        let g = graph(false);
        let checks = index_inputs(&g).unwrap();
        assert_eq!(checks.len(), 1);
        assert_eq!(checks[0].input, "ids");
        let run = |v: Vec<i64>| {
            let inputs = HashMap::from([("ids".to_string(), Tensor::i64(vec![2, 3], v))]);
            check_ids(&g, &checks, &inputs, &Bindings::new())
        };
        assert_eq!(run(vec![0, 1, 2, 9, 9, 0]), Ok(()));
        assert_eq!(
            run(vec![0, 1, 10, 9, 9, 0]).unwrap_err(),
            "id 10 in `input ids` is out of range: `model.emb.weight` has 10 rows (valid ids are 0..=9)"
        );
        assert!(run(vec![0, -1, 2, 9, 9, 0])
            .unwrap_err()
            .starts_with("id -1 "));
        // A resident input is not in the map: nothing to check.
        assert_eq!(
            check_ids(&g, &checks, &HashMap::new(), &Bindings::new()),
            Ok(())
        );
        // Computed ids: only the GPU can check them.
        assert_eq!(index_inputs(&graph(true)), None);
    }
}
