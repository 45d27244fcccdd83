// Portable kernels: plain C++ that any compiler vectorises a little. They define
// the results the SIMD kernels must reproduce, and run wherever those cannot.
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels.h"

namespace hk {

float f16_to_f32(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t man = h & 0x3ff;
  float f;
  if (exp == 0) {
    f = std::ldexp(float(man), -24);  // zero or subnormal
    return sign ? -f : f;
  }
  uint32_t u = exp == 31 ? sign | 0x7f800000u | (man << 13) : sign | ((exp + 112) << 23) | (man << 13);
  std::memcpy(&f, &u, 4);
  return f;
}

uint16_t f32_to_f16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  uint16_t sign = uint16_t((u >> 16) & 0x8000);
  uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return sign | 0x7e00;  // NaN
  if (a >= 0x477ff000u) return sign | 0x7c00;  // rounds to infinity
  if (a < 0x38800000u) {
    // Subnormal (or zero): round |f| * 2^24 to an integer, nearest even.
    float m = std::nearbyint(std::fabs(f) * 16777216.0f);
    return sign | uint16_t(m);
  }
  a += 0xfffu + ((a >> 13) & 1) - (uint32_t(112) << 23);
  return sign | uint16_t(a >> 13);
}

namespace {

// The code of value k in a quantized row (little-endian bit stream).
inline uint32_t code_at(const uint32_t* row, int64_t k, int bits) {
  int64_t bit = k * bits;
  int64_t word = bit >> 5;
  int off = int(bit & 31);
  uint64_t pair = row[word];
  if (off + bits > 32) pair |= uint64_t(row[word + 1]) << 32;
  return uint32_t(pair >> off) & ((1u << bits) - 1);
}

// Row n of W, columns [k0, k0 + kc), as fp32.
void row_f32(const Weight& w, int64_t n, int64_t k0, int64_t kc, float* out) {
  if (w.quantized()) {
    const QWeight& q = w.quant;
    const uint32_t* row = q.codes + n * (w.K * q.bits / 32);
    int64_t groups = w.K / q.group;
    for (int64_t k = k0; k < k0 + kc; ++k) {
      int64_t g = n * groups + k / q.group;
      float s = load_scalar(q.scales, q.sdtype, g);
      float b = load_scalar(q.biases, q.sdtype, g);
      out[k - k0] = s * float(code_at(row, k, q.bits)) + b;
    }
    return;
  }
  for (int64_t k = 0; k < kc; ++k) out[k] = load_scalar(w.data, w.dtype, n * w.K + k0 + k);
}

void prepare(const Weight&, const float*, int, std::vector<uint8_t>&) {}

void gemv(const Weight& w, const float* x, const float* xsum, const void*, int m, int64_t n0,
          int64_t n1, float* y, int64_t ldy) {
  const int64_t K = w.K;
  std::vector<float> codes(K);
  for (int64_t n = n0; n < n1; ++n) {
    if (!w.quantized()) {
      row_f32(w, n, 0, K, codes.data());
      for (int r = 0; r < m; ++r) {
        const float* xr = x + r * K;
        float s = 0;
        for (int64_t k = 0; k < K; ++k) s += xr[k] * codes[k];
        y[r * ldy + n] = s;
      }
      continue;
    }
    // Quantized: sum_g scale_g * (codes . x)_g + bias_g * sum_g(x).
    const QWeight& q = w.quant;
    const uint32_t* row = q.codes + n * (K * q.bits / 32);
    for (int64_t k = 0; k < K; ++k) codes[k] = float(code_at(row, k, q.bits));
    const int64_t groups = K / q.group;
    for (int r = 0; r < m; ++r) {
      const float* xr = x + r * K;
      float total = 0;
      for (int64_t g = 0; g < groups; ++g) {
        float dot = 0;
        for (int64_t k = g * q.group; k < (g + 1) * q.group; ++k) dot += xr[k] * codes[k];
        float s = load_scalar(q.scales, q.sdtype, n * groups + g);
        float b = load_scalar(q.biases, q.sdtype, n * groups + g);
        total += s * dot + b * xsum[r * groups + g];
      }
      y[r * ldy + n] = total;
    }
  }
}

void pack(const Weight& w, int64_t n0, int64_t k0, int64_t kc, float* dst) {
  float row[256];
  for (int j = 0; j < 16; ++j) {
    int64_t n = n0 + j;
    for (int64_t k = 0; k < kc; k += 256) {
      int64_t len = kc - k < 256 ? kc - k : 256;
      if (n < w.N) {
        row_f32(w, n, k0 + k, len, row);
      } else {
        std::memset(row, 0, sizeof(float) * len);
      }
      for (int64_t i = 0; i < len; ++i) dst[(k + i) * 16 + j] = row[i];
    }
  }
}

void micro(const float* a, const float* b, int64_t kc, float* c, int64_t ldc, int mr, int nr,
           bool accumulate) {
  float acc[6][16] = {};
  for (int64_t k = 0; k < kc; ++k) {
    for (int i = 0; i < 6; ++i) {
      float av = a[k * 6 + i];
      for (int j = 0; j < 16; ++j) acc[i][j] += av * b[k * 16 + j];
    }
  }
  for (int i = 0; i < mr; ++i) {
    for (int j = 0; j < nr; ++j) {
      c[i * ldc + j] = accumulate ? c[i * ldc + j] + acc[i][j] : acc[i][j];
    }
  }
}

bool uses_xsum(const Weight& w) {
  return w.quantized();
}

bool supports_all(const Weight&) {
  return true;
}

uint64_t read(const void* p, size_t bytes) {
  const uint64_t* v = static_cast<const uint64_t*>(p);
  uint64_t a = 0, b = 0, c = 0, d = 0;
  for (size_t i = 0; i < bytes / 8; i += 4) {
    a += v[i];
    b ^= v[i + 1];
    c += v[i + 2];
    d ^= v[i + 3];
  }
  return a + b + c + d;
}

void swiglu_generic(const void* g, const void* u, DType t, int64_t n, void* out) {
  for (int64_t i = 0; i < n; ++i) {
    const float x = load_scalar(g, t, i);
    store_scalar(out, t, i, x / (1.0f + std::exp(-x)) * load_scalar(u, t, i));
  }
}

}  // namespace

const Isa& isa_generic() {
  static const Isa isa{"generic", prepare, gemv,    pack,    micro, supports_all,
                       uses_xsum, read,    nullptr, nullptr, 0,     swiglu_generic};
  return isa;
}

}  // namespace hk
