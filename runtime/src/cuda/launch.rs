//! Launch configurations (grid, block, shared memory) of every kernel the CUDA backend
//! runs; pure, so that they are tested without a GPU.

/// The kernels of the library (`codegen/src/cuda/library.cu`) the executor loads by name
/// and launches; `tests/cuda.rs` checks that the library defines each and that every
/// name the executor launches is here.
pub const LIBRARY_FUNCTIONS: [&str; 33] = [
    "enc_copy_b1",
    "enc_copy_b2",
    "enc_copy_b4",
    "enc_copy_b8",
    "enc_copy_f32_to_bf16",
    "enc_copy_bf16_to_f32",
    "enc_fill_b1",
    "enc_fill_b2",
    "enc_fill_b4",
    "enc_fill_b8",
    "enc_gather_b1",
    "enc_gather_b2",
    "enc_gather_b4",
    "enc_gather_b8",
    "enc_reduce_f32",
    "enc_reduce_bf16",
    "enc_reduce_i64",
    "enc_reduce_u8",
    "enc_reduce_parts_f32",
    "enc_reduce_parts_i64",
    "enc_reduce_parts_u8",
    "enc_scatter_add_f32",
    "enc_scatter_add_bf16",
    "enc_attention_f32",
    "enc_attention_bf16",
    "enc_attention_bf16_f32",
    "enc_attention_split_f32",
    "enc_attention_split_bf16",
    "enc_attention_split_bf16_f32",
    "enc_attention_bwd_rows_f32",
    "enc_attention_bwd_rows_bf16",
    "enc_attention_bwd_keys_f32",
    "enc_attention_bwd_keys_bf16",
];

/// Threads per block of the grid-stride kernels.
pub const THREADS: u32 = 256;
/// Query rows (one warp each) per block of the attention kernel.
pub const ATTN_WARPS: u32 = 8;
/// Most value columns per attention row: 32 lanes × `ENC_ATTN_DV_LANE` in `library.cu`.
pub const ATTN_MAX_DV: usize = 256;
/// Shared memory a block may use without opting in.
pub const SHARED_LIMIT: usize = 48 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Launch {
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
    pub shared_bytes: u32,
}

/// Blocks of a grid-stride loop: enough to fill the device (`sms` multiprocessors) a few
/// times over; the loop covers the rest.
fn stride_blocks(units: u64, per_block: u64, sms: u32) -> u32 {
    let want = units.div_ceil(per_block).max(1);
    want.min(sms.max(1) as u64 * 32) as u32
}

/// One thread per element. `None` when there is nothing to do.
pub fn elementwise(n: u64, sms: u32) -> Option<Launch> {
    (n > 0).then(|| Launch {
        grid: (stride_blocks(n, THREADS as u64, sms), 1, 1),
        block: (THREADS, 1, 1),
        shared_bytes: 0,
    })
}

/// One row per `block.x` threads (a power of two from 32 to 1024), `block.y` rows per
/// block so that short rows still fill 256-thread blocks. Few rows get wide rows (about 4
/// elements per thread) so that they still spread over the device; many rows (8 or more
/// blocks per multiprocessor) get at most 256 threads and about 8 elements each, because
/// a 1024-thread row of a 2304-wide gradient spends its time in the block-wide fold, not
/// in loads (the norm's row sums over a [256000, 2304] gradient: 0.8 TB/s on an H200).
pub fn rows(rows: u64, inner: u64, sms: u32) -> Option<Launch> {
    if rows == 0 {
        return None;
    }
    let many = rows >= 8 * sms.max(1) as u64;
    let (per_thread, widest) = if many { (8, THREADS as u64) } else { (4, 1024) };
    let w = inner
        .div_ceil(per_thread)
        .max(1)
        .next_power_of_two()
        .clamp(32, widest) as u32;
    let r = (THREADS / w).max(1);
    Some(Launch {
        grid: (stride_blocks(rows, r as u64, sms), 1, 1),
        block: (w, r, 1),
        shared_bytes: 0,
    })
}

/// The two attention forward kernels of `library.cu`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttnForm {
    /// `enc_attention_*`: one warp per query row, `ATTN_WARPS` rows of a block sharing
    /// each tile of keys; grid (row blocks, heads, batch).
    Rows,
    /// `enc_attention_split_*`: one block per query row, its `ATTN_WARPS` warps taking
    /// turns over the key tiles, merged at the end; grid (rows, heads, batch). For the
    /// grids too small to fill the GPU in rows (a decode step has one query row per head),
    /// where one warp would walk every key alone.
    KeySplit,
}

/// The attention kernel for `[b, hq, tq, d]` queries over `tk` keys with `dv`-wide values
/// on a GPU of `sms` multiprocessors, and its launch.
pub fn attention(
    [b, hq, tq, tk]: [usize; 4],
    d: usize,
    dv: usize,
    sms: u32,
) -> Result<Option<(AttnForm, Launch)>, String> {
    if b == 0 || hq == 0 || tq == 0 || dv == 0 {
        return Ok(None);
    }
    if dv > ATTN_MAX_DV {
        return Err(format!(
            "the CUDA attention kernel supports value heads up to {ATTN_MAX_DV} wide, not {dv}"
        ));
    }
    // A tile of 32 key rows (padded to d + 1), then the same 32 value rows; each warp's q.
    let shared = (32 * (d + 1).max(dv) + ATTN_WARPS as usize * d) * 4;
    if shared > SHARED_LIMIT {
        return Err(format!(
            "the CUDA attention kernel supports query heads up to 256 wide, not {d}"
        ));
    }
    let rows = warp_rows(b, hq, tq, shared as u32)?;
    let blocks = rows.grid.0 as u64 * hq as u64 * b as u64;
    // More than one tile of keys to share out, and a grid that leaves multiprocessors idle.
    if tk <= 32 || blocks >= sms as u64 {
        return Ok(Some((AttnForm::Rows, rows)));
    }
    let warps = ATTN_WARPS as usize;
    Ok(Some((
        AttnForm::KeySplit,
        Launch {
            grid: (tq as u32, hq as u32, b as u32),
            block: (32 * ATTN_WARPS, 1, 1),
            // The query row, then per warp its running maximum and sum, whether it saw a
            // key, and its output row.
            shared_bytes: ((d + 3 * warps + warps * dv) * 4) as u32,
        },
    )))
}

/// `ATTN_WARPS` rows (one warp each) per block, grid (row blocks, heads, batch).
fn warp_rows(b: usize, heads: usize, rows: usize, shared_bytes: u32) -> Result<Launch, String> {
    if heads > 65535 || b > 65535 {
        return Err(format!(
            "attention over {b} batch rows × {heads} heads exceeds the CUDA grid"
        ));
    }
    let blocks = rows.div_ceil(ATTN_WARPS as usize);
    if blocks > u32::MAX as usize / 2 {
        return Err(format!("attention over {rows} rows exceeds the CUDA grid"));
    }
    Ok(Launch {
        grid: (blocks as u32, heads as u32, b as u32),
        block: (32 * ATTN_WARPS, 1, 1),
        shared_bytes,
    })
}

/// Either attention backward kernel (`enc_attention_bwd_rows_*`, `enc_attention_bwd_keys_*`):
/// one warp per row (`rows` query rows of each of `heads` query heads, or key rows of each
/// kv head), grid (row blocks, heads, batch), no shared memory. `None` when there is
/// nothing to do.
pub fn attention_grad(
    b: usize,
    heads: usize,
    rows: usize,
    d: usize,
    dv: usize,
) -> Result<Option<Launch>, String> {
    if b == 0 || heads == 0 || rows == 0 {
        return Ok(None);
    }
    if d.max(dv) > ATTN_MAX_DV {
        return Err(format!(
            "the CUDA attention backward supports heads up to {ATTN_MAX_DV} wide, not {}",
            d.max(dv)
        ));
    }
    warp_rows(b, heads, rows, 0).map(Some)
}

/// A reduction of `[outer, n, inner]` over n (`enc_reduce_*`): `launch`, and the `parts`
/// n is split into (its grid's y; `enc_reduce_parts_*` combines them when more than one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reduce {
    pub launch: Launch,
    pub parts: u32,
}

/// Blocks of 256 threads: x lanes over inner (up to 32 of them side by side, so that a
/// warp reads consecutive addresses), y = 256 / x rows over n (fewer lanes when n is short,
/// more rows when inner is narrow); grid x over (outer, inner tiles). When those blocks
/// would leave the device (`sms` multiprocessors) idle, n is split into parts (grid y) of
/// at least 32 rows per thread, until there are about four blocks per multiprocessor.
pub fn reduce(outer: u64, n: u64, inner: u64, sms: u32) -> Result<Option<Reduce>, String> {
    if outer == 0 || inner == 0 {
        return Ok(None);
    }
    let lanes = inner.next_power_of_two().min(32);
    let y = n.max(1).next_power_of_two().min(THREADS as u64 / lanes);
    let x = THREADS as u64 / y;
    let blocks = outer * inner.div_ceil(x);
    if blocks > i32::MAX as u64 {
        return Err(format!(
            "a reduction with {outer} × {inner} outputs exceeds the CUDA grid"
        ));
    }
    let sms = sms.max(1) as u64;
    let parts = if blocks >= 2 * sms {
        1
    } else {
        (4 * sms)
            .div_ceil(blocks)
            .min(n.div_ceil(y * 32))
            .clamp(1, 65535)
    };
    Ok(Some(Reduce {
        launch: Launch {
            grid: (blocks as u32, parts as u32, 1),
            block: (x as u32, y as u32, 1),
            shared_bytes: 0,
        },
        parts: parts as u32,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elementwise_launches() {
        let check = |n: u64, sms: u32, grid: u32| {
            let l = elementwise(n, sms).unwrap();
            assert_eq!(l.grid, (grid, 1, 1), "n={n}");
            assert_eq!(l.block, (256, 1, 1));
            // Every element is covered by the grid-stride loop.
            assert!(grid as u64 * 256 >= n.min(grid as u64 * 256));
        };
        check(1, 132, 1);
        check(256, 132, 1);
        check(257, 132, 2);
        check(1 << 30, 132, 132 * 32);
        check(1000, 0, 4);
        assert_eq!(elementwise(0, 132), None);
    }

    #[test]
    fn row_launches() {
        // (rows, inner) -> (threads per row, rows per block, blocks)
        let check = |rows_: u64, inner: u64, want: (u32, u32, u32)| {
            let l = rows(rows_, inner, 132).unwrap();
            assert_eq!((l.block.0, l.block.1, l.grid.0), want, "{rows_}x{inner}");
            assert!(l.block.0 * l.block.1 <= 1024);
            assert_eq!(l.block.0 % 32, 0);
        };
        check(1, 1, (32, 8, 1));
        check(9, 8, (32, 8, 2));
        // Fewer rows than 8 blocks per multiprocessor: wide rows.
        check(1024, 512, (128, 2, 512));
        check(512, 2304, (1024, 1, 512));
        check(512, 256000, (1024, 1, 512));
        // Many rows: at most 256 threads, about 8 elements each.
        check(2048, 512, (64, 4, 512));
        check(2048, 32000, (256, 1, 2048));
        check(256000, 2304, (256, 1, 132 * 32));
        check(100_000, 64, (32, 8, 132 * 32));
        assert_eq!(rows(0, 7, 132), None);
    }

    #[test]
    fn reduce_launches() {
        // (outer, n, inner) -> (block x, block y, blocks, parts) on 132 multiprocessors
        let check = |(o, n, i): (u64, u64, u64), want: (u32, u32, u32, u32)| {
            let r = reduce(o, n, i, 132).unwrap().unwrap();
            let l = r.launch;
            assert_eq!(
                (l.block.0, l.block.1, l.grid.0, r.parts),
                want,
                "{o}x{n}x{i}"
            );
            assert_eq!(l.grid.1, r.parts);
            assert_eq!(l.block.0 * l.block.1, 256);
            assert!(l.block.1.is_power_of_two());
            // Every output is covered, every part has rows.
            assert!(l.grid.0 as u64 * l.block.0 as u64 >= o * i);
            assert!(r.parts as u64 <= n.max(1));
        };
        // A gradient's sum of squares over its rows: 72 column tiles, n split in 8.
        check((1, 256000, 2304), (32, 8, 72, 8));
        // Then over the columns: one output, every thread along n.
        check((1, 2304, 1), (1, 256, 1, 1));
        check((1, 1 << 20, 1), (1, 256, 1, 128));
        // Many outputs, short n: no split, lanes over inner.
        check((16, 2, 65536), (128, 2, 8192, 1));
        check((2, 256, 2304), (32, 8, 144, 1));
        check((1, 512, 2304), (32, 8, 72, 2));
        check((1000, 3, 1), (64, 4, 1000, 1));
        assert_eq!(reduce(0, 5, 5, 132).unwrap(), None);
        assert_eq!(reduce(3, 5, 0, 132).unwrap(), None);
        assert!(reduce(1 << 40, 2, 1, 132).unwrap_err().contains("grid"));
    }

    #[test]
    fn attention_grad_launches() {
        let l = attention_grad(4, 8, 256, 64, 64).unwrap().unwrap();
        assert_eq!(
            (l.grid, l.block, l.shared_bytes),
            ((32, 8, 4), (256, 1, 1), 0)
        );
        let l = attention_grad(2, 4, 7, 256, 256).unwrap().unwrap();
        assert_eq!(l.grid, (1, 4, 2));
        assert_eq!(attention_grad(1, 8, 0, 64, 64).unwrap(), None);
        assert!(attention_grad(1, 8, 7, 64, 512)
            .unwrap_err()
            .contains("512"));
        assert!(attention_grad(1, 8, 7, 320, 64)
            .unwrap_err()
            .contains("320"));
    }

    #[test]
    fn attention_launches() {
        let h100 = 132;
        let (form, l) = attention([4, 8, 256, 256], 64, 64, h100).unwrap().unwrap();
        assert_eq!(form, AttnForm::Rows);
        assert_eq!(l.grid, (32, 8, 4));
        assert_eq!(l.block, (256, 1, 1));
        assert_eq!(l.shared_bytes, (32 * 65 + 8 * 64) * 4);
        let (form, l) = attention([1, 8, 7, 256], 256, 256, h100).unwrap().unwrap();
        assert_eq!(form, AttnForm::KeySplit);
        assert_eq!(l.grid, (7, 8, 1));
        assert!(l.shared_bytes as usize <= SHARED_LIMIT);
        // A decode step: over the encoder's keys split, over a ring of a few keys in rows.
        let (form, l) = attention([1, 8, 1, 256], 64, 64, h100).unwrap().unwrap();
        assert_eq!(form, AttnForm::KeySplit);
        assert_eq!((l.grid, l.block), ((1, 8, 1), (256, 1, 1)));
        assert_eq!(l.shared_bytes, (64 + 24 + 8 * 64) * 4);
        let (form, _) = attention([1, 8, 1, 32], 64, 64, h100).unwrap().unwrap();
        assert_eq!(form, AttnForm::Rows);
        // A grid that fills the GPU stays in rows.
        let (form, _) = attention([1, 8, 1, 256], 64, 64, 8).unwrap().unwrap();
        assert_eq!(form, AttnForm::Rows);
        assert_eq!(attention([1, 8, 0, 9], 64, 64, h100).unwrap(), None);
        assert!(attention([1, 8, 7, 9], 64, 512, h100)
            .unwrap_err()
            .contains("512"));
        assert!(attention([1, 8, 7, 9], 512, 64, h100)
            .unwrap_err()
            .contains("512"));
    }
}
