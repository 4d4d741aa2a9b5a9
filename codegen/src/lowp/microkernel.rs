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

use super::text::{bf16_half, lane_mask, splat, splat_i32};
use super::{GemmVariant, Tile};
use std::fmt::Write;

/// The symbol of the micro-kernel for `variant` and `tile`.
pub fn symbol(variant: GemmVariant, tile: Tile) -> String {
    let v = match variant {
        GemmVariant::Native => "dpbf16",
        GemmVariant::Emulated => "emulated",
    };
    format!("encdecc.lowp.gemm.{v}.{}x{}", tile.mr, tile.nr)
}

/// The micro-kernel's function definition.
pub fn function(variant: GemmVariant, tile: Tile) -> String {
    assert!(tile.mr > 0 && tile.nr > 0 && tile.nr.is_multiple_of(16));
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
                GemmVariant::Emulated => {
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

    // The store: masks and scales once, then one block per row, leaving at `rows`.
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
    writeln!(o, "  %no.scales = icmp eq float* %scales, null").unwrap();
    writeln!(o, "  %keep = icmp ne i32 %accumulate, 0").unwrap();
    for v in 0..vecs {
        writeln!(o, "  %left.{v} = sub i64 %cols, {}", 16 * v).unwrap();
        lane_mask(&mut o, &format!("m.{v}"), &format!("%left.{v}"));
        // A masked load with no lane on reads nothing: no scales means the pass-through 1.
        writeln!(
            o,
            "  %ms.{v} = select i1 %no.scales, <16 x i1> zeroinitializer, <16 x i1> %m.{v}"
        )
        .unwrap();
        writeln!(
            o,
            "  %s.p.{v} = getelementptr float, float* %scales, i64 {}",
            16 * v
        )
        .unwrap();
        writeln!(o, "  %s.vp.{v} = bitcast float* %s.p.{v} to <16 x float>*").unwrap();
        writeln!(
            o,
            "  %s.{v} = call <16 x float> @llvm.masked.load.v16f32.p0v16f32(<16 x float>* %s.vp.{v}, \
             i32 4, <16 x i1> %ms.{v}, <16 x float> {})",
            splat("float", "1.0")
        )
        .unwrap();
        writeln!(
            o,
            "  %mc.{v} = select i1 %keep, <16 x i1> %m.{v}, <16 x i1> zeroinitializer"
        )
        .unwrap();
    }
    writeln!(o, "  br label %row.0\n").unwrap();
    for r in 0..mr {
        writeln!(o, "row.{r}:").unwrap();
        writeln!(o, "  %in.{r} = icmp slt i64 {r}, %rows").unwrap();
        writeln!(o, "  br i1 %in.{r}, label %store.{r}, label %exit\n").unwrap();
        writeln!(o, "store.{r}:").unwrap();
        writeln!(o, "  %c.row.{r} = mul i64 %ldc, {r}").unwrap();
        for v in 0..vecs {
            writeln!(o, "  %c.off.{r}.{v} = add i64 %c.row.{r}, {}", 16 * v).unwrap();
            writeln!(
                o,
                "  %c.p.{r}.{v} = getelementptr float, float* %c, i64 %c.off.{r}.{v}"
            )
            .unwrap();
            writeln!(
                o,
                "  %c.vp.{r}.{v} = bitcast float* %c.p.{r}.{v} to <16 x float>*"
            )
            .unwrap();
            writeln!(
                o,
                "  %old.{r}.{v} = call <16 x float> @llvm.masked.load.v16f32.p0v16f32(<16 x float>* \
                 %c.vp.{r}.{v}, i32 4, <16 x i1> %mc.{v}, <16 x float> zeroinitializer)"
            )
            .unwrap();
            writeln!(o, "  %sc.{r}.{v} = fmul <16 x float> %t.{r}.{v}, %s.{v}").unwrap();
            writeln!(
                o,
                "  %new.{r}.{v} = fadd <16 x float> %old.{r}.{v}, %sc.{r}.{v}"
            )
            .unwrap();
            writeln!(
                o,
                "  call void @llvm.masked.store.v16f32.p0v16f32(<16 x float> %new.{r}.{v}, \
                 <16 x float>* %c.vp.{r}.{v}, i32 4, <16 x i1> %m.{v})"
            )
            .unwrap();
        }
        let next = if r + 1 < mr {
            format!("row.{}", r + 1)
        } else {
            "exit".to_string()
        };
        writeln!(o, "  br label %{next}\n").unwrap();
    }
    writeln!(o, "exit:").unwrap();
    writeln!(o, "  ret void").unwrap();
    writeln!(o, "}}\n").unwrap();
    o
}
