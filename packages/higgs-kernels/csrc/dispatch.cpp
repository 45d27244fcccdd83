// Picks the instruction set, converts activations, splits the work over the
// thread pool: matrix x vector for up to 64 rows, packed panels for more.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels.h"
#include "threadpool.h"

namespace hk {
namespace {

const Isa* choose_isa(const char* want) {
  std::string w = want ? want : "auto";
  if (w != "auto" && w != "generic" && w != "avx2" && w != "avx512")
    throw std::invalid_argument("unknown instruction set '" + w +
                                "' (avx512, avx2, generic or auto)");
#if defined(__x86_64__) || defined(_M_X64)
  __builtin_cpu_init();
  bool has_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                  __builtin_cpu_supports("f16c");
  bool has_avx512 = has_avx2 && __builtin_cpu_supports("avx512f") &&
                    __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
                    __builtin_cpu_supports("avx512vl") &&
                    __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512vnni");
  if (w == "avx512" && !has_avx512)
    throw std::invalid_argument("this CPU lacks AVX512-BF16 or AVX512-VNNI");
  if (w == "avx2" && !has_avx2) throw std::invalid_argument("this CPU lacks AVX2/FMA/F16C");
  if (w == "avx512" || (w == "auto" && has_avx512)) return &isa_avx512();
  if (w == "avx2" || (w == "auto" && has_avx2)) return &isa_avx2();
#else
  if (w == "avx2" || w == "avx512")
    throw std::invalid_argument("the " + w + " kernels exist only on x86-64");
#endif
  return &isa_generic();
}

const Isa*& current() {
  static const Isa* chosen = choose_isa(std::getenv("HIGGS_KERNELS_ISA"));
  return chosen;
}

// Conversions of whole activations, split over the pool when large.
template <class F>
void in_pieces(int64_t count, F&& f) {
  constexpr int64_t piece = 1 << 16;
  if (count <= piece) return f(0, count);
  parallel_for(int((count + piece - 1) / piece), [&](int t) {
    int64_t i0 = t * piece;
    f(i0, std::min(count, i0 + piece));
  });
}

void to_f32(const void* src, DType t, int64_t count, float* dst) {
  in_pieces(count, [&](int64_t i0, int64_t i1) {
    if (t == DType::BF16) {  // a loop the compiler vectorizes: a decode step's x
      const auto* h = static_cast<const uint16_t*>(src);
      for (int64_t i = i0; i < i1; ++i) dst[i] = bf16_to_f32(h[i]);
      return;
    }
    for (int64_t i = i0; i < i1; ++i) dst[i] = load_scalar(src, t, i);
  });
}

void from_f32(const float* src, int64_t count, void* dst, DType t) {
  auto* out = static_cast<uint16_t*>(dst);
  in_pieces(count, [&](int64_t i0, int64_t i1) {
    if (t == DType::BF16) {
      for (int64_t i = i0; i < i1; ++i) out[i] = f32_to_bf16(src[i]);
    } else {
      for (int64_t i = i0; i < i1; ++i) out[i] = f32_to_f16(src[i]);
    }
  });
}

constexpr int64_t KC = 256;  // depth of a packed panel (a multiple of every group size)
// Rows of x the matrix-vector kernels take; more are a matmul. Every row count a
// decode batch can have (serve and batch allow --max-batch 64) stays on them: they
// read W once for all rows, a row's result does not depend on the row count, and
// the prefill paths pack (and dequantize) W on every call, which a decode step's
// few rows do not earn back (one layer's q, k, gate and down with 16 bf16 rows on
// Zen 4: 21 ms as a matmul, 7 ms for 8 rows as matrix-vector).
constexpr int64_t kGemvRows = 64;
constexpr int64_t NC = 64;   // output columns per task in the prefill path

// Rows of W per matrix-vector task: a few tasks per thread so a late-waking
// thread does not hold up the rest; multiples of 8 so every task runs the
// widest tiles.
int64_t task_rows(int64_t N, int64_t align = 8) {
  const int threads = num_threads();
  int64_t rows = (N + 4 * threads - 1) / (4 * threads);
  return std::max<int64_t>(16, (rows + align - 1) / align * align);
}

void gemv_path(const Isa& isa, const Weight& w, const float* x, int m, float* y) {
  const int64_t N = w.N, K = w.K;
  const Isa& use = isa.gemv_supports(w) ? isa : isa_generic();
  std::vector<float> xsum;
  if (use.gemv_xsum(w)) {
    const int64_t groups = K / w.quant.group;
    xsum.resize(m * groups);
    for (int r = 0; r < m; ++r)
      for (int64_t g = 0; g < groups; ++g) {
        float s = 0;
        for (int64_t k = g * w.quant.group; k < (g + 1) * w.quant.group; ++k) s += x[r * K + k];
        xsum[r * groups + g] = s;
      }
  }
  std::vector<uint8_t> prepared;
  use.prepare(w, x, m, prepared);
  // Tasks of whole tiles: 16 rows of W (avx512's int8 tiles), and blocks of 24
  // when several x rows share them.
  const int64_t rows = task_rows(N, m >= 2 ? 48 : 16);
  const int tasks = int((N + rows - 1) / rows);
  const float* xs = xsum.empty() ? nullptr : xsum.data();
  parallel_for(tasks, [&](int t) {
    int64_t n0 = t * rows, n1 = std::min(N, n0 + rows);
    use.gemv(w, x, xs, prepared.data(), m, n0, n1, y, N);
  });
}

void gemm_path(const Isa& isa, const Weight& w, const float* x, int64_t m, float* y) {
  const int64_t N = w.N, K = w.K;
  const int64_t panels = (m + 5) / 6;
  // A in micro-panels: ap[p][k][i] = x[6p + i, k] (zero past m).
  std::vector<float> ap(panels * K * 6);
  parallel_for(int(panels), [&](int p) {
    float* dst = ap.data() + p * K * 6;
    for (int i = 0; i < 6; ++i) {
      int64_t row = p * 6 + i;
      if (row < m) {
        const float* src = x + row * K;
        for (int64_t k = 0; k < K; ++k) dst[k * 6 + i] = src[k];
      } else {
        for (int64_t k = 0; k < K; ++k) dst[k * 6 + i] = 0.0f;
      }
    }
  });
  const int tasks = int((N + NC - 1) / NC);
  parallel_for(tasks, [&](int t) {
    thread_local std::vector<float> bp;
    bp.resize(NC * KC);
    const int64_t n0 = t * NC, nc = std::min(NC, N - n0);
    for (int64_t k0 = 0; k0 < K; k0 += KC) {
      const int64_t kc = std::min(KC, K - k0);
      for (int64_t j = 0; j < nc; j += 16) isa.pack(w, n0 + j, k0, kc, bp.data() + j * kc);
      for (int64_t j = 0; j < nc; j += 16) {
        const int nr = int(std::min<int64_t>(16, nc - j));
        for (int64_t p = 0; p < panels; ++p) {
          const int mr = int(std::min<int64_t>(6, m - p * 6));
          isa.micro(ap.data() + p * K * 6 + k0 * 6, bp.data() + j * kc, kc,
                    y + p * 6 * N + n0 + j, N, mr, nr, k0 > 0);
        }
      }
    }
  });
}

}  // namespace

bool poison_outputs = false;

const Isa& isa() {
  return *current();
}

void set_isa(const char* name) {
  current() = choose_isa(name);
}

void linear(const Weight& weight, const void* x, DType xt, int64_t m, void* y, DType yt) {
  if (m <= 0 || weight.N <= 0) return;
  Weight w = weight;
  w.half_x = xt != DType::F32;
  const Isa& chosen = isa();
  std::vector<float> xbuf, ybuf;
  const float* xf = static_cast<const float*>(x);
  // bf16 x bf16 products are exact in fp32: the bf16 prefill loses nothing on bf16
  // weights; quantized ones are rounded to bf16, the activations' own precision.
  const bool bf16_gemm = m > kGemvRows && chosen.gemm_bf16 && xt == DType::BF16 &&
                         (w.quantized() || w.dtype == DType::BF16);
  // bf16 rows against bf16 W: x stays bf16, half the bytes of an fp32 copy, so
  // even down_proj's 8192 values fit in L1 beside the weight stream (an fp32 x
  // of 32 KB streamed that shape at ~21 GB/s, bf16 at ~26; other shapes alike).
  const bool bf16_gemv = m <= chosen.gemv_bf16_rows && chosen.gemv_bf16 &&
                         xt == DType::BF16 && !w.quantized() && w.dtype == DType::BF16;
  if (xt != DType::F32 && !bf16_gemm && !bf16_gemv) {
    xbuf.resize(m * w.K);
    to_f32(x, xt, m * w.K, xbuf.data());
    xf = xbuf.data();
  }
  float* yf = static_cast<float*>(y);
  if (yt != DType::F32) {
    ybuf.resize(m * w.N);
    yf = ybuf.data();
  }
  if (poison_outputs) {
    std::memset(y, 0xff, m * w.N * dtype_size(yt));  // NaN in every float format
    std::fill(yf, yf + m * w.N, std::numeric_limits<float>::quiet_NaN());
  }
  if (w.K == 0) {
    std::fill(yf, yf + m * w.N, 0.0f);
  } else if (bf16_gemm) {
    chosen.gemm_bf16(w, static_cast<const uint16_t*>(x), m, yf);
  } else if (bf16_gemv) {
    const int64_t rows = task_rows(w.N, m >= 2 ? 24 : 8);
    parallel_for(int((w.N + rows - 1) / rows), [&](int t) {
      const int64_t n0 = t * rows;
      chosen.gemv_bf16(w, static_cast<const uint16_t*>(x), int(m), n0, std::min(w.N, n0 + rows),
                       yf, w.N);
    });
  } else if (m <= kGemvRows) {
    gemv_path(chosen, w, xf, int(m), yf);
  } else {
    gemm_path(chosen, w, xf, m, yf);
  }
  if (yt != DType::F32) from_f32(yf, m * w.N, y, yt);
}

void swiglu(const void* g, const void* u, DType t, int64_t n, void* out) {
  const Isa& chosen = isa();
  if (poison_outputs) std::memset(out, 0xff, n * dtype_size(t));
  // A decode step's 8192 values take microseconds: split only prefill-sized work.
  constexpr int64_t piece = int64_t(1) << 16;
  if (n <= piece) return chosen.swiglu(g, u, t, n, out);
  const size_t item = dtype_size(t);
  parallel_for(int((n + piece - 1) / piece), [&](int p) {
    const int64_t i0 = p * piece, len = std::min(piece, n - i0);
    chosen.swiglu(static_cast<const char*>(g) + i0 * item, static_cast<const char*>(u) + i0 * item,
                  t, len, static_cast<char*>(out) + i0 * item);
  });
}

void rope(const void* x, DType t, int64_t rows, int64_t L, int64_t D, int64_t dims,
          const float* inv_freq, int64_t offset, float scale, void* out) {
  const int64_t half = dims / 2;
  // cos and sin per position, shared by every row (a decode step: 1 position,
  // 24 or 8 heads). The angle is rounded to fp32 as MLX rounds it.
  std::vector<float> cs(L * half * 2);
  for (int64_t l = 0; l < L; ++l) {
    const float pos = float(offset + l) * scale;
    for (int64_t i = 0; i < half; ++i) {
      const float theta = pos * inv_freq[i];
      cs[(l * half + i) * 2] = std::cos(theta);
      cs[(l * half + i) * 2 + 1] = std::sin(theta);
    }
  }
  if (poison_outputs) std::memset(out, 0xff, rows * L * D * dtype_size(t));
  auto load = [&](int64_t i) { return load_scalar(x, t, i); };
  auto store = [&](int64_t i, float v) { store_scalar(out, t, i, v); };
  auto run = [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      for (int64_t l = 0; l < L; ++l) {
        const int64_t base = (r * L + l) * D;
        const float* c = cs.data() + l * half * 2;
        for (int64_t i = 0; i < half; ++i) {
          const float a = load(base + i), b = load(base + half + i);
          store(base + i, a * c[2 * i] - b * c[2 * i + 1]);
          store(base + half + i, a * c[2 * i + 1] + b * c[2 * i]);
        }
        for (int64_t i = dims; i < D; ++i) store(base + i, load(base + i));
      }
    }
  };
  // A decode step's few rows take a microsecond or two: split only prefill work.
  if (rows * L * D <= (int64_t(1) << 16)) return run(0, rows);
  const int tasks = int(std::min<int64_t>(rows, 4 * num_threads()));
  parallel_for(tasks, [&](int k) { run(rows * k / tasks, rows * (k + 1) / tasks); });
}

double read_seconds(const void* p, size_t bytes) {
  const Isa& chosen = isa();
  constexpr size_t piece = size_t(4) << 20;
  const int tasks = int((bytes + piece - 1) / piece);
  std::vector<uint64_t> sink(tasks);
  auto start = std::chrono::steady_clock::now();
  parallel_for(tasks, [&](int t) {
    size_t off = size_t(t) * piece;
    size_t len = std::min(piece, bytes - off) / 256 * 256;
    sink[t] = chosen.read(static_cast<const char*>(p) + off, len);
  });
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  volatile uint64_t keep = 0;
  for (uint64_t v : sink) keep = keep + v;
  return seconds;
}

}  // namespace hk
