//! The graph IR: types, the closed op set, the graph, inference, verification, the
//! printed form and its parser, and Graphviz output.

pub mod dot;
pub mod graph;
pub mod infer;
pub mod op;
pub mod parse;
pub mod print;
pub mod specialize;
pub mod types;
pub mod verify;

pub use graph::{Graph, Node, NodeId};
pub use op::*;
pub use types::{DType, Dim, Shape, TensorType};
