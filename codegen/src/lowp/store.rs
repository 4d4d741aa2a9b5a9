//! The micro-kernels' common epilogue: an `mr × 16·vecs` tile of sums into `C`, rows
//! `< rows` and columns `< cols` only (lane masks), times the per-column `scales` when not
//! null, added to `C` when `accumulate` is non-zero.

use super::text::{lane_mask, splat};
use std::fmt::Write;

/// Emits the store of the sums `%t.{r}.{v}` (row `r`, 16-column vector `v`) through `ret`
/// and the function's closing brace. The caller defines the sums, or, with `from` the
/// name of a `float*` to `mr` rows of `16 · vecs` sums, the store loads each row in the
/// block that stores it (rows past `rows` are never loaded, and nothing is spilled). Reads the kernel's `%c`, `%ldc`, `%rows`, `%cols`,
/// `%accumulate` and `%scales`; masks and scales once, then one block per row, leaving at
/// `rows`.
pub fn store(o: &mut String, mr: usize, vecs: usize, from: Option<&str>) {
    writeln!(o, "  %no.scales = icmp eq float* %scales, null").unwrap();
    writeln!(o, "  %keep = icmp ne i32 %accumulate, 0").unwrap();
    for v in 0..vecs {
        writeln!(o, "  %left.{v} = sub i64 %cols, {}", 16 * v).unwrap();
        lane_mask(o, &format!("m.{v}"), &format!("%left.{v}"));
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
            if let Some(sums) = from {
                let at = r * vecs * 16 + v * 16;
                writeln!(
                    o,
                    "  %t.{r}.{v}.p = getelementptr inbounds float, float* {sums}, i64 {at}"
                )
                .unwrap();
                writeln!(
                    o,
                    "  %t.{r}.{v}.vp = bitcast float* %t.{r}.{v}.p to <16 x float>*"
                )
                .unwrap();
                writeln!(
                    o,
                    "  %t.{r}.{v} = load <16 x float>, <16 x float>* %t.{r}.{v}.vp, align 64"
                )
                .unwrap();
            }
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
}
