"""CUDA source of the int4 decode GEMV (kernels/int4_gemv.py compiles it with NVRTC).

Objects: SOURCE (CUDA C++, no headers; its -D options: kernels/int4_gemv_options.py).

y [M, N] = x [M, K] @ W^T for an int4 W (quant/formats.py: uint8 [N, K / 2], column 2j in
byte j's low nibble, scale and offset [N, K / G] with G a multiple of 128) and at most 8
rows of bf16 or fp16 x, on the tensor cores' mma.m16n8k16 with W as the A operand (16 rows
of W a tile) and x^T as B (n: x's rows). Nothing is repacked: the MMA's K order is free as
long as W and x agree, so each lane takes 32 consecutive columns of a 128-column step
(lane c of a quad: columns 32c..32c+31, 16 bytes of each of its two rows), and a 32-bit
word of 8 nibbles becomes four bf16x2 A registers by one shift and one LOP3 each (the
magic number: 128.0 | q is 128 + q in bf16, 1024.0 | q in fp16): register j holds nibbles
j and j + 4, so x's B registers are its columns paired (j, j + 4) by one PRMT each.
Each step's 128 columns are one group (or part of one): its products of (BIAS + q) x are
summed by the MMA in float32 into a fresh tile and added to the accumulator as
s * sum((BIAS + q) x) + (o - BIAS s) * sum(x), the sums of x from an MMA of a tile of ones
with the same B registers; so no per-weight scale, and no instruction a weight beyond the
shift, the LOP3 and an eighth of an MMA.
W_KIND 8 / 9 (int8 / fp8 per output row, behind int4_gemv.ENABLED_KINDS): steps of 64
columns (still 16 bytes of each row a lane), each 4-byte word widened exactly to two A
registers of consecutive columns (int8: PRMT into 2^23's mantissa, a float subtract and a
packing conversion; fp8: the native e4m3x2 -> f16x2 conversion, through float32 for bf16),
so x's registers pair as they are loaded; the row's scale goes on the float32 sum after the
loop. SASS (sm_90): int8 3.55, fp8 2.79 instructions a weight (a byte each).
A tile is TILES times 16 output rows (GATED: 16 of gate and the same rows of up; ROPE: 16
dims of one head's first half and their partners in its second). A block takes one tile
(PERSIST: tiles blockIdx.x, + gridDim.x, ... below num_tiles, the next tile's first steps
loaded into the slots its last steps free while it finishes one) and its WARPS warps
split K's steps; each warp keeps UNROLL steps of W (and their scales) in flight in
registers, the first ones loaded before the PDL wait (W is written by no kernel). The
warps' tiles are summed in shared memory in a fixed order, then the epilogue: the pending
norm's 1/rms (NORM_IN), the bias, rounding to x's dtype, then silu(gate) * up (GATED), the
residual add that leaves the next norm pending (NORM_OUT: kernels/norm_epilogue.py's
PendingNorm), or the rotary embedding of query and key heads and the key and value heads'
KV-cache write (ROPE: kernels/rotary_kv_write.py's rope_epilogue), each rounded as the
Triton skinny GEMM rounds.
"""
from __future__ import annotations

from tessera.kernels.int4_gemv_device import DEVICE

SOURCE = DEVICE + r"""

#if ROPE
// the rows of part t (0: a head's first half, 1: its second) of tile `tile`: heads of
// 2 HALF rows, HALF / 16 tiles a head
__device__ __forceinline__ long paired_row(int t, int N, int tile) {
    const int head = tile / (HALF / 16), chunk = tile % (HALF / 16);
    return (long)head * 2 * HALF + chunk * 16 + t * HALF;
}
#else
// of tile `tile`, GATED: gate's rows, then up's N further; else TILES tiles of 16 rows
__device__ __forceinline__ long paired_row(int t, int N, int tile) {
    return GATED ? (long)t * N + tile * 16 : (long)tile * OUT_ROWS + 16 * t;
}
#endif

#if ROPE
__device__ __forceinline__ void store_kv(unsigned char* p, float v) {
#if FP8_CACHE  // saturated at +-448 (NaN stays NaN), rounded to nearest even
    u16 pair;
    asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(pair) : "f"(0.f), "f"(v));
    *p = (unsigned char)(pair & 0xFF);
#else
    *(u16*)p = from_float(v);
#endif
}

// dims (dim, dim + HALF) of one head for x's row n: a query head rotated into q, a key
// head rotated and a value head as it is into the cache at the row's slot; each product
// and sum rounded to the dtype (kernels/rotary_kv_write.py's rotate_pair)
__device__ __forceinline__ void rope_store(float x1, float x2, int r, int n, int tile, u16* q,
                                           const long long* positions, const float* cos_sin,
                                           const long long* slots, unsigned char* kv,
                                           long stride_kvs) {
    const int head = tile / (HALF / 16), dim = (tile % (HALF / 16)) * 16 + r;
    const float* cs = cos_sin + positions[n] * 2 * HALF + dim;
    const float cs_c = round_dt(cs[0]), cs_s = round_dt(cs[HALF]);
    const bool is_v = head >= NUM_Q + NUM_KV;
    if (!is_v) {
        const float p1 = round_dt(x1 * cs_c), p2 = round_dt(x2 * cs_s);
        const float p3 = round_dt(x2 * cs_c), p4 = round_dt(x1 * cs_s);
        x1 = round_dt(p1 - p2);
        x2 = round_dt(p3 + p4);
    }
    if (head < NUM_Q) {
        u16* dst = q + (long)n * NUM_Q * 2 * HALF + head * 2 * HALF + dim;
        dst[0] = from_float(x1);
        dst[HALF] = from_float(x2);
        return;
    }
    const int kv_head = head - NUM_Q - (is_v ? NUM_KV : 0);
    const long elem = (long)slots[n] * NUM_KV * 2 * HALF + kv_head * 2 * HALF + dim;
    unsigned char* dst = kv + (is_v ? stride_kvs : 0) + elem * KV_BYTES;
    store_kv(dst, x1);
    store_kv(dst + HALF * KV_BYTES, x2);
}
#endif

extern "C" __global__ void __launch_bounds__(THREADS, MIN_BLOCKS)
int4_gemv(const u16* __restrict__ x, int M, int K, int stride_x,
          const unsigned char* __restrict__ w, int N,
          const void* __restrict__ scale, const void* __restrict__ offset,
          const u16* __restrict__ bias, u16* __restrict__ y, int stride_y,
          const float* __restrict__ parts_in, int num_parts, float eps,
          const u16* __restrict__ residual, const u16* __restrict__ norm_w,
          u16* __restrict__ scaled, float* __restrict__ parts_out,
          const long long* __restrict__ positions, const float* __restrict__ cos_sin,
          const long long* __restrict__ slots, unsigned char* __restrict__ kv,
          long stride_kvs, int num_tiles) {
    __shared__ float red[WARPS][NT][16][8];
#if NORM_IN
    __shared__ float psum[THREADS / 8][8];
    __shared__ float rinv[8];
#endif
#if NORM_OUT
    __shared__ float sq[OUT_ROWS][8];
#endif
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, c = lane & 3;
    // K is the compile-time K_DIM (the launcher compiles a variant per K, so the argument
    // K equals it): each warp's SPW steps and every offset below are constants
    constexpr int STEPS = K_DIM / STEP_COLS, SPW = STEPS / WARPS;
    // ROW_BYTES (K_DIM * W_BITS / 8) comes from defines(), where a CPU test checks it
    constexpr long GROUPS = K_DIM / GROUP;
    static_assert(STEPS % WARPS == 0, "K's steps split evenly among the warps");
    const int s_lo = warp * SPW;
    int tile = blockIdx.x;  // PERSIST: then blockIdx.x + gridDim.x, ... below num_tiles
    const unsigned char* wp[NT];  // row g's 16 bytes of this lane in the warp's first step
    long sp[NT];  // byte offset of row g's scale (and offset) in the warp's first step
#pragma unroll
    for (int t = 0; t < NT; ++t) {
        const long row0 = paired_row(t, N, tile);
        wp[t] = w + (row0 + g) * ROW_BYTES + c * 16 + (long)s_lo * 64;
        sp[t] = ((row0 + g) * GROUPS + ((long)s_lo * STEP_COLS) / GROUP) * SCALE_BYTES;
    }
#if PERSIST
    // the next tile's first steps go into the slots its last steps free
    static_assert(SPW % UNROLL == 0, "a tile's steps fill the slots evenly");
#endif
    const unsigned char* scale_b = (const unsigned char*)scale;
    const unsigned char* offset_b = (const unsigned char*)offset;
    uint4 wb[UNROLL][NT][2];
    float sc[UNROLL][NT][2], of[UNROLL][NT][2];  // int4's scales and offsets a step
    float acc[NT][4];

// step s of the tile DROW rows past this one (each of its parts' rows move alike)
#define LOAD_FROM(u, s, DROW)                                                          \
    if ((s) < SPW) {                                                                   \
        _Pragma("unroll") for (int t = 0; t < NT; ++t) {                               \
            const unsigned char* p_ = wp[t] + (DROW) * ROW_BYTES + (s) * 64;           \
            wb[u][t][0] = load_stream(p_);                                             \
            wb[u][t][1] = load_stream(p_ + 8 * ROW_BYTES);                             \
            if (W_BITS != 4) continue;                                                 \
            const long gi = (((long)(s_lo + (s)) * 128) / GROUP - ((long)s_lo * 128) / GROUP) \
                            * SCALE_BYTES;                                             \
            const long off = sp[t] + (DROW) * GROUPS * SCALE_BYTES + gi;              \
            const long off8 = off + 8 * GROUPS * SCALE_BYTES;                          \
            sc[u][t][0] = scale_value(scale_b + off);                                  \
            sc[u][t][1] = scale_value(scale_b + off8);                                 \
            of[u][t][0] = scale_value(offset_b + off);                                 \
            of[u][t][1] = scale_value(offset_b + off8);                                \
        }                                                                              \
    }
#define LOAD_STEP(u, s) LOAD_FROM(u, s, 0L)

#pragma unroll
    for (int u = 0; u < UNROLL; ++u) LOAD_STEP(u, u)
    pdl_wait();
    // this lane's STEP_COLS / 4 columns of x's row g in the warp's first step
    const u16* xrow = x + (long)g * stride_x + c * (STEP_COLS / 4) + (long)s_lo * STEP_COLS;
    for (;;) {  // each tile of this block (one unless PERSIST)
#if PERSIST
        const int next = tile + gridDim.x;
        const bool more = next < num_tiles;
        const long drow = more ? paired_row(0, N, next) - paired_row(0, N, tile) : 0;
#else
        (void)num_tiles;
        constexpr bool more = false;
#endif
#pragma unroll
        for (int t = 0; t < NT; ++t) acc[t][0] = acc[t][1] = acc[t][2] = acc[t][3] = 0.f;
#pragma unroll
        for (int s0 = 0; s0 < SPW; s0 += UNROLL) {
#pragma unroll
            for (int u = 0; u < UNROLL; ++u) {
                const int s = s0 + u;
                if (s < SPW) {
#if W_BITS == 8  // a byte a weight: W's words widened, x's registers as they are
                    uint4 xv[2];
                    if (g < M) {
                        const uint4* xp = (const uint4*)(xrow + s * STEP_COLS);
                        xv[0] = xp[0];
                        xv[1] = xp[1];
                    } else {
                        xv[0] = xv[1] = make_uint4(0u, 0u, 0u, 0u);
                    }
                    const u32 xr[8] = {xv[0].x, xv[0].y, xv[0].z, xv[0].w,
                                       xv[1].x, xv[1].y, xv[1].z, xv[1].w};
#pragma unroll
                    for (int t = 0; t < NT; ++t) {
                        const uint4 a = wb[u][t][0], b = wb[u][t][1];
                        const u32 wg[4] = {a.x, a.y, a.z, a.w}, wh[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
                        for (int i = 0; i < 4; ++i) {
                            u32 g0, g1, h0, h1;
                            widen(wg[i], g0, g1);
                            widen(wh[i], h0, h1);
                            mma(acc[t], g0, h0, g1, h1, xr[2 * i], xr[2 * i + 1]);
                        }
                    }
#else
                    uint4 xv[4];
                    if (g < M) {
                        const uint4* xp = (const uint4*)(xrow + s * 128);
#pragma unroll
                        for (int i = 0; i < 4; ++i) xv[i] = xp[i];
                    } else {
#pragma unroll
                        for (int i = 0; i < 4; ++i) xv[i] = make_uint4(0u, 0u, 0u, 0u);
                    }
                    u32 bf[8][2];
#pragma unroll
                    for (int i = 0; i < 4; ++i) {
                        bf[2 * i][0] = pair(xv[i].x, xv[i].z, 0x5410u);
                        bf[2 * i][1] = pair(xv[i].x, xv[i].z, 0x7632u);
                        bf[2 * i + 1][0] = pair(xv[i].y, xv[i].w, 0x5410u);
                        bf[2 * i + 1][1] = pair(xv[i].y, xv[i].w, 0x7632u);
                    }
                    float xs[4] = {0.f, 0.f, 0.f, 0.f};  // [0], [1]: sums of x's rows 2c, 2c + 1
#pragma unroll
                    for (int j = 0; j < 8; ++j) mma(xs, ONES, ONES, ONES, ONES, bf[j][0], bf[j][1]);
#pragma unroll
                    for (int t = 0; t < NT; ++t) {
                        float part[4] = {0.f, 0.f, 0.f, 0.f};
                        const uint4 a = wb[u][t][0], b = wb[u][t][1];
                        const u32 wg[4] = {a.x, a.y, a.z, a.w}, wh[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
                        for (int i = 0; i < 4; ++i) {
                            mma(part, nibbles(wg[i], 0), nibbles(wh[i], 0), nibbles(wg[i], 1),
                                nibbles(wh[i], 1), bf[2 * i][0], bf[2 * i][1]);
                            mma(part, nibbles(wg[i], 2), nibbles(wh[i], 2), nibbles(wg[i], 3),
                                nibbles(wh[i], 3), bf[2 * i + 1][0], bf[2 * i + 1][1]);
                        }
                        const float s_g = sc[u][t][0], s_h = sc[u][t][1];
                        const float o_g = of[u][t][0] - BIAS * s_g, o_h = of[u][t][1] - BIAS * s_h;
                        acc[t][0] = fmaf(o_g, xs[0], fmaf(s_g, part[0], acc[t][0]));
                        acc[t][1] = fmaf(o_g, xs[1], fmaf(s_g, part[1], acc[t][1]));
                        acc[t][2] = fmaf(o_h, xs[0], fmaf(s_h, part[2], acc[t][2]));
                        acc[t][3] = fmaf(o_h, xs[1], fmaf(s_h, part[3], acc[t][3]));
                    }
#endif
                    if (s + UNROLL < SPW) {
                        LOAD_STEP(u, s + UNROLL)
                    }
#if PERSIST
                    else if (more) {
                        LOAD_FROM(u, s + UNROLL - SPW, drow)
                    }
#endif
                }
            }
        }
        if (!more) pdl_launch_dependents();
#pragma unroll
        for (int t = 0; t < NT; ++t) {
            red[warp][t][g][2 * c] = acc[t][0];
            red[warp][t][g][2 * c + 1] = acc[t][1];
            red[warp][t][g + 8][2 * c] = acc[t][2];
            red[warp][t][g + 8][2 * c + 1] = acc[t][3];
        }
        const int tid = threadIdx.x;
#if NORM_IN
        {  // the pending norm's partial sums of s^2 for x's row tid % 8, a stride each
            float total = 0.f;
            for (int p = tid >> 3; p < num_parts; p += THREADS / 8)
                total += parts_in[p * 16 + (tid & 7)];
            psum[tid >> 3][tid & 7] = total;
        }
#endif
        __syncthreads();
#if NORM_IN
        if (tid < 8) {  // 1 / rms of x's row tid, the partial sums added in a fixed order
            float total = 0.f;
            for (int i = 0; i < THREADS / 8; ++i) total += psum[i][tid];
            rinv[tid] = rsqrtf(total / (float)K + eps);
        }
        __syncthreads();
#endif
        for (int e = tid; e < OUT_ROWS * 8; e += THREADS) {
            const int r = e >> 3, n = e & 7, t = r >> 4, rr = r & 15;
            float v = 0.f, v2 = 0.f;
            (void)v2;
            for (int i = 0; i < WARPS; ++i) {
                v += red[i][PAIRED ? 0 : t][rr][n];
#if PAIRED
                v2 += red[i][1][rr][n];
#endif
            }
#if W_BITS == 8  // per output row, on the float32 sums
            const float* row_scale = (const float*)scale;
            v *= row_scale[PAIRED ? paired_row(0, N, tile) + rr : (long)tile * OUT_ROWS + r];
            v2 *= PAIRED ? row_scale[paired_row(1, N, tile) + rr] : 1.f;
#endif
#if NORM_IN
            v *= rinv[n];
            v2 *= rinv[n];
#endif
            const long row = PAIRED ? paired_row(0, N, tile) + r : (long)tile * OUT_ROWS + r;
#if HAS_BIAS
            v += to_float(bias[row]);
#if ROPE
            v2 += to_float(bias[row + HALF]);
#endif
#endif
            float out = round_dt(v);
            float s2 = 0.f;
            (void)s2;
            if (n < M) {
#if ROPE
                rope_store(round_dt(v), round_dt(v2), r, n, tile, y, positions, cos_sin, slots, kv,
                           stride_kvs);
#elif GATED
                const float act = round_dt(out / (1.f + __expf(-out)));
                y[(long)n * stride_y + row] = from_float(act * round_dt(v2));
#elif NORM_OUT
                const float s = round_dt(out + to_float(residual[(long)n * N + row]));
                y[(long)n * stride_y + row] = from_float(s);
                scaled[(long)n * N + row] = from_float(s * to_float(norm_w[row]));
                s2 = s * s;
#else
                y[(long)n * stride_y + row] = from_float(out);
#endif
            }
#if NORM_OUT
            sq[r][n] = s2;
#endif
        }
#if NORM_OUT
        __syncthreads();
        if (tid < 16) {  // this tile's sums of s^2 for rows 0..7 of x, zeros after
            float total = 0.f;
            if (tid < 8)
                for (int r = 0; r < OUT_ROWS; ++r) total += sq[r][tid];
            parts_out[(long)tile * 16 + tid] = total;
        }
#endif
#if PERSIST
        if (!more) break;
        __syncthreads();  // red, psum and sq are the next tile's
        tile = next;
#pragma unroll
        for (int t = 0; t < NT; ++t) {
            wp[t] += drow * ROW_BYTES;
            sp[t] += drow * GROUPS * SCALE_BYTES;
        }
#else
        break;
#endif
    }
}
"""
