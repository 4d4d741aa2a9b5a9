//! Kernel arguments, in the order of the kernels' C signatures (see
//! `codegen/src/cuda/loops.rs` and `library.cu`); pure, so that they are tested without a
//! GPU.

use encdecc_codegen::cuda::dynamic_strides;
use encdecc_compiler::fuse::strides_for;
use encdecc_compiler::ir::{AttentionAttrs, AttnMode, WindowRule};
use encdecc_compiler::kernel::{LoopKernel, Stride};

/// One kernel argument by value (device pointers are `Ptr`). A list lives for one launch,
/// so the copy descriptor's size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Arg {
    Ptr(u64),
    I64(i64),
    I32(i32),
    U8(u8),
    U16(u16),
    F32(f32),
    /// A strided-copy descriptor, passed by value.
    Strided(super::movement::Strided),
}

/// A loop kernel's arguments: input pointers, output pointers, the sizes of `space`, then
/// each `Dynamic` stride of each input (contiguous inputs of `in_shapes`, broadcast
/// right-aligned). The static pattern must agree with the actual shapes.
pub fn loop_args(
    k: &LoopKernel,
    ins: &[u64],
    outs: &[u64],
    space: &[usize],
    in_shapes: &[Vec<usize>],
) -> Result<Vec<Arg>, String> {
    if ins.len() != k.inputs.len() || outs.len() != k.outputs.len() || space.len() != k.rank {
        return Err(format!("kernel {}: wrong number of operands", k.name));
    }
    let strides: Vec<Vec<i64>> = in_shapes.iter().map(|s| strides_for(s, space)).collect();
    for (i, inp) in k.inputs.iter().enumerate() {
        for (a, pat) in inp.strides.iter().enumerate() {
            let actual = strides[i][a];
            let ok = match pat {
                // A size-1 axis is never stepped along: any stride does.
                _ if space[a] <= 1 => true,
                Stride::Zero => actual == 0,
                Stride::One => actual == 1,
                Stride::Dynamic => true,
            };
            if !ok {
                return Err(format!(
                    "kernel {}: input {i} has stride {actual} on axis {a}, compiled for {pat:?}",
                    k.name
                ));
            }
        }
    }
    let mut args: Vec<Arg> = ins.iter().chain(outs).map(|&p| Arg::Ptr(p)).collect();
    args.extend(space.iter().map(|&d| Arg::I64(d as i64)));
    args.extend(
        dynamic_strides(k)
            .into_iter()
            .map(|(i, a)| Arg::I64(strides[i][a])),
    );
    Ok(args)
}

/// Element strides `[batch, head, time]` of a `[B, H, T, D]` attention operand, stored
/// contiguous either as `[B, H, T, D]` or, read through the head transpose, `[B, T, H, D]`.
pub fn head_strides(shape: [usize; 4], time_major: bool) -> [i64; 3] {
    let [_, h, t, d] = shape.map(|x| x as i64);
    if time_major {
        [t * h * d, d, h * d]
    } else {
        [h * t * d, t * d, d]
    }
}

/// The scalar shape of an attention call.
#[derive(Clone, Copy, Debug)]
pub struct AttnCall {
    pub hq: usize,
    pub hk: usize,
    pub tq: usize,
    pub tk: usize,
    pub d: usize,
    pub dv: usize,
    /// `[batch, head, time]` strides of q, k, v.
    pub strides: [[i64; 3]; 3],
}

impl AttnCall {
    /// The call over q, k and v of shapes `[B, H, T, D]` with their `[batch, head, time]`
    /// strides.
    pub fn of(q: [usize; 4], k: [usize; 4], v: [usize; 4], strides: [[i64; 3]; 3]) -> AttnCall {
        AttnCall {
            hq: q[1],
            hk: k[1],
            tq: q[2],
            tk: k[2],
            d: q[3],
            dv: v[3],
            strides,
        }
    }
}

/// `enc_attention_f32`'s arguments after the five pointers (out, q, k, v, mask).
pub fn attention_scalars(a: &AttentionAttrs, c: &AttnCall) -> Result<Vec<Arg>, String> {
    if c.hk == 0 || !c.hq.is_multiple_of(c.hk) {
        return Err(format!(
            "attention: {} query heads over {} key/value heads",
            c.hq, c.hk
        ));
    }
    // Windows wider than every distance behave as none; clamping keeps i64 exact.
    let window = match a.window {
        None => -1,
        Some(w) => w.min((c.tq + c.tk + 1) as u64) as i64,
    };
    let mut v = vec![
        Arg::I64(c.hq as i64),
        Arg::I64(c.hk as i64),
        Arg::I64(c.tq as i64),
        Arg::I64(c.tk as i64),
        Arg::I64(c.d as i64),
        Arg::I64(c.dv as i64),
    ];
    for s in c.strides {
        v.extend(s.map(Arg::I64));
    }
    v.extend([
        Arg::F32(a.scale.0 as f32),
        Arg::F32(a.softcap.map_or(0.0, |c| c.0 as f32)),
        Arg::I32((a.mode == AttnMode::Causal) as i32),
        Arg::I64(window),
        Arg::I32((a.window_rule == WindowRule::Inclusive) as i32),
    ]);
    Ok(v)
}

/// The attention backward kernels' arguments after their pointers: `attention_scalars`
/// with the `[batch, head, time]` strides of `dout` after those of v.
pub fn attention_grad_scalars(
    a: &AttentionAttrs,
    c: &AttnCall,
    dout_strides: [i64; 3],
) -> Result<Vec<Arg>, String> {
    let mut v = attention_scalars(a, c)?;
    v.splice(15..15, dout_strides.map(Arg::I64));
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use encdecc_compiler::ir::{DType, F64};
    use encdecc_compiler::kernel::{KernelInput, KernelOutput, Stage};

    fn kernel(patterns: &[Vec<Stride>]) -> LoopKernel {
        LoopKernel {
            name: "k".into(),
            rank: patterns[0].len(),
            inputs: patterns
                .iter()
                .map(|s| KernelInput {
                    dtype: DType::F32,
                    strides: s.clone(),
                })
                .collect(),
            outputs: vec![KernelOutput {
                dtype: DType::F32,
                per_row: false,
            }],
            stages: vec![Stage {
                ops: vec![],
                reduce: None,
                stores: vec![],
            }],
        }
    }

    #[test]
    fn loop_arguments_follow_the_signature() {
        use Stride::*;
        // x [B, T, D] + bias [D] + gate [B, 1, D]
        let k = kernel(&[
            vec![Dynamic, Dynamic, One],
            vec![Zero, Zero, One],
            vec![Dynamic, Zero, One],
        ]);
        let args = loop_args(
            &k,
            &[10, 20, 30],
            &[40],
            &[2, 3, 4],
            &[vec![2, 3, 4], vec![4], vec![2, 1, 4]],
        )
        .unwrap();
        use Arg::*;
        assert_eq!(
            args,
            vec![
                Ptr(10),
                Ptr(20),
                Ptr(30),
                Ptr(40),
                I64(2),
                I64(3),
                I64(4),
                I64(12),
                I64(4),
                I64(4)
            ]
        );
        // A symbolic size bound to 1: the stride is whatever, never stepped along.
        assert!(loop_args(
            &k,
            &[1, 2, 3],
            &[4],
            &[1, 3, 4],
            &[vec![1, 3, 4], vec![4], vec![1, 1, 4]]
        )
        .is_ok());
        // Shapes that contradict the compiled pattern are an error, not a wrong read.
        let err = loop_args(
            &k,
            &[1, 2, 3],
            &[4],
            &[2, 3, 4],
            &[vec![2, 3, 4], vec![3, 4], vec![2, 1, 4]],
        )
        .unwrap_err();
        assert!(err.contains("input 1"), "{err}");
        assert!(loop_args(&k, &[1], &[4], &[2, 3, 4], &[]).is_err());
    }

    #[test]
    fn head_layouts() {
        // [B=2, H=3, T=5, D=4]
        assert_eq!(head_strides([2, 3, 5, 4], false), [60, 20, 4]);
        assert_eq!(head_strides([2, 3, 5, 4], true), [60, 4, 12]);
    }

    #[test]
    fn attention_arguments() {
        let a = AttentionAttrs {
            mode: AttnMode::Bidirectional,
            window: Some(u64::MAX),
            window_rule: WindowRule::Exclusive,
            softcap: Some(F64(50.0)),
            scale: F64(0.125),
        };
        let c = AttnCall {
            hq: 8,
            hk: 2,
            tq: 5,
            tk: 7,
            d: 4,
            dv: 4,
            strides: [[1, 2, 3], [4, 5, 6], [7, 8, 9]],
        };
        let v = attention_scalars(&a, &c).unwrap();
        assert_eq!(v.len(), 6 + 9 + 5);
        assert_eq!(
            v[15..],
            [
                Arg::F32(0.125),
                Arg::F32(50.0),
                Arg::I32(0),
                Arg::I64(13),
                Arg::I32(0)
            ]
        );
        let causal = AttentionAttrs {
            mode: AttnMode::Causal,
            window: None,
            softcap: None,
            window_rule: WindowRule::Inclusive,
            ..a
        };
        let v = attention_scalars(&causal, &c).unwrap();
        assert_eq!(
            v[16..],
            [Arg::F32(0.0), Arg::I32(1), Arg::I64(-1), Arg::I32(1)]
        );
        let bad = AttnCall { hq: 3, ..c };
        assert!(attention_scalars(&a, &bad)
            .unwrap_err()
            .contains("3 query heads"));
    }
}
