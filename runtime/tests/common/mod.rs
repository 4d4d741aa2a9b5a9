//! Helpers shared by the runtime's tests: a reproducible generator and graph inputs.
#![allow(dead_code)]

pub mod attention;

use encdecc_compiler::ir::parse::parse_type;
use encdecc_compiler::ir::{Graph, NodeId, Op};

/// A small deterministic generator (xorshift), so failures reproduce.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }

    /// `n` values uniform in `[-scale, scale)`.
    pub fn vec(&mut self, n: usize, scale: f64) -> Vec<f32> {
        (0..n)
            .map(|_| ((self.next() - 0.5) * 2.0 * scale) as f32)
            .collect()
    }
}

/// Adds an input of the printed type `ty` (`"f32[B, 4, T, 16]"`).
pub fn input(g: &mut Graph, name: &str, ty: &str) -> NodeId {
    g.add(
        Op::Input { name: name.into() },
        &[],
        Some(parse_type(ty).unwrap()),
    )
    .unwrap()
}
