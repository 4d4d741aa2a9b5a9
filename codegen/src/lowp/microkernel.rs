//! The bf16 GEMM micro-kernel: an `mr × nr` tile of `C` from packed panels, the tile held
//! in `mr · nr/16` zmm accumulators for the whole k loop.
//!
//! Operands (see `super::GemmFn`): `a` holds `kp` steps of `mr` bf16 pairs (row `r`'s
//! `x[r, 2p]` in the low half, `x[r, 2p+1]` in the high half), `b` holds `kp` steps of
//! `nr` pairs (column `j`'s `w[j, 2p]`, `w[j, 2p+1]`). Each step loads `nr/16` vectors of
//! `b`, broadcasts each row's pair of `a`, and accumulates:
//! - `Native`: one `vdpbf16ps` per (row, vector): both products of the pair at once.
//! - `Emulated`: the pairs' halves widened to f32 (a bf16 is an f32's high half, so a
//!   shift or a mask), then two FMAs. The products are exact in f32 either way.
//!
//! The store writes rows `< rows` and columns `< cols` (lane masks), multiplied by the
//! per-column `scales` when not null, and added to `C` when `accumulate` is non-zero.

use super::store::store;
use super::text::{bf16_half, splat_i32};
use super::{GemmVariant, Tile};
use std::fmt::Write;

/// The symbol of the micro-kernel for `variant` and `tile`.
pub fn symbol(variant: GemmVariant, tile: Tile) -> String {
    let v = match variant {
        GemmVariant::Native => "dpbf16",
        GemmVariant::Emulated => "emulated",
        GemmVariant::Amx => unreachable!("the AMX kernel is `amx::function`"),
    };
    format!("encdecc.lowp.gemm.{v}.{}x{}", tile.mr, tile.nr)
}

/// The micro-kernel's function definition.
pub fn function(variant: GemmVariant, tile: Tile) -> String {
    assert!(tile.mr > 0 && tile.nr > 0 && tile.nr.is_multiple_of(16));
    assert!(
        variant != GemmVariant::Amx,
        "the AMX kernel is `amx::function`"
    );
    let (mr, vecs) = (tile.mr, tile.nr / 16);
    let mut o = String::new();
    writeln!(
        o,
        "define void @\"{}\"(i64 %kp, i32* noalias nocapture readonly %a, i32* noalias nocapture readonly %b, \
         float* noalias nocapture %c, i64 %ldc, i64 %rows, i64 %cols, i32 %accumulate, \
         float* noalias nocapture readonly %scales) #0 {{",
        symbol(variant, tile)
    )
    .unwrap();
    writeln!(o, "entry:").unwrap();
    writeln!(o, "  %any = icmp sgt i64 %kp, 0").unwrap();
    writeln!(o, "  br i1 %any, label %loop, label %done\n").unwrap();

    // The k loop: one step per pair.
    writeln!(o, "loop:").unwrap();
    writeln!(o, "  %p = phi i64 [ 0, %entry ], [ %p.next, %loop ]").unwrap();
    for r in 0..mr {
        for v in 0..vecs {
            writeln!(
                o,
                "  %acc.{r}.{v} = phi <16 x float> [ zeroinitializer, %entry ], [ %acc.{r}.{v}.n, %loop ]"
            )
            .unwrap();
        }
    }
    writeln!(o, "  %b.off = mul i64 %p, {}", tile.nr).unwrap();
    for v in 0..vecs {
        writeln!(o, "  %b.off.{v} = add i64 %b.off, {}", 16 * v).unwrap();
        writeln!(
            o,
            "  %b.p.{v} = getelementptr inbounds i32, i32* %b, i64 %b.off.{v}"
        )
        .unwrap();
        writeln!(o, "  %b.vp.{v} = bitcast i32* %b.p.{v} to <16 x i32>*").unwrap();
        writeln!(
            o,
            "  %b.{v} = load <16 x i32>, <16 x i32>* %b.vp.{v}, align 4"
        )
        .unwrap();
        if variant == GemmVariant::Emulated {
            bf16_half(&mut o, &format!("b.{v}.lo"), &format!("%b.{v}"), true);
            bf16_half(&mut o, &format!("b.{v}.hi"), &format!("%b.{v}"), false);
        }
    }
    writeln!(o, "  %a.off = mul i64 %p, {mr}").unwrap();
    for r in 0..mr {
        writeln!(o, "  %a.off.{r} = add i64 %a.off, {r}").unwrap();
        writeln!(
            o,
            "  %a.p.{r} = getelementptr inbounds i32, i32* %a, i64 %a.off.{r}"
        )
        .unwrap();
        writeln!(o, "  %a.s.{r} = load i32, i32* %a.p.{r}, align 4").unwrap();
        splat_i32(&mut o, &format!("a.{r}"), &format!("%a.s.{r}"));
        if variant == GemmVariant::Emulated {
            bf16_half(&mut o, &format!("a.{r}.lo"), &format!("%a.{r}"), true);
            bf16_half(&mut o, &format!("a.{r}.hi"), &format!("%a.{r}"), false);
        }
        for v in 0..vecs {
            match variant {
                GemmVariant::Native => writeln!(
                    o,
                    "  %acc.{r}.{v}.n = call <16 x float> @llvm.x86.avx512bf16.dpbf16ps.512(\
                     <16 x float> %acc.{r}.{v}, <16 x i32> %a.{r}, <16 x i32> %b.{v})"
                )
                .unwrap(),
                GemmVariant::Emulated | GemmVariant::Amx => {
                    writeln!(
                        o,
                        "  %acc.{r}.{v}.m = call <16 x float> @llvm.fma.v16f32(<16 x float> %a.{r}.lo, \
                         <16 x float> %b.{v}.lo, <16 x float> %acc.{r}.{v})"
                    )
                    .unwrap();
                    writeln!(
                        o,
                        "  %acc.{r}.{v}.n = call <16 x float> @llvm.fma.v16f32(<16 x float> %a.{r}.hi, \
                         <16 x float> %b.{v}.hi, <16 x float> %acc.{r}.{v}.m)"
                    )
                    .unwrap();
                }
            }
        }
    }
    writeln!(o, "  %p.next = add nuw nsw i64 %p, 1").unwrap();
    writeln!(o, "  %more = icmp slt i64 %p.next, %kp").unwrap();
    writeln!(o, "  br i1 %more, label %loop, label %done\n").unwrap();

    // The store, from the sums `%t.{r}.{v}`.
    writeln!(o, "done:").unwrap();
    for r in 0..mr {
        for v in 0..vecs {
            writeln!(
                o,
                "  %t.{r}.{v} = phi <16 x float> [ zeroinitializer, %entry ], [ %acc.{r}.{v}.n, %loop ]"
            )
            .unwrap();
        }
    }
    store(&mut o, mr, vecs, None);
    o
}
