// AVX2 + FMA + F16C kernels (x86-64). Built with -mavx2 -mfma -mf16c for this
// file only; isa() calls in here only after checking the CPU at run time.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "kernels.h"


namespace hk {
namespace {

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline float hmax(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Eight consecutive weights as fp32.
template <DType T>
inline __m256 load8(const void* base, int64_t i) {
  if constexpr (T == DType::F32) {
    return _mm256_loadu_ps(static_cast<const float*>(base) + i);
  } else {
    __m128i h = _mm_loadu_si128(
        reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(base) + i));
    if constexpr (T == DType::BF16) {
      // bf16 is the top half of an fp32: widen and shift.
      return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    } else {
      return _mm256_cvtph_ps(h);
    }
  }
}

// One bf16 row of x against bf16 rows of W, x read as bf16 (half the bytes of
// an fp32 copy, so a long x still fits in L1 beside the weight stream). Each row
// of W sums in the order of dense_tile below (lane l takes k = l mod 8, in turn;
// then hsum), so a row of a batched call gets exactly what it gets alone: NB rows
// of W at a time hide the one accumulator's FMA latency.
template <int NB>
inline void gemv_bf16_rows(const uint16_t* W, int64_t K, const uint16_t* x, int64_t n,
                           float* y) {
  __m256 acc[NB];
  for (int j = 0; j < NB; ++j) acc[j] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    const __m256 xv = load8<DType::BF16>(x, k);
    for (int j = 0; j < NB; ++j)
      acc[j] = _mm256_fmadd_ps(xv, load8<DType::BF16>(W, (n + j) * K + k), acc[j]);
  }
  for (int j = 0; j < NB; ++j) {
    float s = hsum(acc[j]);
    for (int64_t t = k; t < K; ++t) s += bf16_to_f32(x[t]) * bf16_to_f32(W[(n + j) * K + t]);
    y[n + j] = s;
  }
}

// One row (gemv_bf16_rows = 1): more rows take dense_multi on an fp32 copy.
void gemv_bf16(const Weight& w, const uint16_t* x, int, int64_t n0, int64_t n1, float* y,
               int64_t) {
  constexpr int NB = 8;
  const auto* W = static_cast<const uint16_t*>(w.data);
  int64_t n = n0;
  for (; n + NB <= n1; n += NB) gemv_bf16_rows<NB>(W, w.K, x, n, y);
  for (; n < n1; ++n) gemv_bf16_rows<1>(W, w.K, x, n, y);
}

// ---- dense weights, any number of rows of x: register tiles ----
//
// A tile is RT (<= 4) rows of x by NB rows of W, RT * NB fp32 accumulators,
// looping over the x rows inside each k step so that the NB rows of W (as
// fp32) stay in registers. The rows of W come in blocks of kBlockRows, read
// from memory once and from cache again for every group of four x rows. Every
// (x row, W row) pair sums in the same order whatever tile it is in, so a
// row's result does not depend on the other rows of the call.

constexpr int64_t kBlockRows = 24;  // a multiple of every tile's NB

// A tile takes columns [k0, k1) of W and x (rows at stride K) and adds its sums
// into y when `add`. Eight k at a time: each row of W widened once (one register
// per row, so a 4 x 3 tile fits beside its 12 accumulators), every accumulator
// one FMA per step. (For bf16 W, sixteen k per step from one 32-byte load needs
// two registers per row and chains two FMAs per accumulator; it measured 1.2-1.3x
// slower at 8 rows on Zen 3. So did freeing W's bf16 pairs with one shift or one
// mask per eight values, x reordered to match: 1.15x slower.)
template <DType T, int RT, int NB>
inline void dense_tile(const void* W, int64_t K, int64_t k0, int64_t k1, const float* x,
                       int64_t n, float* y, int64_t ldy, bool add) {
  __m256 acc[RT][NB];
  for (int r = 0; r < RT; ++r)
    for (int j = 0; j < NB; ++j) acc[r][j] = _mm256_setzero_ps();
  // The next tile's rows of W, a cache line of each per line of these: rows of a few
  // KB are too short for the hardware prefetcher to get ahead of (one layer's shapes on
  // one thread: 8 rows of x ~1.06x, 4 rows ~1.15x). Past W's end a prefetch does nothing.
  constexpr int64_t SIZE = T == DType::F32 ? 4 : 2, LINE = 64 / SIZE;
  const char* next = static_cast<const char*>(W) + (n + NB) * K * SIZE;
  int64_t k = k0;
  for (; k + 8 <= k1; k += 8) {
    if (k % LINE == 0)
      for (int j = 0; j < NB; ++j) _mm_prefetch(next + (j * K + k) * SIZE, _MM_HINT_T1);
    __m256 wv[NB];
    for (int j = 0; j < NB; ++j) wv[j] = load8<T>(W, (n + j) * K + k);
    for (int r = 0; r < RT; ++r) {
      const __m256 xv = _mm256_loadu_ps(x + r * K + k);
      for (int j = 0; j < NB; ++j) acc[r][j] = _mm256_fmadd_ps(xv, wv[j], acc[r][j]);
    }
  }
  for (int r = 0; r < RT; ++r)
    for (int j = 0; j < NB; ++j) {
      float s = hsum(acc[r][j]);
      for (int64_t t = k; t < k1; ++t) s += x[r * K + t] * load_scalar(W, T, (n + j) * K + t);
      float& out = y[r * ldy + n + j];
      out = add ? out + s : s;
    }
}

// Tiles of RT x rows over W rows [n0, n1): NB at a time, single rows at the end.
template <DType T, int RT>
inline void dense_group(const Weight& w, int64_t k0, int64_t k1, const float* x, int64_t n0,
                        int64_t n1, float* y, int64_t ldy, bool add) {
  // Registers: RT * NB accumulators + NB weights + one x, at most 16.
  constexpr int NB = RT >= 3 ? 3 : RT == 2 ? 4 : 6;
  int64_t n = n0;
  for (; n + NB <= n1; n += NB) dense_tile<T, RT, NB>(w.data, w.K, k0, k1, x, n, y, ldy, add);
  for (; n < n1; ++n) dense_tile<T, RT, 1>(w.data, w.K, k0, k1, x, n, y, ldy, add);
}

// The multi-row drivers' shared loop: W rows [n0, n1) in blocks of `block` rows,
// each taken by every group of (up to) four x rows while it is in cache;
// tile(R, r0, b, e) runs x rows r0 .. r0 + R - 1 over W rows [b, e), R a
// std::integral_constant so each tile is its own template.
template <class Tile>
inline void over_blocks(int m, int64_t n0, int64_t n1, int64_t block, Tile tile) {
  using std::integral_constant;
  for (int64_t b = n0; b < n1; b += block) {
    const int64_t e = std::min(n1, b + block);
    for (int r0 = 0; r0 < m; r0 += 4) {
      switch (std::min(4, m - r0)) {
        case 4: tile(integral_constant<int, 4>{}, r0, b, e); break;
        case 3: tile(integral_constant<int, 3>{}, r0, b, e); break;
        case 2: tile(integral_constant<int, 2>{}, r0, b, e); break;
        default: tile(integral_constant<int, 1>{}, r0, b, e); break;
      }
    }
  }
}

// W in blocks of kBlockRows rows. (Splitting K so four x rows stay in L1 measured
// no faster.)
template <DType T>
void dense_multi(const Weight& w, const float* x, int m, int64_t n0, int64_t n1, float* y,
                 int64_t ldy) {
  const int64_t K = w.K;
  over_blocks(m, n0, n1, kBlockRows, [&](auto R, int r0, int64_t b, int64_t e) {
    dense_group<T, decltype(R)::value>(w, 0, K, x + r0 * K, b, e, y + r0 * ldy, ldy, false);
  });
}

// ---- silu(g) * u ----

// e^x for fp32 lanes: x = n ln2 + r with |r| <= ln2 / 2, e^r by a degree-6
// polynomial (Cephes' expf coefficients, ~1 ulp), 2^n through the exponent bits.
// Inputs are clamped to [-87.3, 88] so 2^n stays a normal number; NaN passes.
inline __m256 exp8(__m256 x) {
  x = _mm256_min_ps(_mm256_set1_ps(88.0f), x);
  x = _mm256_max_ps(_mm256_set1_ps(-87.3365478515625f), x);
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n),
                                                       _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

template <DType T>
inline void store8(void* out, int64_t i, __m256 v) {
  if constexpr (T == DType::F32) {
    _mm256_storeu_ps(static_cast<float*>(out) + i, v);
  } else if constexpr (T == DType::F16) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(static_cast<uint16_t*>(out) + i),
                     _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
  } else {
    alignas(32) float f[8];
    _mm256_store_ps(f, v);
    auto* o = static_cast<uint16_t*>(out) + i;
    for (int j = 0; j < 8; ++j) o[j] = f32_to_bf16(f[j]);
  }
}

template <DType T>
void swiglu_t(const void* g, const void* u, int64_t n, void* out) {
  int64_t i = 0;
  const __m256 sign = _mm256_set1_ps(-0.0f), one = _mm256_set1_ps(1.0f);
  for (; i + 8 <= n; i += 8) {
    // sigmoid(x) from t = e^-|x| <= 1, which cannot overflow: 1 / (1 + t) for
    // x >= 0, t / (1 + t) below.
    const __m256 x = load8<T>(g, i), neg = _mm256_or_ps(x, sign);
    // Past exp8's clamp e^-|x| underflows: 0, so silu(x) -> -0 for very negative x.
    const __m256 t = _mm256_andnot_ps(_mm256_cmp_ps(neg, _mm256_set1_ps(-87.3f), _CMP_LT_OQ),
                                      exp8(neg));
    const __m256 s = _mm256_div_ps(
        _mm256_blendv_ps(t, one, _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_GE_OQ)),
        _mm256_add_ps(one, t));
    store8<T>(out, i, _mm256_mul_ps(_mm256_mul_ps(x, s), load8<T>(u, i)));
  }
  for (; i < n; ++i) {
    const float x = load_scalar(g, T, i);
    store_scalar(out, T, i, x / (1.0f + std::exp(-x)) * load_scalar(u, T, i));
  }
}

void swiglu_avx2(const void* g, const void* u, DType t, int64_t n, void* out) {
  if (t == DType::F32) return swiglu_t<DType::F32>(g, u, n, out);
  if (t == DType::BF16) return swiglu_t<DType::BF16>(g, u, n, out);
  return swiglu_t<DType::F16>(g, u, n, out);
}

// ---- quantized weights ----

// Eight codes (values 8c .. 8c + 7 of a row) as fp32, in order.
template <int BITS>
inline __m256 codes8(const uint8_t* row, int64_t c, bool last) {
  if constexpr (BITS == 4) {
    // One word holds the eight nibbles: broadcast it and shift each lane.
    uint32_t word;
    std::memcpy(&word, row + c * 4, 4);
    __m256i v = _mm256_srlv_epi32(_mm256_set1_epi32(int(word)),
                                  _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28));
    return _mm256_cvtepi32_ps(_mm256_and_si256(v, _mm256_set1_epi32(0xf)));
  } else if constexpr (BITS == 8) {
    __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + c * 8));
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b));
  } else {
    // Eight codes span BITS bytes: shift a 64-bit window per lane pair (even
    // lanes from one shift vector, odd lanes from the other), then mask.
    uint64_t word = 0;
    if (last) {
      std::memcpy(&word, row + c * BITS, BITS);  // never read past the row's end
    } else {
      std::memcpy(&word, row + c * BITS, 8);
    }
    __m256i b = _mm256_set1_epi64x(int64_t(word));
    __m256i even = _mm256_srlv_epi64(b, _mm256_setr_epi64x(0, 2 * BITS, 4 * BITS, 6 * BITS));
    __m256i odd = _mm256_srlv_epi64(b, _mm256_setr_epi64x(BITS, 3 * BITS, 5 * BITS, 7 * BITS));
    __m256i v = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xaa);
    return _mm256_cvtepi32_ps(_mm256_and_si256(v, _mm256_set1_epi32((1 << BITS) - 1)));
  }
}

// Converts n scales or biases to fp32.
inline void to_f32(const void* src, DType t, int64_t offset, int64_t n, float* dst) {
  int64_t i = 0;
  if (t == DType::BF16) {
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, load8<DType::BF16>(src, offset + i));
  } else if (t == DType::F16) {
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, load8<DType::F16>(src, offset + i));
  }
  for (; i < n; ++i) dst[i] = load_scalar(src, t, offset + i);
}

inline float dot(const float* a, const float* b, int64_t n) {
  __m256 acc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
  float s = hsum(acc);
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

// bias_term[r][j] = sum over groups of bias[n + j, g] * xsum[r, g]: how the
// biases meet x (through its per-group sums), for rows n .. n + NB - 1.
template <int R, int NB>
inline void bias_terms(const QWeight& q, int64_t groups, int64_t n, const float* xsum,
                       float (&bias_term)[R][NB]) {
  float biases[1024];
  for (int j = 0; j < NB; ++j)
    for (int64_t g0 = 0; g0 < groups; g0 += 1024) {
      const int64_t len = groups - g0 < 1024 ? groups - g0 : 1024;
      to_f32(q.biases, q.sdtype, (n + j) * groups + g0, len, biases);
      for (int r = 0; r < R; ++r) {
        float t = dot(biases, xsum + r * groups + g0, len);
        bias_term[r][j] = g0 ? bias_term[r][j] + t : t;
      }
    }
}

// NB rows of W against R rows of x, groups of G values: per group, the codes
// meet x in registers and the group's scale multiplies the partial sum once; the
// biases meet x only through its per-group sums.
template <int BITS, int G, int R, int NB>
inline void quant_block(const Weight& w, const float* x, const float* xsum, int64_t n, float* y,
                        int64_t ldy) {
  constexpr int CHUNKS = G / 8;
  constexpr int ACC = R * NB <= 4 ? 2 : 1;  // independent FMA chains per (row, output)
  const QWeight& q = w.quant;
  const int64_t K = w.K, groups = K / G;
  const int64_t row_bytes = K * BITS / 8;
  const uint8_t* rows[NB];
  for (int j = 0; j < NB; ++j)
    rows[j] = reinterpret_cast<const uint8_t*>(q.codes) + (n + j) * row_bytes;

  // Scales as fp32 for these rows, and the bias terms; K <= 2^20 values keeps
  // this on the stack (groups <= 32768).
  float scales[NB][1024];
  float bias_term[R][NB];
  bias_terms<R, NB>(q, groups, n, xsum, bias_term);

  __m256 total[R][NB];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < NB; ++j) total[r][j] = _mm256_setzero_ps();

  for (int64_t g0 = 0; g0 < groups; g0 += 1024) {
    const int64_t gend = groups - g0 < 1024 ? groups : g0 + 1024;
    for (int j = 0; j < NB; ++j)
      to_f32(q.scales, q.sdtype, (n + j) * groups + g0, gend - g0, scales[j]);
    for (int64_t g = g0; g < gend; ++g) {
      const bool last_group = g == groups - 1;
      __m256 acc[R][NB][ACC];
      for (int r = 0; r < R; ++r)
        for (int j = 0; j < NB; ++j)
          for (int a = 0; a < ACC; ++a) acc[r][j][a] = _mm256_setzero_ps();
      const float* xg = x + g * G;
      for (int c = 0; c < CHUNKS; ++c) {
        const bool last = BITS != 4 && BITS != 8 && last_group && c == CHUNKS - 1;
        __m256 wv[NB];
        for (int j = 0; j < NB; ++j) wv[j] = codes8<BITS>(rows[j], g * CHUNKS + c, last);
        for (int r = 0; r < R; ++r) {
          __m256 xv = _mm256_loadu_ps(xg + r * K + c * 8);
          for (int j = 0; j < NB; ++j)
            acc[r][j][c % ACC] = _mm256_fmadd_ps(xv, wv[j], acc[r][j][c % ACC]);
        }
      }
      for (int j = 0; j < NB; ++j) {
        __m256 s = _mm256_broadcast_ss(&scales[j][g - g0]);
        for (int r = 0; r < R; ++r) {
          __m256 a = acc[r][j][0];
          if constexpr (ACC > 1) a = _mm256_add_ps(a, acc[r][j][1]);
          total[r][j] = _mm256_fmadd_ps(a, s, total[r][j]);
        }
      }
    }
  }
  for (int j = 0; j < NB; ++j)
    for (int r = 0; r < R; ++r) y[r * ldy + n + j] = hsum(total[r][j]) + bias_term[r][j];
}

template <int BITS, int G, int R>
void quant_rows(const Weight& w, const float* x, const float* xsum, int64_t n0, int64_t n1,
                float* y, int64_t ldy) {
  constexpr int NB = R == 1 ? 4 : R == 2 ? 2 : 1;
  int64_t n = n0;
  for (; n + NB <= n1; n += NB) quant_block<BITS, G, R, NB>(w, x, xsum, n, y, ldy);
  for (; n < n1; ++n) quant_block<BITS, G, R, 1>(w, x, xsum, n, y, ldy);
}

template <int BITS, int R>
void quant_bits(const Weight& w, const float* x, const float* xsum, int64_t n0, int64_t n1,
                float* y, int64_t ldy) {
  switch (w.quant.group) {
    case 32:
      return quant_rows<BITS, 32, R>(w, x, xsum, n0, n1, y, ldy);
    case 64:
      return quant_rows<BITS, 64, R>(w, x, xsum, n0, n1, y, ldy);
    default:
      return quant_rows<BITS, 128, R>(w, x, xsum, n0, n1, y, ldy);
  }
}

// ---- 4- and 8-bit weights: integer dot products ----
//
// x is rounded once per call to int16 per group (scale sx = max|x| / 32767, an
// error of at most 2^-16 of the group's largest |x|, far below bf16's own
// rounding), so codes meet x in vpmaddwd: 16 products per instruction.
// Unpacking a block of codes leaves values out of order; x is stored in that
// order instead.

template <int BITS>
constexpr int kBlock = BITS == 4 ? 64 : 32;  // values per 32-byte load of codes

// Where each position of a block's unpacked words comes from.
template <int BITS>
constexpr int source_of(int p) {
  if constexpr (BITS == 8) {
    // unpacklo/hi_epi8 of 32 bytes: [0..7, 16..23], [8..15, 24..31].
    const int half = p / 16, lane = (p % 16) / 8, i = p % 8;
    return lane * 16 + half * 8 + i;
  } else {
    // Low nibbles are the even values, high nibbles the odd; each unpack takes
    // 8 bytes from both 128-bit lanes: [A, B, C, D] = even lo, even hi, odd lo,
    // odd hi, each [lane 0 | lane 1].
    const int vec = p / 16, lane = (p % 16) / 8, i = p % 8;
    const int byte = lane * 16 + (vec % 2) * 8 + i;
    return 2 * byte + vec / 2;
  }
}

// One row of x rounded to integers per group of G: q[k] = round(x[k] * qmax /
// max|x| of its group) (to nearest, ties to even, as std::nearbyint), and the
// group's scale max|x| / qmax into sx. Vector code: a prepare runs on one thread
// before the matrix-vector tasks, where a scalar loop cost ~7 ns a value (0.5 ms
// for eight rows of down_proj).
void round_row(const float* xr, int64_t K, int G, float qmax, int32_t* q, float* sx) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  for (int64_t g0 = 0; g0 < K; g0 += G) {
    __m256 m = _mm256_setzero_ps();
    for (int64_t k = g0; k < g0 + G; k += 8)
      m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(xr + k)));
    const float mx = hmax(m);
    sx[g0 / G] = mx / qmax;
    const __m256 inv = _mm256_set1_ps(mx > 0 ? qmax / mx : 0.0f);
    for (int64_t k = g0; k < g0 + G; k += 8)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + k),
                          _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xr + k), inv)));
  }
}

// Layout: int16 xi[m][K] (blocks permuted), then float sx[m][groups].
void prepare_int16(const Weight& w, const float* x, int m, std::vector<uint8_t>& out) {
  const int bits = w.quant.bits, G = w.quant.group;
  const int64_t K = w.K, groups = K / G;
  out.resize(m * K * 2 + m * groups * 4);
  auto* xi = reinterpret_cast<int16_t*>(out.data());
  auto* sx = reinterpret_cast<float*>(out.data() + m * K * 2);
  int perm[64];
  const int block = bits == 4 ? kBlock<4> : kBlock<8>;
  for (int p = 0; p < block; ++p) perm[p] = bits == 4 ? source_of<4>(p) : source_of<8>(p);
  std::vector<int32_t> q(K);
  for (int r = 0; r < m; ++r) {
    round_row(x + r * K, K, G, 32767.0f, q.data(), sx + r * groups);
    for (int64_t b = 0; b < K; b += block)
      for (int p = 0; p < block; ++p) xi[r * K + b + p] = int16_t(q[b + perm[p]]);
  }
}

template <int BITS>
inline void unpack_words(const uint8_t* codes, __m256i* words) {
  const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes));
  const __m256i zero = _mm256_setzero_si256();
  if constexpr (BITS == 8) {
    words[0] = _mm256_unpacklo_epi8(v, zero);
    words[1] = _mm256_unpackhi_epi8(v, zero);
  } else {
    const __m256i mask = _mm256_set1_epi8(0x0f);
    const __m256i lo = _mm256_and_si256(v, mask);
    const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), mask);
    words[0] = _mm256_unpacklo_epi8(lo, zero);
    words[1] = _mm256_unpackhi_epi8(lo, zero);
    words[2] = _mm256_unpacklo_epi8(hi, zero);
    words[3] = _mm256_unpackhi_epi8(hi, zero);
  }
}

constexpr int kAhead = 1;  // blocks of NB rows to prefetch ahead (2 measured no better)

// R rows of x (xi and sx: int16 values [R, K] and scales [R, groups], those of
// the call's rows r0.. r0 + R - 1; xsum and y likewise offset) by NB rows of W.
template <int BITS, int G, int R, int NB>
inline void int_block(const Weight& w, const float* xsum, const int16_t* xi, const float* sx,
                      int64_t n, float* y, int64_t ldy) {
  constexpr int B = kBlock<BITS>, WORDS = B / 16;
  // G < B only for 4 bits in groups of 32: each 128-bit lane is one group.
  constexpr int STEPS = G >= B ? G / B : 1;
  const QWeight& q = w.quant;
  const int64_t K = w.K, groups = K / G, row_bytes = K * BITS / 8;
  const uint8_t* rows[NB];
  for (int j = 0; j < NB; ++j)
    rows[j] = reinterpret_cast<const uint8_t*>(q.codes) + (n + j) * row_bytes;

  float scales[NB][1024];
  float bias_term[R][NB];
  bias_terms<R, NB>(q, groups, n, xsum, bias_term);
  __m256 total[R][NB];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < NB; ++j) total[r][j] = _mm256_setzero_ps();

  constexpr int GPS = G >= B ? 1 : B / G;  // groups per step: 1 or 2
  for (int64_t g0 = 0; g0 < groups; g0 += 1024) {
    const int64_t gend = groups - g0 < 1024 ? groups : g0 + 1024;
    for (int j = 0; j < NB; ++j)
      to_f32(q.scales, q.sdtype, (n + j) * groups + g0, gend - g0, scales[j]);
    for (int64_t g = g0; g < gend; g += GPS) {
      __m256i acc[R][NB];
      for (int r = 0; r < R; ++r)
        for (int j = 0; j < NB; ++j) acc[r][j] = _mm256_setzero_si256();
      for (int s = 0; s < STEPS; ++s) {
        const int64_t k = g * G + s * B;
        // Rows are short (1.5 KB at 4 bits) for the prefetcher to ramp up on:
        // fetch the next NB rows while these are computed, in step.
        const char* ahead = reinterpret_cast<const char*>(rows[0]) + NB * row_bytes * kAhead +
                            k * BITS / 8 * NB;
        for (int line = 0; line < NB * 32; line += 64) _mm_prefetch(ahead + line, _MM_HINT_T0);
        for (int j = 0; j < NB; ++j) {
          __m256i words[WORDS];
          unpack_words<BITS>(rows[j] + k * BITS / 8, words);
          for (int r = 0; r < R; ++r) {
            const __m256i* xr = reinterpret_cast<const __m256i*>(xi + r * K + k);
            for (int t = 0; t < WORDS; ++t)
              acc[r][j] = _mm256_add_epi32(
                  acc[r][j], _mm256_madd_epi16(words[t], _mm256_loadu_si256(xr + t)));
          }
        }
      }
      for (int r = 0; r < R; ++r) {
        for (int j = 0; j < NB; ++j) {
          __m256 f;
          if constexpr (GPS == 1) {
            f = _mm256_set1_ps(scales[j][g - g0] * sx[r * groups + g]);
          } else {
            f = _mm256_setr_m128(_mm_set1_ps(scales[j][g - g0] * sx[r * groups + g]),
                                 _mm_set1_ps(scales[j][g + 1 - g0] * sx[r * groups + g + 1]));
          }
          total[r][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[r][j]), f, total[r][j]);
        }
      }
    }
  }
  for (int j = 0; j < NB; ++j)
    for (int r = 0; r < R; ++r) y[r * ldy + n + j] = hsum(total[r][j]) + bias_term[r][j];
}

template <int BITS, int G, int R>
void int_rows(const Weight& w, const float* xsum, const int16_t* xi, const float* sx,
              int64_t n0, int64_t n1, float* y, int64_t ldy) {
  // Few rows of W at a time: the integer chains need no latency hiding, and the
  // prefetcher follows two streams better than four (16 vs 12 GB/s per thread).
  constexpr int NB = 2;
  int64_t n = n0;
  for (; n + NB <= n1; n += NB) int_block<BITS, G, R, NB>(w, xsum, xi, sx, n, y, ldy);
  for (; n < n1; ++n) int_block<BITS, G, R, 1>(w, xsum, xi, sx, n, y, ldy);
}

// Any number of x rows: W in blocks of kBlockRows rows, read from memory once,
// each block taken by groups of up to four x rows (their int16 values stay in
// L1 beside the codes; eight rows' worth of a long K do not).
template <int BITS, int G>
void int_multi(const Weight& w, const float* xsum, const void* prepared, int m, int64_t n0,
               int64_t n1, float* y, int64_t ldy) {
  const int64_t K = w.K, groups = K / G;
  const auto* xi = static_cast<const int16_t*>(prepared);
  const auto* sx = reinterpret_cast<const float*>(static_cast<const uint8_t*>(prepared) +
                                                  int64_t(m) * K * 2);
  over_blocks(m, n0, n1, m <= 2 ? n1 - n0 : kBlockRows,
              [&](auto R, int r0, int64_t b, int64_t e) {
                constexpr int rows = decltype(R)::value;
                int_rows<BITS, G, rows>(w, xsum + r0 * groups, xi + r0 * K, sx + r0 * groups, b,
                                        e, y + r0 * ldy, ldy);
              });
}

template <int BITS>
void int_bits(const Weight& w, const float* xsum, const void* prepared, int m, int64_t n0,
              int64_t n1, float* y, int64_t ldy) {
  switch (w.quant.group) {
    case 32:
      return int_multi<BITS, 32>(w, xsum, prepared, m, n0, n1, y, ldy);
    case 64:
      return int_multi<BITS, 64>(w, xsum, prepared, m, n0, n1, y, ldy);
    default:
      return int_multi<BITS, 128>(w, xsum, prepared, m, n0, n1, y, ldy);
  }
}

// 4-bit codes load 64 values at a time: groups of 32 need an even count.
inline bool int16_path(const Weight& w) {
  return w.quantized() && (w.quant.bits == 8 || (w.quant.bits == 4 && w.K % 64 == 0));
}

// ---- 4-bit weights, bf16 or f16 x: int8 dot products ----
//
// With several rows the int16 path is compute-bound, so x that came in 16 bits
// (float32 x keeps the int16 path) is rounded to int8 per group instead, for one
// row too, so that a row of a batched call gets exactly what it gets alone (scale
// sx = max|x| / 127: each value moves by at most 1/254 of its group's largest
// |x|). The codes (0..15) meet it in vpmaddubsw, 32 products per
// instruction straight from the packed bytes: the low nibbles of a 32-byte load
// are the block's even values, the high nibbles its odd ones, so x is stored as
// [32 even, 32 odd] per block of 64. Two products of 15 * 127 and the two halves'
// sums (at most 4 * 1905 = 7620 per int16 lane, 8 for groups of 128) never
// saturate. The rounding is far below the 4-bit weights' own: a weight moves by up
// to half its group's step, ~1/30 of the group's range.

inline bool int8_path(const Weight& w) {
  return w.half_x && w.quantized() && w.quant.bits == 4 && w.K % 64 == 0;
}

// Layout: int8 xb[m][K] (each block of 64 as 32 even then 32 odd values), then
// float sx[m][groups], then float qsum[m][groups]: the per-group sums of the
// rounded x, which the biases meet instead of x's own sums. Then the result is
// exactly the dequantized W times the rounded x, whose error is W . dx; with x's
// own sums it would be scale * codes . dx, ~2.7x larger, as the codes (0..15) are
// not centred the way W is.
void prepare_int8(const Weight& w, const float* x, int m, std::vector<uint8_t>& out) {
  const int G = w.quant.group;
  const int64_t K = w.K, groups = K / G;
  out.resize(m * K + 2 * m * groups * 4);
  auto* xb = reinterpret_cast<int8_t*>(out.data());
  // sx after the int8 values, 4-byte aligned (K is a multiple of 64).
  auto* sx = reinterpret_cast<float*>(out.data() + m * K);
  auto* qsum = sx + m * groups;
  std::vector<int32_t> q(K);
  for (int r = 0; r < m; ++r) {
    round_row(x + r * K, K, G, 127.0f, q.data(), sx + r * groups);
    for (int64_t b = 0; b < K; b += 64)
      for (int p = 0; p < 32; ++p) {
        xb[r * K + b + p] = int8_t(q[b + 2 * p]);
        xb[r * K + b + 32 + p] = int8_t(q[b + 2 * p + 1]);
      }
    for (int64_t g = 0; g < groups; ++g) {
      int32_t sum = 0;
      for (int64_t k = g * G; k < (g + 1) * G; ++k) sum += q[k];
      qsum[r * groups + g] = float(sum) * sx[r * groups + g];
    }
  }
}

// R rows of x by NB rows of W (4-bit codes), groups of G. Per group, each (x row,
// W row) pair costs 2 vpmaddubsw and an add, then a widening vpmaddwd, a convert
// and one FMA by the pair's factor (W's scale times x's), which is worked out for
// a run of groups 8 at a time beforehand; each x row is loaded once per step for
// all NB rows of W.
template <int G, int R, int NB>
inline void int8_block(const Weight& w, const float* xsum, const int8_t* xb, const float* sx,
                       int64_t n, float* y, int64_t ldy) {
  constexpr int STEPS = G >= 64 ? G / 64 : 1;  // 64-value loads per group
  constexpr int GPS = G >= 64 ? 1 : 2;         // groups per load: 1, or 2 (one per 128-bit lane)
  constexpr int64_t RUN = 256;                 // groups whose factors are worked out at once
  const QWeight& q = w.quant;
  const int64_t K = w.K, groups = K / G, row_bytes = K / 2;
  const uint8_t* rows[NB];
  for (int j = 0; j < NB; ++j)
    rows[j] = reinterpret_cast<const uint8_t*>(q.codes) + (n + j) * row_bytes;

  float bias_term[R][NB];
  bias_terms<R, NB>(q, groups, n, xsum, bias_term);
  __m256 total[R][NB];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < NB; ++j) total[r][j] = _mm256_setzero_ps();
  const __m256i nibble = _mm256_set1_epi8(0x0f), ones = _mm256_set1_epi16(1);

  alignas(32) float scales[RUN];
  alignas(32) float factor[R][NB][RUN];
  for (int64_t g0 = 0; g0 < groups; g0 += RUN) {
    const int64_t len = std::min(RUN, groups - g0);
    for (int j = 0; j < NB; ++j) {
      to_f32(q.scales, q.sdtype, (n + j) * groups + g0, len, scales);
      for (int r = 0; r < R; ++r) {
        const float* sr = sx + r * groups + g0;
        int64_t i = 0;
        for (; i + 8 <= len; i += 8)
          _mm256_store_ps(&factor[r][j][i],
                          _mm256_mul_ps(_mm256_load_ps(scales + i), _mm256_loadu_ps(sr + i)));
        for (; i < len; ++i) factor[r][j][i] = scales[i] * sr[i];
      }
    }
    for (int64_t g = g0; g < g0 + len; g += GPS) {
      __m256i acc[R][NB];
      for (int s = 0; s < STEPS; ++s) {
        const int64_t k = g * G + s * 64;
        const char* ahead = reinterpret_cast<const char*>(rows[0]) + NB * row_bytes * kAhead +
                            k / 2 * NB;
        for (int line = 0; line < NB * 32; line += 64) _mm_prefetch(ahead + line, _MM_HINT_T0);
        __m256i lo[NB], hi[NB];
        for (int j = 0; j < NB; ++j) {
          const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rows[j] + k / 2));
          lo[j] = _mm256_and_si256(v, nibble);
          hi[j] = _mm256_and_si256(_mm256_srli_epi16(v, 4), nibble);
        }
        for (int r = 0; r < R; ++r) {
          const __m256i* xr = reinterpret_cast<const __m256i*>(xb + r * K + k);
          const __m256i xe = _mm256_loadu_si256(xr), xo = _mm256_loadu_si256(xr + 1);
          for (int j = 0; j < NB; ++j) {
            const __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(lo[j], xe),
                                               _mm256_maddubs_epi16(hi[j], xo));
            acc[r][j] = s ? _mm256_add_epi16(acc[r][j], p) : p;
          }
        }
      }
      const int64_t i = g - g0;
      for (int r = 0; r < R; ++r) {
        for (int j = 0; j < NB; ++j) {
          __m256 f;
          if constexpr (GPS == 1) {
            f = _mm256_broadcast_ss(&factor[r][j][i]);
          } else {
            f = _mm256_setr_m128(_mm_broadcast_ss(&factor[r][j][i]),
                                 _mm_broadcast_ss(&factor[r][j][i + 1]));
          }
          const __m256 sum = _mm256_cvtepi32_ps(_mm256_madd_epi16(acc[r][j], ones));
          total[r][j] = _mm256_fmadd_ps(sum, f, total[r][j]);
        }
      }
    }
  }
  for (int j = 0; j < NB; ++j)
    for (int r = 0; r < R; ++r) y[r * ldy + n + j] = hsum(total[r][j]) + bias_term[r][j];
}

template <int G, int R>
void int8_rows(const Weight& w, const float* xsum, const int8_t* xb, const float* sx, int64_t n0,
               int64_t n1, float* y, int64_t ldy) {
  constexpr int NB = 2;  // as int_rows: two streams of codes suit the prefetcher
  int64_t n = n0;
  for (; n + NB <= n1; n += NB) int8_block<G, R, NB>(w, xsum, xb, sx, n, y, ldy);
  for (; n < n1; ++n) int8_block<G, R, 1>(w, xsum, xb, sx, n, y, ldy);
}

// As int_multi, on int8 x.
template <int G>
void int8_multi(const Weight& w, const void* prepared, int m, int64_t n0, int64_t n1, float* y,
                int64_t ldy) {
  const int64_t K = w.K, groups = K / G;
  const auto* xb = static_cast<const int8_t*>(prepared);
  const auto* sx = reinterpret_cast<const float*>(static_cast<const uint8_t*>(prepared) +
                                                  int64_t(m) * K);
  const float* xsum = sx + int64_t(m) * groups;  // of the rounded x (see prepare_int8)
  over_blocks(m, n0, n1, m <= 2 ? n1 - n0 : kBlockRows,
              [&](auto R, int r0, int64_t b, int64_t e) {
                constexpr int rows = decltype(R)::value;
                int8_rows<G, rows>(w, xsum + r0 * groups, xb + r0 * K, sx + r0 * groups, b, e,
                                   y + r0 * ldy, ldy);
              });
}

inline void int8_any(const Weight& w, const void* prepared, int m, int64_t n0, int64_t n1,
                     float* y, int64_t ldy) {
  switch (w.quant.group) {
    case 32:
      return int8_multi<32>(w, prepared, m, n0, n1, y, ldy);
    case 64:
      return int8_multi<64>(w, prepared, m, n0, n1, y, ldy);
    default:
      return int8_multi<128>(w, prepared, m, n0, n1, y, ldy);
  }
}

inline void int_bits_any(const Weight& w, const float* xsum, const void* prepared, int m,
                         int64_t n0, int64_t n1, float* y, int64_t ldy) {
  if (w.quant.bits == 4) return int_bits<4>(w, xsum, prepared, m, n0, n1, y, ldy);
  return int_bits<8>(w, xsum, prepared, m, n0, n1, y, ldy);
}

void prepare(const Weight& w, const float* x, int m, std::vector<uint8_t>& out) {
  if (int8_path(w)) {
    prepare_int8(w, x, m, out);
  } else if (int16_path(w)) {
    prepare_int16(w, x, m, out);
  }
}

template <int R>
void gemv_r(const Weight& w, const float* x, const float* xsum, const void* prepared, int64_t n0,
            int64_t n1, float* y, int64_t ldy) {
  if (w.quantized()) {
    if (!int16_path(w)) {
      if (w.quant.bits == 4) return quant_bits<4, R>(w, x, xsum, n0, n1, y, ldy);
      return quant_bits<6, R>(w, x, xsum, n0, n1, y, ldy);
    }
    if (w.quant.bits == 4) return int_bits<4>(w, xsum, prepared, R, n0, n1, y, ldy);
    return int_bits<8>(w, xsum, prepared, R, n0, n1, y, ldy);
  }
}

void gemv(const Weight& w, const float* x, const float* xsum, const void* prepared, int m,
          int64_t n0, int64_t n1, float* y, int64_t ldy) {
  // Register tiles over any number of rows, one row included: every row of W sums
  // in the tiles' order, so a row's result does not depend on the call's row count.
  if (!w.quantized()) {
    switch (w.dtype) {
      case DType::BF16:
        return dense_multi<DType::BF16>(w, x, m, n0, n1, y, ldy);
      case DType::F16:
        return dense_multi<DType::F16>(w, x, m, n0, n1, y, ldy);
      default:
        return dense_multi<DType::F32>(w, x, m, n0, n1, y, ldy);
    }
  }
  if (int8_path(w)) return int8_any(w, prepared, m, n0, n1, y, ldy);
  if (m >= 2 && int16_path(w)) return int_bits_any(w, xsum, prepared, m, n0, n1, y, ldy);
  if (m > 8) {  // the float-path quantized kernels take up to eight rows at a time
    const int64_t groups = w.K / w.quant.group;
    for (int r0 = 0; r0 < m; r0 += 8)
      gemv(w, x + r0 * w.K, xsum + r0 * groups, prepared, std::min(8, m - r0), n0, n1,
           y + r0 * ldy, ldy);
    return;
  }
  switch (m) {
    case 1:
      return gemv_r<1>(w, x, xsum, prepared, n0, n1, y, ldy);
    case 2:
      return gemv_r<2>(w, x, xsum, prepared, n0, n1, y, ldy);
    case 3:
      return gemv_r<3>(w, x, xsum, prepared, n0, n1, y, ldy);
    case 4:
      return gemv_r<4>(w, x, xsum, prepared, n0, n1, y, ldy);
    case 5:
      return gemv_r<5>(w, x, xsum, prepared, n0, n1, y, ldy);
    case 6:
      return gemv_r<6>(w, x, xsum, prepared, n0, n1, y, ldy);
    case 7:
      return gemv_r<7>(w, x, xsum, prepared, n0, n1, y, ldy);
    default:
      return gemv_r<8>(w, x, xsum, prepared, n0, n1, y, ldy);
  }
}

bool gemv_supports(const Weight& w) {
  if (!w.quantized()) return true;
  // 2, 3 and 5 bits take the portable kernels.
  int b = w.quant.bits, g = w.quant.group;
  return (b == 4 || b == 6 || b == 8) && (g == 32 || g == 64 || g == 128);
}

bool uses_xsum(const Weight& w) {
  return w.quantized() && !int8_path(w);  // the int8 path folds the sums into its x
}

// ---- prefill: a 6 x 16 register tile over packed panels ----

void micro(const float* a, const float* b, int64_t kc, float* c, int64_t ldc, int mr, int nr,
           bool accumulate) {
  __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps();
  __m256 c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps();
  __m256 c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps();
  __m256 c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps();
  __m256 c40 = _mm256_setzero_ps(), c41 = _mm256_setzero_ps();
  __m256 c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();
  for (int64_t k = 0; k < kc; ++k) {
    __m256 b0 = _mm256_loadu_ps(b + k * 16), b1 = _mm256_loadu_ps(b + k * 16 + 8);
    const float* ak = a + k * 6;
    __m256 av = _mm256_broadcast_ss(ak + 0);
    c00 = _mm256_fmadd_ps(av, b0, c00);
    c01 = _mm256_fmadd_ps(av, b1, c01);
    av = _mm256_broadcast_ss(ak + 1);
    c10 = _mm256_fmadd_ps(av, b0, c10);
    c11 = _mm256_fmadd_ps(av, b1, c11);
    av = _mm256_broadcast_ss(ak + 2);
    c20 = _mm256_fmadd_ps(av, b0, c20);
    c21 = _mm256_fmadd_ps(av, b1, c21);
    av = _mm256_broadcast_ss(ak + 3);
    c30 = _mm256_fmadd_ps(av, b0, c30);
    c31 = _mm256_fmadd_ps(av, b1, c31);
    av = _mm256_broadcast_ss(ak + 4);
    c40 = _mm256_fmadd_ps(av, b0, c40);
    c41 = _mm256_fmadd_ps(av, b1, c41);
    av = _mm256_broadcast_ss(ak + 5);
    c50 = _mm256_fmadd_ps(av, b0, c50);
    c51 = _mm256_fmadd_ps(av, b1, c51);
  }
  __m256 tile[6][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31}, {c40, c41}, {c50, c51}};
  if (mr == 6 && nr == 16) {
    for (int i = 0; i < 6; ++i) {
      float* ci = c + i * ldc;
      if (accumulate) {
        tile[i][0] = _mm256_add_ps(tile[i][0], _mm256_loadu_ps(ci));
        tile[i][1] = _mm256_add_ps(tile[i][1], _mm256_loadu_ps(ci + 8));
      }
      _mm256_storeu_ps(ci, tile[i][0]);
      _mm256_storeu_ps(ci + 8, tile[i][1]);
    }
    return;
  }
  alignas(32) float buf[6][16];
  for (int i = 0; i < 6; ++i) {
    _mm256_store_ps(buf[i], tile[i][0]);
    _mm256_store_ps(buf[i] + 8, tile[i][1]);
  }
  for (int i = 0; i < mr; ++i)
    for (int j = 0; j < nr; ++j)
      c[i * ldc + j] = accumulate ? c[i * ldc + j] + buf[i][j] : buf[i][j];
}

// Packs 16 rows of a dense weight: eight k at a time from each row, transposed
// through registers.
template <DType T>
void pack_dense(const Weight& w, int64_t n0, int64_t k0, int64_t kc, float* dst) {
  const int64_t K = w.K;
  int64_t k = 0;
  if (n0 + 16 <= w.N) {
    for (; k + 8 <= kc; k += 8) {
      for (int half = 0; half < 2; ++half) {
        __m256 r[8];
        for (int j = 0; j < 8; ++j) r[j] = load8<T>(w.data, (n0 + half * 8 + j) * K + k0 + k);
        // 8 x 8 transpose.
        __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
        __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
        __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
        __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
        __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xee);
        __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xee);
        __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xee);
        __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xee);
        __m256 out[8] = {
            _mm256_permute2f128_ps(u0, u4, 0x20), _mm256_permute2f128_ps(u1, u5, 0x20),
            _mm256_permute2f128_ps(u2, u6, 0x20), _mm256_permute2f128_ps(u3, u7, 0x20),
            _mm256_permute2f128_ps(u0, u4, 0x31), _mm256_permute2f128_ps(u1, u5, 0x31),
            _mm256_permute2f128_ps(u2, u6, 0x31), _mm256_permute2f128_ps(u3, u7, 0x31)};
        for (int i = 0; i < 8; ++i) _mm256_storeu_ps(dst + (k + i) * 16 + half * 8, out[i]);
      }
    }
  }
  if (k < kc) {
    // Ragged edges: the portable packer on what is left.
    float tmp[16 * 8];
    for (; k < kc; k += 8) {
      int64_t len = kc - k < 8 ? kc - k : 8;
      isa_generic().pack(w, n0, k0 + k, len, tmp);
      std::memcpy(dst + k * 16, tmp, sizeof(float) * 16 * len);
    }
  }
}

void pack(const Weight& w, int64_t n0, int64_t k0, int64_t kc, float* dst) {
  if (w.quantized()) return isa_generic().pack(w, n0, k0, kc, dst);
  switch (w.dtype) {
    case DType::BF16:
      return pack_dense<DType::BF16>(w, n0, k0, kc, dst);
    case DType::F16:
      return pack_dense<DType::F16>(w, n0, k0, kc, dst);
    default:
      return pack_dense<DType::F32>(w, n0, k0, kc, dst);
  }
}

uint64_t read(const void* p, size_t bytes) {
  // Four streams at once, as the matrix-vector kernels read several rows.
  const size_t quarter = bytes / 4 / 64 * 64;
  const __m256i* v0 = static_cast<const __m256i*>(p);
  const __m256i* v1 = v0 + quarter / 32;
  const __m256i* v2 = v1 + quarter / 32;
  const __m256i* v3 = v2 + quarter / 32;
  __m256i a = _mm256_setzero_si256(), b = a, c = a, d = a;
  for (size_t i = 0; i < quarter / 32; i += 2) {
    a = _mm256_add_epi64(a, _mm256_add_epi64(_mm256_loadu_si256(v0 + i), _mm256_loadu_si256(v0 + i + 1)));
    b = _mm256_add_epi64(b, _mm256_add_epi64(_mm256_loadu_si256(v1 + i), _mm256_loadu_si256(v1 + i + 1)));
    c = _mm256_add_epi64(c, _mm256_add_epi64(_mm256_loadu_si256(v2 + i), _mm256_loadu_si256(v2 + i + 1)));
    d = _mm256_add_epi64(d, _mm256_add_epi64(_mm256_loadu_si256(v3 + i), _mm256_loadu_si256(v3 + i + 1)));
  }
  __m256i s = _mm256_add_epi64(_mm256_add_epi64(a, b), _mm256_add_epi64(c, d));
  alignas(32) uint64_t out[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(out), s);
  return out[0] + out[1] + out[2] + out[3];
}

}  // namespace

const Isa& isa_avx2() {
  static const Isa isa{"avx2",    prepare, gemv,      pack, micro, gemv_supports,
                       uses_xsum, read,    nullptr,   gemv_bf16, 1, swiglu_avx2};
  return isa;
}

}  // namespace hk
