//! Self-attention caches of a decode step: one ring per layer kind, stacked over the
//! layers of that kind (`[layers, B, kv heads, C, head_dim]`), plus the position each slot
//! holds. Sliding layers need only their window, so their ring has W slots; full layers
//! keep every position.

use crate::tensor::{Data, Tensor};

/// The kind of a decoder layer's self-attention, as the decode step groups caches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerKind {
    Sliding { window: usize },
    Full,
}

impl LayerKind {
    /// The input-name prefix of this kind's cache in `decode_step`.
    pub fn prefix(self) -> &'static str {
        match self {
            LayerKind::Sliding { .. } => "sliding",
            LayerKind::Full => "full",
        }
    }
}

/// A ring cache for the layers of one kind.
pub struct Ring {
    pub prefix: &'static str,
    /// Stacked keys and values, `[layers, B, kv heads, capacity, head_dim]`.
    pub k: Tensor,
    pub v: Tensor,
    /// The position held by each slot, -1 when empty.
    pub pos: Tensor,
    pub capacity: usize,
}

impl Ring {
    pub fn new(
        prefix: &'static str,
        layers: usize,
        batch: usize,
        kv_heads: usize,
        capacity: usize,
        head_dim: usize,
    ) -> Ring {
        let shape = vec![layers, batch, kv_heads, capacity, head_dim];
        let n = shape.iter().product();
        Ring {
            prefix,
            k: Tensor::f32(shape.clone(), vec![0.0; n]),
            v: Tensor::f32(shape, vec![0.0; n]),
            pos: Tensor::i64(vec![capacity], vec![-1; capacity]),
            capacity,
        }
    }

    /// The tensors a step reads, by input-name suffix: keys, values and positions, or only
    /// the positions when the step's program keeps the keys and values (`on_gpu`).
    pub fn lent(&mut self, on_gpu: bool) -> Vec<(&'static str, &mut Tensor)> {
        if on_gpu {
            vec![("pos", &mut self.pos)]
        } else {
            vec![
                ("k", &mut self.k),
                ("v", &mut self.v),
                ("pos", &mut self.pos),
            ]
        }
    }

    /// The slot that position `p` goes to, marked as holding it (before the step runs: the
    /// step reads `pos` as the state after its own write).
    pub fn claim(&mut self, p: usize) -> usize {
        let slot = p % self.capacity;
        if let Data::I64(v) = &mut self.pos.data {
            v[slot] = p as i64;
        }
        slot
    }

    /// Stores one layer's new keys and values (`[B, kv heads, 1, head_dim]` each, taken from
    /// the step's stacked output at `src_layer`) in `slot` of layer `layer` of the ring.
    pub fn store(
        &mut self,
        layer: usize,
        slot: usize,
        new_k: &Tensor,
        new_v: &Tensor,
        src_layer: usize,
    ) {
        let [_, b, h, c, d] = self.k.shape[..] else {
            unreachable!("rings are rank 5")
        };
        for (dst, src) in [(&mut self.k, new_k), (&mut self.v, new_v)] {
            let (Data::F32(dst), Some(src)) = (&mut dst.data, src.as_f32()) else {
                unreachable!("caches and step outputs are f32")
            };
            for r in 0..b * h {
                let from = (src_layer * b * h + r) * d;
                let to = ((layer * b * h + r) * c + slot) * d;
                dst[to..to + d].copy_from_slice(&src[from..from + d]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ring_wraps_and_stores_per_layer() {
        let mut r = Ring::new("sliding", 2, 1, 1, 3, 2);
        for p in 0..5 {
            let slot = r.claim(p);
            let k = Tensor::f32(
                vec![2, 1, 1, 1, 2],
                vec![p as f32, 0.5, 10.0 + p as f32, 1.5],
            );
            r.store(1, slot, &k, &k, 1);
        }
        // Positions 3, 4 overwrote slots 0, 1; slot 2 holds 2.
        assert_eq!(r.pos.as_i64().unwrap(), &[3, 4, 2]);
        let k = r.k.as_f32().unwrap();
        assert_eq!(&k[..6], &[0.0; 6], "layer 0 untouched");
        assert_eq!(&k[6..], &[13.0, 1.5, 14.0, 1.5, 12.0, 1.5]);
    }
}
