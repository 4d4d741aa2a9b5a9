//! The graph IR: a petgraph DAG of typed nodes. Edges run operand → user and carry the
//! operand's position. Every node's type is inferred when it is added, so a `Graph`
//! is well-typed by construction; `verify` re-checks that after passes.

use super::infer::infer_type;
use super::op::Op;
use super::types::TensorType;
use petgraph::stable_graph::{NodeIndex, StableDiGraph};
use petgraph::visit::{EdgeRef, NodeIndexable};
use petgraph::Direction;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub op: Op,
    pub ty: TensorType,
    /// A DSL path naming the value (`decoder.layers.3.cross_attn.q`), for printing and errors.
    pub name: Option<String>,
}

#[derive(Clone, Debug, Default)]
pub struct Graph {
    pub name: String,
    pub dag: StableDiGraph<Node, u32>,
    /// Named results, in declaration order.
    pub outputs: Vec<(String, NodeIndex)>,
}

pub type NodeId = NodeIndex;

impl Graph {
    pub fn new(name: impl Into<String>) -> Graph {
        Graph {
            name: name.into(),
            ..Graph::default()
        }
    }

    /// Adds a node, inferring its type. `declared` is required by ops whose result type is
    /// not a function of their operands (param, input, const, iota, cast, reshape, expand)
    /// and, when given for other ops, must equal the inferred type.
    pub fn add(
        &mut self,
        op: Op,
        operands: &[NodeId],
        declared: Option<TensorType>,
    ) -> Result<NodeId, String> {
        let types: Vec<&TensorType> = operands.iter().map(|&o| &self.dag[o].ty).collect();
        let ty = infer_type(&op, &types, declared.as_ref())?;
        let id = self.dag.add_node(Node { op, ty, name: None });
        for (i, &o) in operands.iter().enumerate() {
            self.dag.add_edge(o, id, i as u32);
        }
        Ok(id)
    }

    pub fn node(&self, id: NodeId) -> &Node {
        &self.dag[id]
    }

    pub fn set_name(&mut self, id: NodeId, name: &str) {
        if self.dag[id].name.is_none() {
            self.dag[id].name = Some(sanitize_name(name));
        }
    }

    /// Operands in order.
    pub fn operands(&self, id: NodeId) -> Vec<NodeId> {
        let mut edges: Vec<(u32, NodeId)> = self
            .dag
            .edges_directed(id, Direction::Incoming)
            .map(|e| (*e.weight(), e.source()))
            .collect();
        edges.sort();
        edges.into_iter().map(|(_, n)| n).collect()
    }

    /// Nodes that use `id`, with the operand position.
    pub fn users(&self, id: NodeId) -> Vec<(NodeId, u32)> {
        let mut v: Vec<(NodeId, u32)> = self
            .dag
            .edges_directed(id, Direction::Outgoing)
            .map(|e| (e.target(), *e.weight()))
            .collect();
        v.sort();
        v
    }

    /// Points every use of `old` (and outputs naming it) at `new`.
    pub fn replace_uses(&mut self, old: NodeId, new: NodeId) {
        for (user, pos) in self.users(old) {
            let e = self.dag.find_edge(old, user).expect("edge exists");
            self.dag.remove_edge(e);
            self.dag.add_edge(new, user, pos);
        }
        for out in &mut self.outputs {
            if out.1 == old {
                out.1 = new;
            }
        }
    }

    /// A deterministic topological order: among ready nodes, the one added first.
    /// Independent of hash orders, so printing is stable.
    pub fn topo_order(&self) -> Vec<NodeId> {
        let mut indeg: Vec<usize> = vec![0; self.dag.node_bound()];
        for n in self.dag.node_indices() {
            indeg[n.index()] = self.dag.edges_directed(n, Direction::Incoming).count();
        }
        let mut heap: BinaryHeap<Reverse<usize>> = self
            .dag
            .node_indices()
            .filter(|n| indeg[n.index()] == 0)
            .map(|n| Reverse(n.index()))
            .collect();
        let mut order = Vec::with_capacity(self.dag.node_count());
        while let Some(Reverse(i)) = heap.pop() {
            let n = NodeIndex::new(i);
            order.push(n);
            for e in self.dag.edges_directed(n, Direction::Outgoing) {
                let t = e.target().index();
                indeg[t] -= 1;
                if indeg[t] == 0 {
                    heap.push(Reverse(t));
                }
            }
        }
        order
    }

    /// Parameter nodes in topological order.
    pub fn params(&self) -> Vec<NodeId> {
        self.topo_order()
            .into_iter()
            .filter(|&n| matches!(self.dag[n].op, Op::Param { .. }))
            .collect()
    }

    /// Input nodes in topological order.
    pub fn inputs(&self) -> Vec<NodeId> {
        self.topo_order()
            .into_iter()
            .filter(|&n| matches!(self.dag[n].op, Op::Input { .. }))
            .collect()
    }

    pub fn output(&self, name: &str) -> Option<NodeId> {
        self.outputs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, id)| *id)
    }

    /// Removes nodes that no output depends on, keeping parameters and inputs (they are the
    /// graph's interface even when an entry point does not use them).
    pub fn remove_dead(&mut self) {
        let mut live = vec![false; self.dag.node_bound()];
        let mut stack: Vec<NodeId> = self.outputs.iter().map(|(_, n)| *n).collect();
        while let Some(n) = stack.pop() {
            if std::mem::replace(&mut live[n.index()], true) {
                continue;
            }
            stack.extend(self.dag.neighbors_directed(n, Direction::Incoming));
        }
        let dead: Vec<NodeId> = self
            .dag
            .node_indices()
            .filter(|n| {
                !live[n.index()] && !matches!(self.dag[*n].op, Op::Param { .. } | Op::Input { .. })
            })
            .collect();
        for n in dead {
            self.dag.remove_node(n);
        }
    }
}

/// Value names are DSL paths; anything else is replaced so the printed form stays parseable.
pub fn sanitize_name(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Structural equality: same name, same nodes (op, type, name) in the same stable
/// topological order with the same operands, same outputs. Independent of petgraph
/// indices, so `parse(print(g)) == g` is meaningful.
impl PartialEq for Graph {
    fn eq(&self, other: &Graph) -> bool {
        self.name == other.name && canonical(self) == canonical(other)
    }
}

type CanonNode<'a> = (&'a Op, &'a TensorType, &'a Option<String>, Vec<usize>);

fn canonical(g: &Graph) -> (Vec<CanonNode<'_>>, Vec<(&str, usize)>) {
    let order = g.topo_order();
    let pos: std::collections::HashMap<NodeId, usize> =
        order.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let nodes = order
        .iter()
        .map(|&n| {
            let node = &g.dag[n];
            (
                &node.op,
                &node.ty,
                &node.name,
                g.operands(n).iter().map(|o| pos[o]).collect(),
            )
        })
        .collect();
    let outs = g
        .outputs
        .iter()
        .map(|(s, n)| (s.as_str(), pos[n]))
        .collect();
    (nodes, outs)
}
