// encdecc CUDA library kernels: the steps of a kernel program that are not loop kernels
// (movement, gather, shift, integer reductions, attention). Matmuls go to cuBLAS.
// Movement kernels work on element bytes (1, 2, 4 or 8), so one kernel serves every dtype;
// two more copies convert between f32 and bf16 storage.

#define ENC_MAX_RANK 8

// A strided copy: element e of an iteration space `dims` (row-major) is read at
// `ioff + sum(idx * ist)` and written at `ooff + sum(idx * ost)`. Permutes, slices,
// expands, concat parts and shifts are all such copies.
struct EncStrided {
    i64 n;
    i64 rank;
    i64 ioff;
    i64 ooff;
    i64 dims[ENC_MAX_RANK];
    i64 ist[ENC_MAX_RANK];
    i64 ost[ENC_MAX_RANK];
};

#define ENC_COPY_AS(NAME, TO, TI, CVT)                                                  \
    extern "C" __global__ void NAME(TO* out, const TI* in, EncStrided s) {              \
        for (i64 e = (i64)blockIdx.x * blockDim.x + threadIdx.x; e < s.n;               \
             e += (i64)gridDim.x * blockDim.x) {                                        \
            i64 r = e, io = s.ioff, oo = s.ooff;                                        \
            for (i64 a = s.rank - 1; a >= 0; --a) {                                     \
                const i64 i = r % s.dims[a];                                            \
                r /= s.dims[a];                                                         \
                io += i * s.ist[a];                                                     \
                oo += i * s.ost[a];                                                     \
            }                                                                           \
            out[oo] = CVT(in[io]);                                                      \
        }                                                                               \
    }
#define ENC_SAME(x) (x)
#define ENC_COPY(NAME, T) ENC_COPY_AS(NAME, T, T, ENC_SAME)
ENC_COPY(enc_copy_b1, u8)
ENC_COPY(enc_copy_b2, unsigned short)
ENC_COPY(enc_copy_b4, unsigned int)
ENC_COPY(enc_copy_b8, u64)
ENC_COPY_AS(enc_copy_f32_to_bf16, enc_bf16, float, enc_to_bf16)
ENC_COPY_AS(enc_copy_bf16_to_f32, float, enc_bf16, enc_ld)

#define ENC_FILL(NAME, T)                                                               \
    extern "C" __global__ void NAME(T* out, T value, i64 n) {                           \
        for (i64 e = (i64)blockIdx.x * blockDim.x + threadIdx.x; e < n;                 \
             e += (i64)gridDim.x * blockDim.x)                                          \
            out[e] = value;                                                             \
    }
ENC_FILL(enc_fill_b1, u8)
ENC_FILL(enc_fill_b2, unsigned short)
ENC_FILL(enc_fill_b4, unsigned int)
ENC_FILL(enc_fill_b8, u64)

// Rows of `table [rows, row]` picked by `idx [n]`. An id out of range writes zeros and
// reports itself through `err` (err[0] = 1, err[1] = the id; first one wins), which the
// host checks after the run.
#define ENC_GATHER(NAME, T)                                                             \
    extern "C" __global__ void NAME(T* out, const T* table, const i64* idx, i64 n,      \
                                    i64 row, i64 rows, u64* err) {                      \
        for (i64 e = (i64)blockIdx.x * blockDim.x + threadIdx.x; e < n * row;           \
             e += (i64)gridDim.x * blockDim.x) {                                        \
            const i64 id = idx[e / row];                                                \
            if (id < 0 || id >= rows) {                                                 \
                if (atomicCAS(err, 0ULL, 1ULL) == 0ULL) err[1] = (u64)id;               \
                out[e] = (T)0;                                                          \
            } else {                                                                    \
                out[e] = table[id * row + e % row];                                     \
            }                                                                           \
        }                                                                               \
    }
ENC_GATHER(enc_gather_b1, u8)
ENC_GATHER(enc_gather_b2, unsigned short)
ENC_GATHER(enc_gather_b4, unsigned int)
ENC_GATHER(enc_gather_b8, u64)

// Reduction of `in [outer, n, inner]` over the middle axis with f64 accumulation, as the
// interpreter does; `op` 0 = sum, 1 = max. A block (`blockDim.y` a power of two) covers
// `blockDim.x` consecutive inner positions of one outer index (lanes along x read
// consecutive addresses) and one of `gridDim.y` contiguous parts of n, its rows along y;
// the rows combine in shared memory in a fixed tree, so results do not vary between runs.
// Parts let a reduction with few outputs (a gradient's sum of squares: [256000, 2304] over
// axis 0) use the whole GPU instead of one thread per output. With one part the result is
// stored in `out`; with more, each part's f64 partial goes to `part [parts, outer, inner]`
// and `enc_reduce_parts_*` combines them in part order.
#define ENC_COMBINE(op, acc, x) ((op) == 0 ? (acc) + (x) : ((x) > (acc) || (acc) != (acc) ? (x) : (acc)))
#define ENC_REDUCE(NAME, TO, TI, LOAD, STORE)                                           \
    extern "C" __global__ void NAME(TO* out, double* part, const TI* in, i64 outer,     \
                                    i64 n, i64 inner, int op) {                         \
        __shared__ double sh[256];                                                      \
        const double init = op == 0 ? 0.0 : -__longlong_as_double(0x7ff0000000000000LL); \
        const i64 tiles = (inner + blockDim.x - 1) / blockDim.x;                        \
        const i64 o = blockIdx.x / tiles;                                               \
        const i64 i = (i64)(blockIdx.x % tiles) * blockDim.x + threadIdx.x;             \
        const i64 chunk = (n + gridDim.y - 1) / gridDim.y;                              \
        const i64 k0 = (i64)blockIdx.y * chunk;                                         \
        const i64 k1 = k0 + chunk < n ? k0 + chunk : n;                                 \
        double acc = init;                                                              \
        if (i < inner) {                                                                \
            for (i64 k = k0 + threadIdx.y; k < k1; k += blockDim.y) {                   \
                const double x = LOAD(in[(o * n + k) * inner + i]);                     \
                acc = ENC_COMBINE(op, acc, x);                                          \
            }                                                                           \
        }                                                                               \
        const int t = threadIdx.y * blockDim.x + threadIdx.x;                           \
        sh[t] = acc;                                                                    \
        __syncthreads();                                                                \
        for (unsigned s = blockDim.y / 2; s > 0; s /= 2) {                              \
            if (threadIdx.y < s) sh[t] = ENC_COMBINE(op, sh[t], sh[t + s * blockDim.x]); \
            __syncthreads();                                                            \
        }                                                                               \
        if (threadIdx.y == 0 && i < inner) {                                            \
            if (gridDim.y == 1) out[o * inner + i] = STORE(sh[t]);                      \
            else part[((i64)blockIdx.y * outer + o) * inner + i] = sh[t];               \
        }                                                                               \
    }
#define ENC_REDUCE_PARTS(NAME, TO, STORE)                                               \
    extern "C" __global__ void NAME(TO* out, const double* part, i64 m, i64 parts,      \
                                    int op) {                                           \
        for (i64 e = (i64)blockIdx.x * blockDim.x + threadIdx.x; e < m;                 \
             e += (i64)gridDim.x * blockDim.x) {                                        \
            double acc = part[e];                                                       \
            for (i64 p = 1; p < parts; ++p) acc = ENC_COMBINE(op, acc, part[p * m + e]); \
            out[e] = STORE(acc);                                                        \
        }                                                                               \
    }
#define ENC_LOAD_F32(x) ((double)(x))
#define ENC_LOAD_BF16(x) ((double)enc_ld(x))
#define ENC_LOAD_I64(x) ((double)(x))
#define ENC_LOAD_U8(x) ((x) != 0 ? 1.0 : 0.0)
#define ENC_STORE_F32(x) ((float)(x))
#define ENC_STORE_I64(x) (enc_d2i(x))
#define ENC_STORE_U8(x) ((u8)((x) != 0.0))
ENC_REDUCE(enc_reduce_f32, float, float, ENC_LOAD_F32, ENC_STORE_F32)
ENC_REDUCE(enc_reduce_bf16, float, enc_bf16, ENC_LOAD_BF16, ENC_STORE_F32)
ENC_REDUCE(enc_reduce_i64, i64, i64, ENC_LOAD_I64, ENC_STORE_I64)
ENC_REDUCE(enc_reduce_u8, u8, u8, ENC_LOAD_U8, ENC_STORE_U8)
ENC_REDUCE_PARTS(enc_reduce_parts_f32, float, ENC_STORE_F32)
ENC_REDUCE_PARTS(enc_reduce_parts_i64, i64, ENC_STORE_I64)
ENC_REDUCE_PARTS(enc_reduce_parts_u8, u8, ENC_STORE_U8)

// A gather's gradient: rows of `src [n, row]` added into `out [rows, row]` (zeroed by the
// host before) at the rows `idx [n]` names, with f32 atomics, so the order of the
// additions (and the last bits) varies between runs. An id out of range adds nothing and
// is reported through `err` as by the gather.
#define ENC_SCATTER_ADD(NAME, TI)                                                       \
    extern "C" __global__ void NAME(float* out, const i64* idx, const TI* src, i64 n,   \
                                    i64 row, i64 rows, u64* err) {                      \
        for (i64 e = (i64)blockIdx.x * blockDim.x + threadIdx.x; e < n * row;           \
             e += (i64)gridDim.x * blockDim.x) {                                        \
            const i64 id = idx[e / row];                                                \
            if (id < 0 || id >= rows) {                                                 \
                if (atomicCAS(err, 0ULL, 1ULL) == 0ULL) err[1] = (u64)id;               \
            } else {                                                                    \
                atomicAdd(out + id * row + e % row, enc_ld(src[e]));                    \
            }                                                                           \
        }                                                                               \
    }
ENC_SCATTER_ADD(enc_scatter_add_f32, float)
ENC_SCATTER_ADD(enc_scatter_add_bf16, enc_bf16)

// Attention forward, flash style (online softmax, no score matrix in memory), with the
// semantics of the decomposition (compiler/src/decompose.rs): scores `q·k * scale`,
// softcap `tanh(s / cap) * cap` when cap > 0, keys outside the row's positional range or
// padded (`mask[b, j] == 0`) excluded, softmax, `p v`. A row that sees no key at all is
// uniform over all Tk keys (every score is f32::MIN there): the mean of the value rows.
//
// One warp per query row, `blockDim.x / 32` rows per block; grid (row blocks, Hq, B).
// Keys come in tiles of 32, one key per lane for the scores (K tile in shared memory,
// rows padded to D+1 floats against bank conflicts), then the tile's value rows take the
// same shared buffer and every lane accumulates its Dv/32 output columns from there.
// Dv <= 32 * ENC_ATTN_DV_LANE; shared memory: 32 * max(D + 1, Dv) + warps * D floats.
//
// `window` < 0: none (the host clamps windows wider than every distance); `causal`:
// i - W < j <= i; else `inclusive` ? |i-j| <= W : |i-j| < W.
//
// q, k and v are all f32 or all bf16 (`T`), the output f32 or bf16 (`O`); scores, the
// softmax and the accumulators are f32 either way.
#define ENC_ATTN_DV_LANE 8

__device__ __forceinline__ void enc_key_range(i64 i, i64 tk, int causal, i64 window,
                                              int inclusive, i64* lo, i64* hi) {
    i64 l, h;
    if (causal) {
        l = window < 0 ? 0 : i - window + 1;
        h = i + 1;
    } else if (window < 0) {
        l = 0;
        h = tk;
    } else if (inclusive) {
        l = i - window;
        h = i + window + 1;
    } else {
        l = i - window + 1;
        h = i + window;
    }
    l = l < 0 ? 0 : (l > tk ? tk : l);
    h = h < l ? l : (h > tk ? tk : h);
    *lo = l;
    *hi = h;
}

// A query row's score against key row `kr` (shared f32 or global T): q·k * scale, then the
// softcap when cap > 0, summed over c in order (both forward kernels give the same scores).
template <class K>
__device__ __forceinline__ float enc_score(const float* qs, const K* kr, int d, float scale,
                                           float cap) {
    float dot = 0.0f;
    for (int c = 0; c < d; ++c) dot += qs[c] * enc_ld(kr[c]);
    const float s = dot * scale;
    return cap > 0.0f ? tanhf(s / cap) * cap : s;
}

// One tile of a warp's online softmax: lane t holds key t's score `s` (`vis`: visible),
// `tmax` the tile's maximum (finite or NaN: the caller skips tiles with no visible key);
// rescales the running sum `l_sum` and output columns `acc` (lane + 32 e) to the new
// maximum `m` and adds the tile's value rows, row t at vrow + t * v_st (shared f32 or
// global T).
template <class V>
__device__ __forceinline__ void enc_softmax_tile(float s, bool vis, float tmax, int nt,
                                                 const V* vrow, i64 v_st, int dv, float& m,
                                                 float& l_sum, float* acc) {
    const int lane = threadIdx.x & 31;
    const float mn = fmaxf(m, tmax);
    const float corr = expf(m - mn);
    const float p = vis ? expf(s - mn) : 0.0f;
    l_sum = l_sum * corr + enc_warp_sum(p);
    for (int e = 0; e < ENC_ATTN_DV_LANE; ++e) acc[e] *= corr;
    for (int t = 0; t < nt; ++t) {
        const float pt = __shfl_sync(0xffffffffu, p, t);
        if (pt == 0.0f) continue;
        const V* vr = vrow + t * v_st;
        for (int e = 0; e < ENC_ATTN_DV_LANE; ++e) {
            const int c = lane + 32 * e;
            if (c < dv) acc[e] += pt * enc_ld(vr[c]);
        }
    }
    m = mn;
}

// Column c of the mean of all Tk value rows: the output of a row that sees no key (every
// score is f32::MIN in the decomposition, so its softmax is uniform), summed in f64.
template <class T>
__device__ __forceinline__ float enc_value_mean(const T* vbase, i64 v_st, i64 tk, i64 c) {
    double s = 0.0;
    for (i64 t = 0; t < tk; ++t) s += (double)enc_ld(vbase[t * v_st + c]);
    return tk > 0 ? (float)(s / (double)tk) : 0.0f;
}

template <class T, class O>
__device__ __forceinline__ void enc_attention(
    O* out, const T* q, const T* k, const T* v, const u8* mask,
    i64 hq, i64 hk, i64 tq, i64 tk, i64 d, i64 dv,
    i64 q_sb, i64 q_sh, i64 q_st, i64 k_sb, i64 k_sh, i64 k_st, i64 v_sb, i64 v_sh, i64 v_st,
    float scale, float cap, int causal, i64 window, int inclusive) {
    extern __shared__ float enc_smem[];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    const i64 b = blockIdx.z, h = blockIdx.y, kh = h / (hq / hk);
    const i64 i0 = (i64)blockIdx.x * nw, i = i0 + warp;
    const bool row_ok = i < tq;
    float* ks = enc_smem;
    float* qs = enc_smem + 32 * (d + 1 > dv ? d + 1 : dv) + warp * d;
    const T* qrow = q + b * q_sb + h * q_sh + i * q_st;
    const T* kbase = k + b * k_sb + kh * k_sh;
    const T* vbase = v + b * v_sb + kh * v_sh;
    O* orow = out + ((b * hq + h) * tq + i) * dv;
    if (row_ok)
        for (i64 c = lane; c < d; c += 32) qs[c] = enc_ld(qrow[c]);
    i64 lo = 0, hi = 0;
    if (row_ok) enc_key_range(i, tk, causal, window, inclusive, &lo, &hi);
    // The block's keys: the union of its rows' ranges.
    i64 jlo = tk, jhi = 0;
    for (int w = 0; w < nw && i0 + w < tq; ++w) {
        i64 l, u;
        enc_key_range(i0 + w, tk, causal, window, inclusive, &l, &u);
        if (l < u) {
            jlo = l < jlo ? l : jlo;
            jhi = u > jhi ? u : jhi;
        }
    }
    float m = -ENC_INF, l_sum = 0.0f;
    float acc[ENC_ATTN_DV_LANE];
    for (int e = 0; e < ENC_ATTN_DV_LANE; ++e) acc[e] = 0.0f;
    bool any = false;
    const int di = (int)d, dvi = (int)dv;
    for (i64 j0 = jlo; j0 < jhi; j0 += 32) {
        const int nt = (int)(jhi - j0 < 32 ? jhi - j0 : 32);
        __syncthreads();
        for (int x = threadIdx.x; x < 32 * di; x += blockDim.x) {
            const int t = x / di, c = x - t * di;
            ks[t * (di + 1) + c] = t < nt ? enc_ld(kbase[(j0 + t) * k_st + c]) : 0.0f;
        }
        __syncthreads();
        const i64 j = j0 + lane;
        const bool vis =
            row_ok && j >= lo && j < hi && (mask == 0 || mask[b * tk + j] != 0);
        const float s = vis ? enc_score(qs, ks + lane * (di + 1), di, scale, cap) : -ENC_INF;
        const float tmax = enc_warp_max(s);
        // The value tile replaces the key tile (every warp is done with the keys): rows
        // read from shared memory, not one dependent global load per key and lane.
        __syncthreads();
        for (int x = threadIdx.x; x < 32 * dvi; x += blockDim.x) {
            const int t = x / dvi, c = x - t * dvi;
            ks[x] = t < nt ? enc_ld(vbase[(j0 + t) * v_st + c]) : 0.0f;
        }
        __syncthreads();
        if (!row_ok || tmax == -ENC_INF) continue;
        any = true;
        enc_softmax_tile(s, vis, tmax, nt, (const float*)ks, (i64)dvi, dvi, m, l_sum, acc);
    }
    if (!row_ok) return;
    if (any) {
        const float inv = 1.0f / l_sum;
        for (int e = 0; e < ENC_ATTN_DV_LANE; ++e) {
            const i64 c = lane + 32 * e;
            if (c < dv) enc_st(orow + c, acc[e] * inv);
        }
    } else {
        for (int e = 0; e < ENC_ATTN_DV_LANE; ++e) {
            const i64 c = lane + 32 * e;
            if (c < dv) enc_st(orow + c, enc_value_mean(vbase, v_st, tk, c));
        }
    }
}

// The kernels of an attention forward (`FN`: enc_attention, enc_attention_split) per storage.
#define ENC_ATTENTION(NAME, FN, T, O)                                                   \
    extern "C" __global__ void NAME(                                                    \
        O* out, const T* q, const T* k, const T* v, const u8* mask, i64 hq, i64 hk,     \
        i64 tq, i64 tk, i64 d, i64 dv, i64 q_sb, i64 q_sh, i64 q_st, i64 k_sb,          \
        i64 k_sh, i64 k_st, i64 v_sb, i64 v_sh, i64 v_st, float scale, float cap,       \
        int causal, i64 window, int inclusive) {                                        \
        FN<T, O>(out, q, k, v, mask, hq, hk, tq, tk, d, dv, q_sb, q_sh, q_st, k_sb,     \
                 k_sh, k_st, v_sb, v_sh, v_st, scale, cap, causal, window, inclusive);  \
    }
ENC_ATTENTION(enc_attention_f32, enc_attention, float, float)
ENC_ATTENTION(enc_attention_bf16, enc_attention, enc_bf16, enc_bf16)
ENC_ATTENTION(enc_attention_bf16_f32, enc_attention, enc_bf16, float)

// Attention forward for grids too small to fill the GPU in rows (`launch::AttnForm`): a
// decode step has one query row per head, and one warp walking all of an encoder's keys
// alone is a long chain of dependent tiles. Here a block takes one query row and its
// warps take turns over the key tiles (warp w: tiles w, w + warps, ...), each with its
// own online softmax over the keys it saw; then `enc_attention_merge` combines them.
// The semantics, scores included, are enc_attention's; only the order of the sums
// differs. Keys are read from global memory (lane j scores key j of the tile), the value
// rows coalesced. Shared memory: D + 3 * warps + warps * Dv floats.

// The block's merge of its warps' softmax states (warp w: maximum ms[w], sum ls[w], output
// row accs[w * dv ..], whether it saw a key at all seen[w]) into the row `orow`:
// M = max of the seeing warps' maxima, out = sum_w acc_w e^(m_w - M) / sum_w l_w e^(m_w - M).
// A warp that saw no key adds nothing; `seen` rather than m_w > -inf tells them apart, so
// that NaN scores reach the output as in enc_attention. No warp saw one: uniform over all
// Tk keys, as enc_attention.
template <class T, class O>
__device__ __forceinline__ void enc_attention_merge(O* orow, const float* ms, const float* ls,
                                                    const float* accs, const float* seen,
                                                    int nw, const T* vbase, i64 v_st, i64 tk,
                                                    i64 dv) {
    bool any = false;
    float big = -ENC_INF;
    for (int w = 0; w < nw; ++w)
        if (seen[w] != 0.0f) {
            any = true;
            big = fmaxf(big, ms[w]);
        }
    if (!any) {
        for (i64 c = threadIdx.x; c < dv; c += blockDim.x)
            enc_st(orow + c, enc_value_mean(vbase, v_st, tk, c));
        return;
    }
    float total = 0.0f;
    for (int w = 0; w < nw; ++w)
        if (seen[w] != 0.0f) total += ls[w] * expf(ms[w] - big);
    for (i64 c = threadIdx.x; c < dv; c += blockDim.x) {
        float o = 0.0f;
        for (int w = 0; w < nw; ++w)
            if (seen[w] != 0.0f) o += accs[w * dv + c] * expf(ms[w] - big);
        enc_st(orow + c, o / total);
    }
}

template <class T, class O>
__device__ __forceinline__ void enc_attention_split(
    O* out, const T* q, const T* k, const T* v, const u8* mask,
    i64 hq, i64 hk, i64 tq, i64 tk, i64 d, i64 dv,
    i64 q_sb, i64 q_sh, i64 q_st, i64 k_sb, i64 k_sh, i64 k_st, i64 v_sb, i64 v_sh, i64 v_st,
    float scale, float cap, int causal, i64 window, int inclusive) {
    extern __shared__ float enc_smem[];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    const i64 b = blockIdx.z, h = blockIdx.y, kh = h / (hq / hk), i = blockIdx.x;
    float* qs = enc_smem;
    float* ms = qs + d;
    float* ls = ms + nw;
    float* seen = ls + nw;
    float* accs = seen + nw;
    const T* qrow = q + b * q_sb + h * q_sh + i * q_st;
    const T* kbase = k + b * k_sb + kh * k_sh;
    const T* vbase = v + b * v_sb + kh * v_sh;
    for (i64 c = threadIdx.x; c < d; c += blockDim.x) qs[c] = enc_ld(qrow[c]);
    __syncthreads();
    i64 lo, hi;
    enc_key_range(i, tk, causal, window, inclusive, &lo, &hi);
    float m = -ENC_INF, l_sum = 0.0f;
    float acc[ENC_ATTN_DV_LANE];
    for (int e = 0; e < ENC_ATTN_DV_LANE; ++e) acc[e] = 0.0f;
    bool any = false;
    const int di = (int)d, dvi = (int)dv;
    for (i64 j0 = lo + 32 * (i64)warp; j0 < hi; j0 += 32 * (i64)nw) {
        const int nt = (int)(hi - j0 < 32 ? hi - j0 : 32);
        const i64 j = j0 + lane;
        const bool vis = lane < nt && (mask == 0 || mask[b * tk + j] != 0);
        const float s = vis ? enc_score(qs, kbase + j * k_st, di, scale, cap) : -ENC_INF;
        const float tmax = enc_warp_max(s);
        if (tmax == -ENC_INF) continue;
        any = true;
        enc_softmax_tile(s, vis, tmax, nt, vbase + j0 * v_st, v_st, dvi, m, l_sum, acc);
    }
    if (lane == 0) {
        ms[warp] = m;
        ls[warp] = l_sum;
        seen[warp] = any ? 1.0f : 0.0f;
    }
    for (int e = 0; e < ENC_ATTN_DV_LANE; ++e) {
        const int c = lane + 32 * e;
        if (c < dvi) accs[warp * dvi + c] = acc[e];
    }
    __syncthreads();
    enc_attention_merge(out + ((b * hq + h) * tq + i) * dv, ms, ls, accs, seen, nw, vbase, v_st,
                        tk, dv);
}

ENC_ATTENTION(enc_attention_split_f32, enc_attention_split, float, float)
ENC_ATTENTION(enc_attention_split_bf16, enc_attention_split, enc_bf16, enc_bf16)
ENC_ATTENTION(enc_attention_split_bf16_f32, enc_attention_split, enc_bf16, float)

// Attention backward, flash style: the probabilities are recomputed from q·k, never
// stored. With x = q·k, s = x·scale or tanh(x·scale / cap)·cap, p the
// softmax of s over the row's visible keys (all Tk keys, uniformly, for a row that sees
// none), dp = dout·v and D_i = sum_j p_ij dp_ij:
//   ds = p (dp - D) · scale · (1 - tanh(x·scale / cap)^2 when softcapped)
//   dq_i = sum_j ds_ij k_j     dk_j = sum_i ds_ij q_i     dv_j = sum_i p_ij dout_i
// the semantics of the decomposition differentiated (`autodiff::attention_grads`), as the
// CPU kernel computes them (runtime/src/cpu/attention_grad.rs): masked keys of a row
// that sees some key get nothing; a row that sees none spreads over every key, and its
// score gradients reach q and k (autograd through HF's additive f32::MIN mask).
//
// Two kernels, one warp per row, no shared memory, lanes across the head dimension
// (column c = lane + 32 e, e < ENC_ATTN_DV_LANE: D and Dv <= 256):
// - `rows`: per query row, the softmax statistics (max, sum, D; sum 0 marks a row that
//   sees no key) into `stats` [B, Hq, Tq, 3] in one pass over the keys, then dq in a second
//   when `dq` is not null.
// - `keys`: per key row of a kv head, dk and dv (each when not null), summing over the
//   query rows of every query head of its group that see the key, from `stats`.
// Each writes only its own rows: no atomics, a deterministic order. q, k, v and dout are
// all f32 or all bf16 (`T`); the gradients and statistics are f32.

template <class T>
__device__ __forceinline__ float enc_warp_dot(const T* a, const T* b, i64 n) {
    float s = 0.0f;
    for (i64 c = threadIdx.x & 31; c < n; c += 32) s += enc_ld(a[c]) * enc_ld(b[c]);
    return enc_warp_sum(s);
}

// The capped score of x = q·k, and the factor its gradient takes through the cap.
__device__ __forceinline__ float enc_attn_score(float x, float scale, float cap, float* dcap) {
    if (cap > 0.0f) {
        const float t = tanhf(x * scale / cap);
        *dcap = 1.0f - t * t;
        return t * cap;
    }
    *dcap = 1.0f;
    return x * scale;
}

// The probability of key j in a query row with softmax max `m` and sum `l` (1/Tk in a row
// that sees no key), or -1 for a masked key of a row that sees some; `dcap` as above.
template <class T>
__device__ __forceinline__ float enc_attn_p(const T* qrow, const T* krow, i64 d, const u8* mask,
                                            i64 b, i64 tk, i64 j, bool uniform, float m,
                                            float l, float scale, float cap, float* dcap) {
    if (!uniform && mask != 0 && mask[b * tk + j] == 0) return -1.0f;
    const float s = enc_attn_score(enc_warp_dot(qrow, krow, d), scale, cap, dcap);
    return uniform ? 1.0f / (float)tk : expf(s - m) / l;
}

template <class T>
__device__ __forceinline__ void enc_attention_bwd_rows(
    float* stats, float* dq, const T* q, const T* k, const T* v, const T* dout,
    const u8* mask, i64 hq, i64 hk, i64 tq, i64 tk, i64 d, i64 dv, i64 q_sb, i64 q_sh,
    i64 q_st, i64 k_sb, i64 k_sh, i64 k_st, i64 v_sb, i64 v_sh, i64 v_st, i64 g_sb,
    i64 g_sh, i64 g_st, float scale, float cap, int causal, i64 window, int inclusive) {
    const int lane = threadIdx.x & 31, nw = blockDim.x >> 5;
    const i64 b = blockIdx.z, h = blockIdx.y, kh = h / (hq / hk);
    const i64 i = (i64)blockIdx.x * nw + (threadIdx.x >> 5);
    if (i >= tq || tk <= 0) return;
    const T* qrow = q + b * q_sb + h * q_sh + i * q_st;
    const T* grow = dout + b * g_sb + h * g_sh + i * g_st;
    const T* kbase = k + b * k_sb + kh * k_sh;
    const T* vbase = v + b * v_sb + kh * v_sh;
    i64 lo, hi;
    enc_key_range(i, tk, causal, window, inclusive, &lo, &hi);
    float dcap;
    // 1. The row's max and sum over its visible keys, and D = sum_j p_j dp_j on the way
    //    (rescaled with the running max, as the sum is; divided by it at the end).
    float m = -ENC_INF, l = 0.0f, dacc = 0.0f;
    for (i64 j = lo; j < hi; ++j) {
        if (mask != 0 && mask[b * tk + j] == 0) continue;
        const float s = enc_attn_score(enc_warp_dot(qrow, kbase + j * k_st, d), scale, cap, &dcap);
        const float dp = enc_warp_dot(grow, vbase + j * v_st, dv);
        const float mn = fmaxf(m, s), corr = expf(m - mn), e = expf(s - mn);
        l = l * corr + e;
        dacc = dacc * corr + e * dp;
        m = mn;
    }
    const bool uniform = l == 0.0f;
    float dsum = uniform ? 0.0f : dacc / l;
    if (uniform) {
        // 2. A row that sees no key: p = 1/Tk over every key.
        lo = 0;
        hi = tk;
        for (i64 j = 0; j < tk; ++j)
            dsum += enc_warp_dot(grow, vbase + j * v_st, dv) / (float)tk;
    }
    float* st = stats + ((b * hq + h) * tq + i) * 3;
    if (lane == 0) {
        st[0] = m;
        st[1] = l;
        st[2] = dsum;
    }
    if (dq == 0) return;
    // 3. dq = sum_j ds_j k_j.
    float acc[ENC_ATTN_DV_LANE];
    for (int e = 0; e < ENC_ATTN_DV_LANE; ++e) acc[e] = 0.0f;
    for (i64 j = lo; j < hi; ++j) {
        const float p = enc_attn_p(qrow, kbase + j * k_st, d, mask, b, tk, j, uniform, m, l,
                                   scale, cap, &dcap);
        if (p < 0.0f) continue;
        const float dp = enc_warp_dot(grow, vbase + j * v_st, dv);
        const float ds = p * (dp - dsum) * scale * dcap;
        const T* kr = kbase + j * k_st;
        for (int e = 0; e < ENC_ATTN_DV_LANE; ++e) {
            const i64 c = lane + 32 * e;
            if (c < d) acc[e] += ds * enc_ld(kr[c]);
        }
    }
    float* out = dq + ((b * hq + h) * tq + i) * d;
    for (int e = 0; e < ENC_ATTN_DV_LANE; ++e) {
        const i64 c = lane + 32 * e;
        if (c < d) out[c] = acc[e];
    }
}

template <class T>
__device__ __forceinline__ void enc_attention_bwd_keys(
    float* dk, float* dvo, const float* stats, const T* q, const T* k, const T* v,
    const T* dout, const u8* mask, i64 hq, i64 hk, i64 tq, i64 tk, i64 d, i64 dv, i64 q_sb,
    i64 q_sh, i64 q_st, i64 k_sb, i64 k_sh, i64 k_st, i64 v_sb, i64 v_sh, i64 v_st,
    i64 g_sb, i64 g_sh, i64 g_st, float scale, float cap, int causal, i64 window,
    int inclusive) {
    const int lane = threadIdx.x & 31, nw = blockDim.x >> 5;
    const i64 b = blockIdx.z, kh = blockIdx.y, r = hq / hk;
    const i64 j = (i64)blockIdx.x * nw + (threadIdx.x >> 5);
    if (j >= tk) return;
    const T* krow = k + b * k_sb + kh * k_sh + j * k_st;
    const T* vrow = v + b * v_sb + kh * v_sh + j * v_st;
    const bool kept = mask == 0 || mask[b * tk + j] != 0;
    float ak[ENC_ATTN_DV_LANE], av[ENC_ATTN_DV_LANE];
    for (int e = 0; e < ENC_ATTN_DV_LANE; ++e) ak[e] = av[e] = 0.0f;
    for (i64 hh = 0; hh < r; ++hh) {
        const i64 h = kh * r + hh;
        for (i64 i = 0; i < tq; ++i) {
            const float* st = stats + ((b * hq + h) * tq + i) * 3;
            const bool uniform = st[1] == 0.0f;
            if (!uniform) {
                i64 lo, hi;
                enc_key_range(i, tk, causal, window, inclusive, &lo, &hi);
                if (!kept || j < lo || j >= hi) continue;
            }
            const T* qrow = q + b * q_sb + h * q_sh + i * q_st;
            const T* grow = dout + b * g_sb + h * g_sh + i * g_st;
            float dcap;
            const float s = enc_attn_score(enc_warp_dot(qrow, krow, d), scale, cap, &dcap);
            const float p = uniform ? 1.0f / (float)tk : expf(s - st[0]) / st[1];
            const float dp = enc_warp_dot(grow, vrow, dv);
            const float ds = p * (dp - st[2]) * scale * dcap;
            for (int e = 0; e < ENC_ATTN_DV_LANE; ++e) {
                const i64 c = lane + 32 * e;
                if (c < d) ak[e] += ds * enc_ld(qrow[c]);
                if (c < dv) av[e] += p * enc_ld(grow[c]);
            }
        }
    }
    for (int e = 0; e < ENC_ATTN_DV_LANE; ++e) {
        const i64 c = lane + 32 * e;
        if (dk != 0 && c < d) dk[((b * hk + kh) * tk + j) * d + c] = ak[e];
        if (dvo != 0 && c < dv) dvo[((b * hk + kh) * tk + j) * dv + c] = av[e];
    }
}

#define ENC_ATTENTION_BWD_ROWS(NAME, T)                                                 \
    extern "C" __global__ void NAME(                                                    \
        float* stats, float* dq, const T* q, const T* k, const T* v, const T* dout,     \
        const u8* mask, i64 hq, i64 hk, i64 tq, i64 tk, i64 d, i64 dv, i64 q_sb,        \
        i64 q_sh, i64 q_st, i64 k_sb, i64 k_sh, i64 k_st, i64 v_sb, i64 v_sh, i64 v_st, \
        i64 g_sb, i64 g_sh, i64 g_st, float scale, float cap, int causal, i64 window,   \
        int inclusive) {                                                                \
        enc_attention_bwd_rows<T>(stats, dq, q, k, v, dout, mask, hq, hk, tq, tk, d, dv, \
                                  q_sb, q_sh, q_st, k_sb, k_sh, k_st, v_sb, v_sh, v_st,  \
                                  g_sb, g_sh, g_st, scale, cap, causal, window,          \
                                  inclusive);                                           \
    }
#define ENC_ATTENTION_BWD_KEYS(NAME, T)                                                 \
    extern "C" __global__ void NAME(                                                    \
        float* dk, float* dvo, const float* stats, const T* q, const T* k, const T* v,  \
        const T* dout, const u8* mask, i64 hq, i64 hk, i64 tq, i64 tk, i64 d, i64 dv,   \
        i64 q_sb, i64 q_sh, i64 q_st, i64 k_sb, i64 k_sh, i64 k_st, i64 v_sb,           \
        i64 v_sh, i64 v_st, i64 g_sb, i64 g_sh, i64 g_st, float scale, float cap,       \
        int causal, i64 window, int inclusive) {                                        \
        enc_attention_bwd_keys<T>(dk, dvo, stats, q, k, v, dout, mask, hq, hk, tq, tk,  \
                                  d, dv, q_sb, q_sh, q_st, k_sb, k_sh, k_st, v_sb,       \
                                  v_sh, v_st, g_sb, g_sh, g_st, scale, cap, causal,      \
                                  window, inclusive);                                   \
    }
ENC_ATTENTION_BWD_ROWS(enc_attention_bwd_rows_f32, float)
ENC_ATTENTION_BWD_ROWS(enc_attention_bwd_rows_bf16, enc_bf16)
ENC_ATTENTION_BWD_KEYS(enc_attention_bwd_keys_f32, float)
ENC_ATTENTION_BWD_KEYS(enc_attention_bwd_keys_bf16, enc_bf16)
