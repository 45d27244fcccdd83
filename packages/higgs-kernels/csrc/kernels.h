// The CPU kernels, free of MLX headers so that each instruction set can live in
// its own translation unit compiled with its own flags.
//
// Every matrix here is row-major. A "weight" W is [N, K] (one output per row, as
// nn.Linear stores it) and the kernels compute y[m, n] = sum_k x[m, k] * W[n, k].
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace hk {

enum class DType : int { F32 = 0, BF16 = 1, F16 = 2 };

inline size_t dtype_size(DType t) {
  return t == DType::F32 ? 4 : 2;
}

// An affine group-quantized weight in MLX's layout: each row of N holds K values
// as a little-endian bit stream of `bits`-wide codes packed into uint32 words;
// value = scale[n, k / group] * code + bias[n, k / group].
struct QWeight {
  const uint32_t* codes;
  const void* scales;
  const void* biases;
  DType sdtype;  // dtype of scales and biases
  int group;
  int bits;
};

// A weight of either kind; `quant.codes != nullptr` selects the quantized one.
struct Weight {
  const void* data;
  DType dtype;
  QWeight quant;
  int64_t N, K;
  // Set by linear() for this call: the activations came in 16 bits (bf16 or f16),
  // so a kernel may round them to int8 per group (see kernels_avx2.cpp); float32
  // activations keep their precision.
  bool half_x = false;
  bool quantized() const {
    return quant.codes != nullptr;
  }
};

// Activations as the ISA's gemv wants them for this weight, prepared once per
// call (into `out`); the gemv receives out.data().
using PrepareFn = void (*)(const Weight& w, const float* x, int m, std::vector<uint8_t>& out);

// Matrix x vector for m <= 64 rows of activations (a decode batch). `x` is [m, K] fp32; writes
// y[r * ldy + n] for n in [n0, n1) as fp32. `xsum` holds, for quantized weights,
// the per-group sums of x ([m, K / group]); null otherwise. `prepared`: what the
// ISA's PrepareFn made of x.
using GemvFn = void (*)(const Weight& w, const float* x, const float* xsum, const void* prepared,
                        int m, int64_t n0, int64_t n1, float* y, int64_t ldy);

// Writes rows [n0, n0 + 16) (zero past N) and columns [k0, k0 + kc) of W as fp32
// in the packed layout the micro-kernel reads: dst[k * 16 + j] = W[n0 + j, k0 + k].
using PackFn = void (*)(const Weight& w, int64_t n0, int64_t k0, int64_t kc, float* dst);

// C[6, 16] (+)= A_panel[kc, 6]^T * B_panel[kc, 16], where A_panel[k * 6 + i] and
// B_panel[k * 16 + j]; C is written at c[i * ldc + j] for i < mr, j < nr only.
using MicroFn = void (*)(const float* a, const float* b, int64_t kc, float* c, int64_t ldc,
                         int mr, int nr, bool accumulate);

struct Isa {
  const char* name;
  PrepareFn prepare;
  GemvFn gemv;
  PackFn pack;
  MicroFn micro;
  // Does this ISA handle this weight in its gemv (else the portable one does)?
  bool (*gemv_supports)(const Weight& w);
  // Does its gemv read xsum (x's sum per group, which meets W's biases) for this
  // quantized weight? Paths that round x fold the sums into their prepared x.
  bool (*gemv_xsum)(const Weight& w);
  // Reads `bytes` (a multiple of 64) and returns a value that depends on all of
  // them: the benchmark's measure of read bandwidth.
  uint64_t (*read)(const void* p, size_t bytes);
  // Prefill for bf16 x ([m, K] x W [N, K] -> fp32 y [m, N]) with a bf16 or a
  // quantized W, whose values are rounded to bf16 first, when the ISA has a
  // faster way than fp32 panels; null otherwise.
  void (*gemm_bf16)(const Weight& w, const uint16_t* x, int64_t m, float* y);
  // m <= gemv_bf16_rows bf16 rows of x against rows [n0, n1) of a bf16 W, x kept in
  // bf16 (half the bytes of an fp32 copy, which would crowd the weight stream out of
  // L1 for a long x); writes y[r * ldy + n]. Or null.
  void (*gemv_bf16)(const Weight& w, const uint16_t* x, int m, int64_t n0, int64_t n1, float* y,
                    int64_t ldy);
  int gemv_bf16_rows;
  // out[i] = silu(g[i]) * u[i] for i < n, computed in fp32, stored in dtype t.
  void (*swiglu)(const void* g, const void* u, DType t, int64_t n, void* out);
};

const Isa& isa_generic();
#if defined(__x86_64__) || defined(_M_X64)
const Isa& isa_avx2();
const Isa& isa_avx512();  // isa_avx2 plus AVX512-BF16 and AVX512-VNNI kernels
#endif

// Chosen at first use: the best the CPU runs of avx512 (AVX2 + AVX512-BF16/VNNI),
// avx2 (AVX2 + FMA + F16C) and the portable kernels. HIGGS_KERNELS_ISA names one.
const Isa& isa();
void set_isa(const char* name);  // "avx512", "avx2", "generic" or "auto"

// Tests set this: outputs (and fp32 scratch) are filled with NaN before the
// kernels run, so an element they fail to write shows.
extern bool poison_outputs;

// The entry points: y = x @ W^T for x [m, K] of dtype xt, y [m, N] of dtype yt.
void linear(const Weight& w, const void* x, DType xt, int64_t m, void* y, DType yt);

// out = silu(g) * u elementwise over n values of dtype t, in fp32 inside.
void swiglu(const void* g, const void* u, DType t, int64_t n, void* out);

// Rotary embedding (rotate-half layout, as mx.fast.rope with traditional=False)
// of x [rows, L, D] (row-major) into out: position l of every row turns its
// first `dims` values by theta_i = (offset + l) * scale * inv_freq[i], i < dims / 2;
// values past `dims` are copied. fp32 inside.
void rope(const void* x, DType t, int64_t rows, int64_t L, int64_t D, int64_t dims,
          const float* inv_freq, int64_t offset, float scale, void* out);

// Seconds to read `bytes` at p with every thread of the pool (bytes split in
// 64-byte aligned pieces): the memory-bandwidth floor the benchmark compares to.
double read_seconds(const void* p, size_t bytes);

// Scalar conversions shared by all translation units.
inline float bf16_to_f32(uint16_t h) {
  uint32_t u = uint32_t(h) << 16;
  float f;
  __builtin_memcpy(&f, &u, 4);
  return f;
}

inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  __builtin_memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);  // NaN stays NaN
  u += 0x7fffu + ((u >> 16) & 1);  // round to nearest even
  return uint16_t(u >> 16);
}

float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);

inline float load_scalar(const void* p, DType t, int64_t i) {
  switch (t) {
    case DType::F32:
      return static_cast<const float*>(p)[i];
    case DType::BF16:
      return bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
    default:
      return f16_to_f32(static_cast<const uint16_t*>(p)[i]);
  }
}

inline void store_scalar(void* p, DType t, int64_t i, float v) {
  if (t == DType::F32) {
    static_cast<float*>(p)[i] = v;
  } else {
    static_cast<uint16_t*>(p)[i] = t == DType::BF16 ? f32_to_bf16(v) : f32_to_f16(v);
  }
}

}  // namespace hk
