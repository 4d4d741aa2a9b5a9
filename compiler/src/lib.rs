//! The compiler: elaboration of `.edl` programs into the graph IR, the IR itself
//! (ops, shapes, printer, parser, verifier) and passes over it. It never touches a device
//! and never reads tensor files.

pub mod adapt;
pub mod autodiff;
pub mod decompose;
pub mod elab;
pub mod fuse;
pub mod ir;
pub mod kernel;
pub mod objective;
pub mod optim;
pub mod passes;
pub mod precision;
pub mod summary;
