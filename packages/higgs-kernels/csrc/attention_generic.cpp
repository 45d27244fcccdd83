// Portable attention kernels: one lane of plain C++ (the compiler vectorises
// what it can). Any head dimension; the reference the SIMD kernels match.
#include "attention_impl.h"

namespace hk {
namespace {

struct Scalar {
  using V = float;
  static constexpr int W = 1;
  static constexpr int DECODE_ROWS = 4;
  static constexpr int ACC_REGS = 16;
  static constexpr int MR = 4, NV = 4, MR2 = 4, NV2 = 4;

  static V zero() { return 0.0f; }
  static V set1(float x) { return x; }
  static V load(const float* p) { return *p; }
  static void store(float* p, V v) { *p = v; }
  static V add(V a, V b) { return a + b; }
  static V sub(V a, V b) { return a - b; }
  static V mul(V a, V b) { return a * b; }
  static V max(V a, V b) { return a > b ? a : b; }
  static V fma(V a, V b, V c) { return a * b + c; }
  static float hsum(V v) { return v; }
  static float hmax(V v) { return v; }
  static void hsum4(V a, V b, V c, V d, float* out) {
    out[0] = a;
    out[1] = b;
    out[2] = c;
    out[3] = d;
  }
  static V exp2(V x) { return x < -126.0f ? 0.0f : std::exp2(x); }
  template <DType DT>
  static V load_as(const void* p, int64_t i) {
    return load_scalar(p, DT, i);
  }
};

}  // namespace

const AttnKernels& attn_generic() {
  using K = attn::Kernels<Scalar>;
  static const AttnKernels kernels{"generic", K::supports, K::decode, K::prefill};
  return kernels;
}

}  // namespace hk
