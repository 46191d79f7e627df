"""CUDA device helpers of the int4 decode GEMV (kernels/int4_gemv_source.py's SOURCE begins
with them).

Objects: DEVICE (CUDA C++): the types and the -D options' derived macros (MAGIC, ONES, BIAS
and MMA_TYPE of x's dtype, W_BITS / STEP_COLS of W's kind, PAIRED, NT, OUT_ROWS,
KV_BYTES, THREADS, SCALE_BYTES), the conversions (to_float, from_float, round_dt,
scale_value, pack, widen: 4 bytes of an 8-bit W to two A registers), the loads
(load_stream: W once, bypassing L1), the nibble and byte shuffles (nibbles, pair), the
mma.m16n8k16 and the PDL hooks (pdl_wait, pdl_launch_dependents).
"""
from __future__ import annotations

DEVICE = r"""
typedef unsigned int u32;
typedef unsigned short u16;
typedef unsigned long long u64;

#if IS_BF16
#define MAGIC 0x43004300u
#define ONES 0x3F803F80u
#define BIAS 128.0f
#define MMA_TYPE "bf16"
#else
#define MAGIC 0x64006400u
#define ONES 0x3C003C00u
#define BIAS 1024.0f
#define MMA_TYPE "f16"
#endif
#if W_KIND == 4
#define W_BITS 4
#define STEP_COLS 128
#else
#define W_BITS 8
#define STEP_COLS 64
#endif
#define PAIRED (GATED || ROPE)  // two tiles a block: gate and up, or a head's two halves
#define NT (PAIRED ? 2 : TILES)
#define OUT_ROWS (16 * TILES)
#if FP8_CACHE
#define KV_BYTES 1
#else
#define KV_BYTES 2
#endif
#define THREADS (WARPS * 32)

__device__ __forceinline__ float to_float(u16 h) {
#if IS_BF16
    return __uint_as_float(((u32)h) << 16);
#else
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
#endif
}

__device__ __forceinline__ u16 from_float(float f) {
    u16 h;
#if IS_BF16
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(f));
#else
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
#endif
    return h;
}

__device__ __forceinline__ float round_dt(float f) { return to_float(from_float(f)); }

#if SCALE_KIND == 1
#define SCALE_BYTES 4
#else
#define SCALE_BYTES 2
#endif

__device__ __forceinline__ float scale_value(const unsigned char* p) {
#if SCALE_KIND == 1
    return *(const float*)p;
#elif SCALE_KIND == 2
    return __uint_as_float(((u32)*(const u16*)p) << 16);
#else
    u16 h = *(const u16*)p;
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
#endif
}

__device__ __forceinline__ uint4 load_stream(const unsigned char* p) {
    uint4 v;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
        : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
    return v;
}

__device__ __forceinline__ u32 nibbles(u32 w, int j) {  // nibbles j and j + 4, + MAGIC
    u32 r;
    asm("lop3.b32 %0, %1, 0x000F000F, %2, 0xEA;" : "=r"(r) : "r"(w >> (4 * j)), "r"(MAGIC));
    return r;
}

__device__ __forceinline__ u32 pair(u32 a, u32 b, u32 sel) {
    u32 r;
    asm("prmt.b32 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(sel));
    return r;
}

__device__ __forceinline__ u32 pack(float lo, float hi) {  // two floats, exactly, as x's dtype
    u32 r;
#if IS_BF16
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
#else
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
#endif
    return r;
}

// 4 bytes of W (columns j..j+3) -> two A registers (j, j + 1) and (j + 2, j + 3), exact
__device__ __forceinline__ void widen(u32 w, u32& p0, u32& p1) {
#if W_KIND == 8  // int8: 0x4B000000 | (b + 128) is 2^23 + 128 + b in float32
    const u32 u = w ^ 0x80808080u;
    const float f0 = __uint_as_float(pair(u, 0x4B000000u, 0x7650u)) - 8388736.f;
    const float f1 = __uint_as_float(pair(u, 0x4B000000u, 0x7651u)) - 8388736.f;
    const float f2 = __uint_as_float(pair(u, 0x4B000000u, 0x7652u)) - 8388736.f;
    const float f3 = __uint_as_float(pair(u, 0x4B000000u, 0x7653u)) - 8388736.f;
    p0 = pack(f0, f1);
    p1 = pack(f2, f3);
#elif W_KIND == 9  // fp8 e4m3: the native conversion to f16x2 (sm_89), exact in bf16 too
    u32 h0, h1;
    asm("{.reg .b16 lo, hi;\n mov.b32 {lo, hi}, %2;\n cvt.rn.f16x2.e4m3x2 %0, lo;\n"
        " cvt.rn.f16x2.e4m3x2 %1, hi;}" : "=r"(h0), "=r"(h1) : "r"(w));
#if IS_BF16
    float f0, f1, f2, f3;
    asm("{.reg .b16 lo, hi;\n mov.b32 {lo, hi}, %2;\n cvt.f32.f16 %0, lo;\n cvt.f32.f16 %1, hi;}"
        : "=f"(f0), "=f"(f1) : "r"(h0));
    asm("{.reg .b16 lo, hi;\n mov.b32 {lo, hi}, %2;\n cvt.f32.f16 %0, lo;\n cvt.f32.f16 %1, hi;}"
        : "=f"(f2), "=f"(f3) : "r"(h1));
    p0 = pack(f0, f1);
    p1 = pack(f2, f3);
#else
    p0 = h0;
    p1 = h1;
#endif
#else
    p0 = p1 = w;
#endif
}

__device__ __forceinline__ void mma(float* c, u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32." MMA_TYPE "." MMA_TYPE ".f32 "
                 "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void pdl_wait() {
#if USE_PDL
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_launch_dependents() {
#if USE_PDL
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
"""
