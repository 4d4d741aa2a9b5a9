// encdecc CUDA prelude: helpers shared by the generated loop kernels and the library
// kernels. Semantics follow the reference interpreter (runtime/src/interp.rs): i64
// arithmetic wraps, integer division by 0 is 0, f32 -> i64 casts saturate (NaN -> 0).

typedef long long i64;
typedef unsigned long long u64;
typedef unsigned char u8;

#define ENC_INF __int_as_float(0x7f800000)
#define ENC_I64_MIN (-9223372036854775807LL - 1)
#define ENC_I64_MAX 9223372036854775807LL

__device__ __forceinline__ i64 enc_iadd(i64 a, i64 b) { return (i64)((u64)a + (u64)b); }
__device__ __forceinline__ i64 enc_isub(i64 a, i64 b) { return (i64)((u64)a - (u64)b); }
__device__ __forceinline__ i64 enc_imul(i64 a, i64 b) { return (i64)((u64)a * (u64)b); }
__device__ __forceinline__ i64 enc_ineg(i64 a) { return (i64)(0ULL - (u64)a); }
__device__ __forceinline__ i64 enc_iabs(i64 a) { return a < 0 ? enc_ineg(a) : a; }
__device__ __forceinline__ i64 enc_imax(i64 a, i64 b) { return a > b ? a : b; }
__device__ __forceinline__ i64 enc_imin(i64 a, i64 b) { return a < b ? a : b; }

// `if b == 0 { 0 } else { a.wrapping_div(b) }`
__device__ __forceinline__ i64 enc_idiv(i64 a, i64 b) {
    if (b == 0) return 0;
    if (b == -1) return enc_ineg(a);
    return a / b;
}

// `a.wrapping_pow(b.clamp(0, u32::MAX))`, by squaring.
__device__ __forceinline__ i64 enc_ipow(i64 a, i64 b) {
    u64 e = b < 0 ? 0ULL : (b > 4294967295LL ? 4294967295ULL : (u64)b);
    u64 base = (u64)a, acc = 1ULL;
    while (e != 0ULL) {
        if (e & 1ULL) acc *= base;
        base *= base;
        e >>= 1;
    }
    return (i64)acc;
}

// Rust's `x as i64`: saturating, NaN -> 0.
__device__ __forceinline__ i64 enc_f2i(float x) {
    if (x != x) return 0;
    if (x >= 9223372036854775808.0f) return ENC_I64_MAX;
    if (x <= -9223372036854775808.0f) return ENC_I64_MIN;
    return (i64)x;
}

__device__ __forceinline__ i64 enc_d2i(double x) {
    if (x != x) return 0;
    if (x >= 9223372036854775808.0) return ENC_I64_MAX;
    if (x <= -9223372036854775808.0) return ENC_I64_MIN;
    return (i64)x;
}

__device__ __forceinline__ float enc_sum(float a, float b) { return a + b; }
__device__ __forceinline__ float enc_max(float a, float b) { return fmaxf(a, b); }

// Folds `v` over the blockDim.x threads of one row (threadIdx.y picks the row); every
// thread of the row gets the result. Every thread of the block must call it (it
// synchronises when a row spans several warps; blockDim.x is 32·2^k).
#define ENC_ROW_REDUCE(NAME, OP)                                                        \
    __device__ __forceinline__ float NAME(float v) {                                   \
        for (int o = 16; o > 0; o >>= 1) v = OP(v, __shfl_xor_sync(0xffffffffu, v, o)); \
        if (blockDim.x > 32) {                                                          \
            __shared__ float part[32];                                                  \
            const int nw = blockDim.x >> 5;                                             \
            __syncthreads();                                                            \
            if ((threadIdx.x & 31) == 0) part[threadIdx.y * nw + (threadIdx.x >> 5)] = v; \
            __syncthreads();                                                            \
            v = part[threadIdx.y * nw];                                                 \
            for (int w = 1; w < nw; ++w) v = OP(v, part[threadIdx.y * nw + w]);         \
        }                                                                               \
        return v;                                                                       \
    }
ENC_ROW_REDUCE(enc_row_sum, enc_sum)
ENC_ROW_REDUCE(enc_row_max, enc_max)

__device__ __forceinline__ float enc_warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float enc_warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// bf16 storage: the upper 16 bits of an f32 (the layout of __nv_bfloat16 and of cuBLAS's
// CUDA_R_16BF), defined here so that NVRTC needs no headers. Loads widen exactly; stores
// round to nearest even (as __float2bfloat16_rn), NaN stays NaN, except that a finite
// value never rounds to infinity: it saturates at +-bf16 max. The IR's masks add f32::MIN
// as a finite minus infinity (a row with no visible key is uniform, not NaN), and that
// must survive bf16 storage. Arithmetic is f32.
struct enc_bf16 {
    unsigned short bits;
};
__device__ __forceinline__ float enc_ld(float x) { return x; }
__device__ __forceinline__ float enc_ld(enc_bf16 x) { return __uint_as_float((unsigned)x.bits << 16); }
__device__ __forceinline__ enc_bf16 enc_to_bf16(float f) {
    unsigned u = __float_as_uint(f);
    enc_bf16 r;
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        r.bits = (unsigned short)((u >> 16) | 0x40u);
    } else {
        const bool finite = (u & 0x7fffffffu) < 0x7f800000u;
        u += 0x7fffu + ((u >> 16) & 1u);
        r.bits = (unsigned short)(u >> 16);
        if (finite && (r.bits & 0x7fffu) == 0x7f80u) r.bits -= 1;
    }
    return r;
}
__device__ __forceinline__ void enc_st(float* p, float v) { *p = v; }
__device__ __forceinline__ void enc_st(enc_bf16* p, float v) { *p = enc_to_bf16(v); }
