// Kernels for CPUs with AVX512-BF16 and AVX512-VNNI (AMD Zen 4 and later, Intel
// Cooper Lake, Sapphire Rapids):
// - bf16 x against bf16 W, 1 to 64 rows (a decode batch): vdpbf16ps multiplies
//   pairs of bf16 exactly and accumulates in fp32, rows register-tiled against
//   W, which is read from memory once;
// - prefill for more rows: the same instruction over packed panels. W is bf16, or
//   group-quantized and dequantized to bf16 as each block of it is packed (the
//   precision of the activations; MLX's GPU kernels likewise dequantize into the
//   input type).
// Built with AVX-512 flags for this file only; dispatch.cpp calls it after
// checking the CPU.
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels.h"
#include "threadpool.h"

namespace hk {
namespace {

constexpr int MR = 12;           // rows of x per register tile
constexpr int NR = 32;           // columns of W per register tile (two zmm)
constexpr int64_t KP = 128;      // pairs of k per packed panel
constexpr int64_t NCOLS = 128;   // columns of W per task

inline uint32_t pair_at(const uint16_t* row, int64_t k, int64_t K) {
  // Values k and k + 1 of a row as one 32-bit word (zero past the end).
  uint32_t lo = row[k];
  uint32_t hi = k + 1 < K ? row[k + 1] : 0;
  return lo | (hi << 16);
}

// 12 x 32 tile: C += A_panel (pairs, [kp][12]) * B_panel (pairs, [kp][32]).
void micro(const uint32_t* a, const uint32_t* b, int64_t kp, float* c, int64_t ldc, int mr,
           int nr, bool accumulate) {
  __m512 acc[MR][2];
  for (int i = 0; i < MR; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
  for (int64_t p = 0; p < kp; ++p) {
    const __m512bh b0 = (__m512bh)_mm512_loadu_si512(b + p * NR);
    const __m512bh b1 = (__m512bh)_mm512_loadu_si512(b + p * NR + 16);
    const uint32_t* ap = a + p * MR;
    for (int i = 0; i < MR; ++i) {
      const __m512bh av = (__m512bh)_mm512_set1_epi32(int(ap[i]));
      acc[i][0] = _mm512_dpbf16_ps(acc[i][0], av, b0);
      acc[i][1] = _mm512_dpbf16_ps(acc[i][1], av, b1);
    }
  }
  const __mmask16 m0 = nr >= 16 ? 0xffff : __mmask16((1u << nr) - 1);
  const __mmask16 m1 = nr >= 32 ? 0xffff : nr > 16 ? __mmask16((1u << (nr - 16)) - 1) : 0;
  for (int i = 0; i < mr; ++i) {
    float* ci = c + i * ldc;
    if (accumulate) {
      acc[i][0] = _mm512_add_ps(acc[i][0], _mm512_maskz_loadu_ps(m0, ci));
      acc[i][1] = _mm512_add_ps(acc[i][1], _mm512_maskz_loadu_ps(m1, ci + 16));
    }
    _mm512_mask_storeu_ps(ci, m0, acc[i][0]);
    _mm512_mask_storeu_ps(ci + 16, m1, acc[i][1]);
  }
}

// Values [k0, k0 + n) of quantized row `row` as bf16 (k0 and n multiples of 16,
// as the packing hands them over: groups are 32, 64 or 128 wide).
void dequant_bf16(const QWeight& q, int64_t K, int64_t row, int64_t k0, int64_t n,
                  uint16_t* dst) {
  const int64_t groups = K / q.group;
  const uint32_t* codes = q.codes + row * (K * q.bits / 32);
  const uint8_t* bytes = reinterpret_cast<const uint8_t*>(codes);
  for (int64_t k = k0; k < k0 + n; k += 16) {
    const int64_t g = row * groups + k / q.group;
    const __m512 s = _mm512_set1_ps(load_scalar(q.scales, q.sdtype, g));
    const __m512 b = _mm512_set1_ps(load_scalar(q.biases, q.sdtype, g));
    __m512i v;
    if (q.bits == 8) {
      v = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(bytes + k)));
    } else if (q.bits == 4) {
      // Byte i holds codes 2i (low nibble) and 2i + 1 (high nibble).
      const __m128i x = _mm_cvtepu8_epi16(_mm_loadl_epi64(
          reinterpret_cast<const __m128i*>(bytes + k / 2)));
      const __m128i lo = _mm_and_si128(x, _mm_set1_epi16(15)), hi = _mm_srli_epi16(x, 4);
      v = _mm512_cvtepu16_epi32(
          _mm256_set_m128i(_mm_unpackhi_epi16(lo, hi), _mm_unpacklo_epi16(lo, hi)));
    } else {  // a little-endian bit stream; codes may straddle words
      alignas(64) uint32_t c[16];
      const uint32_t mask = (1u << q.bits) - 1;
      for (int i = 0; i < 16; ++i) {
        const int64_t bit = (k + i) * q.bits;
        uint64_t word = codes[bit >> 5];
        if ((bit & 31) + q.bits > 32) word |= uint64_t(codes[(bit >> 5) + 1]) << 32;
        c[i] = uint32_t(word >> (bit & 31)) & mask;
      }
      v = _mm512_load_si512(c);
    }
    const __m512 f = _mm512_fmadd_ps(_mm512_cvtepi32_ps(v), s, b);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + (k - k0)),
                        (__m256i)_mm512_cvtneps_pbh(f));
  }
}

// ---- bf16 x, bf16 W, up to 64 rows: register tiles ----
//
// A tile is R rows of x by NB rows of W, R * NB accumulators of 16 fp32 lanes;
// lane l of the (x row, W row) pair's accumulator takes the pairs k = 32s + 2l,
// 2l + 1 for s = 0, 1, ... in turn (a short last step masked to zeros), and the
// pair's sum is its 16 lanes reduced in one fixed order. Every pair sums the same
// way in every tile shape, one row alone included, so a row's result does not
// depend on the other rows of the call.

inline float reduce(__m512 v) {
  const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v),
                                 _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Which lines of W a tile prefetches while it computes: rows `ahead` rows past its
// own, one line of each every `period` steps of 32 values, from step `phase` on, so
// that the groups of x rows that share a block of W spread the next block's
// prefetches over all their passes and memory streams all the time.
constexpr int64_t kBf16Block = 24;  // rows of W kept in cache for every group of x rows

struct Prefetch {
  int64_t ahead;
  int period, phase;
};

template <int R, int NB>
inline void bf16_tile(const uint16_t* W, int64_t K, const uint16_t* x, int64_t ldx, int64_t n,
                      float* y, int64_t ldy, Prefetch pf) {
  __m512 acc[R][NB];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < NB; ++j) acc[r][j] = _mm512_setzero_ps();
  const uint16_t* w[NB];
  for (int j = 0; j < NB; ++j) w[j] = W + (n + j) * K;
  int64_t k = 0;
  int step = pf.period - pf.phase;
  for (; k + 32 <= K; k += 32) {
    // Rows of a few KB are too short for the hardware prefetcher to get ahead of.
    // Past W's end a prefetch does nothing.
    if (++step >= pf.period) {
      step = 0;
      for (int j = 0; j < NB; ++j) {
        const char* line = reinterpret_cast<const char*>(w[j] + pf.ahead * K + k);
        if (pf.ahead != kBf16Block) {  // the next tile's rows
          _mm_prefetch(line, _MM_HINT_T0);
        } else {  // the next block: into L2 (into L1 it evicts x: 7.3x vs 4.9x at 8 rows)
          _mm_prefetch(line, _MM_HINT_T1);
        }
      }
    }
    __m512bh wv[NB];
    for (int j = 0; j < NB; ++j) wv[j] = (__m512bh)_mm512_loadu_si512(w[j] + k);
    for (int r = 0; r < R; ++r) {
      const __m512bh xv = (__m512bh)_mm512_loadu_si512(x + r * ldx + k);
      for (int j = 0; j < NB; ++j) acc[r][j] = _mm512_dpbf16_ps(acc[r][j], xv, wv[j]);
    }
  }
  if (k < K) {
    const __mmask32 mask = (uint32_t(1) << (K - k)) - 1;
    __m512bh wv[NB];
    for (int j = 0; j < NB; ++j) wv[j] = (__m512bh)_mm512_maskz_loadu_epi16(mask, w[j] + k);
    for (int r = 0; r < R; ++r) {
      const __m512bh xv = (__m512bh)_mm512_maskz_loadu_epi16(mask, x + r * ldx + k);
      for (int j = 0; j < NB; ++j) acc[r][j] = _mm512_dpbf16_ps(acc[r][j], xv, wv[j]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < NB; ++j) y[r * ldy + n + j] = reduce(acc[r][j]);
}

// R rows of x over W rows [n0, n1): NB at a time, single rows at the end.
// Registers: R * NB accumulators, NB rows of W and one of x, at most 32.
template <int R>
inline void bf16_group(const uint16_t* W, int64_t K, const uint16_t* x, int64_t ldx, int64_t n0,
                       int64_t n1, float* y, int64_t ldy, Prefetch pf) {
  constexpr int NB = R >= 5 ? 3 : R >= 2 ? 6 : 8;
  int64_t n = n0;
  const bool next_tile = pf.ahead == 0;  // one group: each tile fetches the next one's rows
  for (; n + NB <= n1; n += NB)
    bf16_tile<R, NB>(W, K, x, ldx, n, y, ldy, next_tile ? Prefetch{NB, 1, 0} : pf);
  for (; n < n1; ++n) bf16_tile<R, 1>(W, K, x, ldx, n, y, ldy, next_tile ? Prefetch{1, 1, 0} : pf);
}

inline void bf16_rows(int R, const uint16_t* W, int64_t K, const uint16_t* x, int64_t n0,
                      int64_t n1, float* y, int64_t ldy, Prefetch pf) {
  switch (R) {
    case 8: return bf16_group<8>(W, K, x, K, n0, n1, y, ldy, pf);
    case 7: return bf16_group<7>(W, K, x, K, n0, n1, y, ldy, pf);
    case 6: return bf16_group<6>(W, K, x, K, n0, n1, y, ldy, pf);
    case 5: return bf16_group<5>(W, K, x, K, n0, n1, y, ldy, pf);
    case 4: return bf16_group<4>(W, K, x, K, n0, n1, y, ldy, pf);
    case 3: return bf16_group<3>(W, K, x, K, n0, n1, y, ldy, pf);
    case 2: return bf16_group<2>(W, K, x, K, n0, n1, y, ldy, pf);
    default: return bf16_group<1>(W, K, x, K, n0, n1, y, ldy, pf);
  }
}

// Rows of x per pass over a block: 8 x 3 tiles, so up to 8 rows read W from memory
// alone (passes of 4 x 6 tiles, the second from cache, measured 6.3x against 7.3x
// for 8 rows on Zen 4).
constexpr int kBf16Group = 8;

// W rows [n0, n1) in blocks of kBf16Block, each taken by every pass of up to
// kBf16Group x rows while it is in cache: pass(r0, R, b, e, prefetch) runs x rows
// r0 .. r0 + R - 1 over W rows [b, e), and the passes share the next block's
// prefetches.
template <class Pass>
inline void over_passes(int m, int64_t n0, int64_t n1, Pass pass) {
  const int passes = (m + kBf16Group - 1) / kBf16Group;
  for (int64_t b = n0; b < n1; b += kBf16Block) {
    const int64_t e = std::min(n1, b + kBf16Block);
    for (int p = 0; p < passes; ++p) {
      const int r0 = p * kBf16Group;
      pass(r0, std::min(kBf16Group, m - r0), b, e, Prefetch{kBf16Block, passes, p});
    }
  }
}

}  // namespace

// One row: tiles of 8 rows of W over all of [n0, n1). More: W rows in blocks of
// kBf16Block, each read from memory once and from cache by every group of up to
// eight x rows while every pass prefetches its share of the next block.
void gemv_bf16_avx512(const Weight& w, const uint16_t* x, int m, int64_t n0, int64_t n1,
                      float* y, int64_t ldy) {
  const auto* W = static_cast<const uint16_t*>(w.data);
  const int64_t K = w.K;
  if (m == 1) return bf16_rows(1, W, K, x, n0, n1, y, ldy, Prefetch{0, 1, 0});
  over_passes(m, n0, n1, [&](int r0, int R, int64_t b, int64_t e, Prefetch pf) {
    bf16_rows(R, W, K, x + r0 * K, b, e, y + r0 * ldy, ldy, pf);
  });
}

namespace {

// ---- 4- and 8-bit weights, bf16 or f16 x: VNNI int8 dot products ----
//
// x is rounded once per call to int8 per group, as the AVX2 int8 path does
// (scale sx = max|x| / 127: each value moves by at most 1/254 of its group's
// largest |x|), and the codes (unsigned) meet it in vpdpbusd: 64 products summed
// four to an int32 lane per instruction, exactly. A step is one 64-byte load of a
// row's codes: 64 values at 8 bits (lane l: values 4l..4l+3), 128 at 4 bits (the
// low nibbles are the even values, the high ones the odd: x is stored as 64 even
// then 64 odd values per block, and lane l takes values 8l..8l+7). Each step's
// int32 lanes become fp32 times W's scale and x's scale for their group, in the
// same order in every tile shape, so a row's result does not depend on the other
// rows of the call. The biases meet the rounded x through its per-group sums.
// K is padded to a whole step with zero codes and zero x.

template <int BITS>
constexpr int kStepValues = BITS == 4 ? 128 : 64;

inline bool vnni_path(const Weight& w) {
  return w.half_x && w.quantized() && (w.quant.bits == 4 || w.quant.bits == 8) &&
         (w.quant.group == 32 || w.quant.group == 64 || w.quant.group == 128);
}

// Layout of the prepared x, for m rows: int8 xq[m][Kp], then float sxl[m][steps][16]
// (each lane's x scale), then float qsum[m][groups] (sx times the group's sum of
// rounded values).
struct VnniX {
  const int8_t* xq;
  const float* sxl;
  const float* qsum;
  int64_t Kp, steps, groups;
};

inline VnniX vnni_layout(const Weight& w, const void* prepared, int m) {
  const int step = w.quant.bits == 4 ? kStepValues<4> : kStepValues<8>;
  VnniX v;
  v.Kp = (w.K + step - 1) / step * step;
  v.steps = v.Kp / step;
  v.groups = w.K / w.quant.group;
  const auto* base = static_cast<const uint8_t*>(prepared);
  v.xq = reinterpret_cast<const int8_t*>(base);
  v.sxl = reinterpret_cast<const float*>(base + int64_t(m) * v.Kp);
  v.qsum = v.sxl + int64_t(m) * v.steps * 16;
  return v;
}

void prepare_vnni(const Weight& w, const float* x, int m, std::vector<uint8_t>& out) {
  const int bits = w.quant.bits, G = w.quant.group;
  const int64_t K = w.K;
  const int step = bits == 4 ? kStepValues<4> : kStepValues<8>;
  const int per_lane = step / 16;
  const int64_t Kp = (K + step - 1) / step * step, steps = Kp / step, groups = K / G;
  out.assign(m * Kp + (m * steps * 16 + m * groups) * 4, 0);
  VnniX v = vnni_layout(w, out.data(), m);
  auto* xq = const_cast<int8_t*>(v.xq);
  auto* sxl = const_cast<float*>(v.sxl);
  auto* qsum = const_cast<float*>(v.qsum);
  std::vector<float> sx(groups);
  std::vector<int32_t> q(K);
  const __m512 sign = _mm512_set1_ps(-0.0f);
  for (int r = 0; r < m; ++r) {
    const float* xr = x + r * K;
    for (int64_t g = 0; g < groups; ++g) {
      __m512 mx = _mm512_setzero_ps();
      for (int64_t k = g * G; k < (g + 1) * G; k += 16)
        mx = _mm512_max_ps(mx, _mm512_andnot_ps(sign, _mm512_loadu_ps(xr + k)));
      const float top = _mm512_reduce_max_ps(mx);
      sx[g] = top / 127.0f;
      const __m512 inv = _mm512_set1_ps(top > 0 ? 127.0f / top : 0.0f);
      __m512i sum = _mm512_setzero_si512();
      for (int64_t k = g * G; k < (g + 1) * G; k += 16) {
        // Round to nearest, ties to even, as the AVX2 path's round_row.
        const __m512i qi = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(xr + k), inv));
        _mm512_storeu_si512(q.data() + k, qi);
        sum = _mm512_add_epi32(sum, qi);
      }
      qsum[r * groups + g] = float(_mm512_reduce_add_epi32(sum)) * sx[g];
    }
    int8_t* dst = xq + r * Kp;
    if (bits == 4) {
      for (int64_t k = 0; k < K; ++k) {
        const int64_t b = k / 128 * 128, i = k - b;
        dst[b + (i % 2) * 64 + i / 2] = int8_t(q[k]);
      }
    } else {
      for (int64_t k = 0; k < K; ++k) dst[k] = int8_t(q[k]);
    }
    for (int64_t s = 0; s < steps; ++s)
      for (int l = 0; l < 16; ++l) {
        const int64_t k = s * step + l * per_lane;
        sxl[(r * steps + s) * 16 + l] = k < K ? sx[k / G] : 0.0f;
      }
  }
}

// A row of scales or biases as fp32, zero past its end up to `padded` values.
inline void row_f32(const void* src, DType t, int64_t offset, int64_t n, int64_t padded,
                    float* dst) {
  int64_t i = 0;
  if (t == DType::BF16) {
    const auto* p = static_cast<const uint16_t*>(src) + offset;
    for (; i + 16 <= n; i += 16)
      _mm512_storeu_ps(dst + i, _mm512_castsi512_ps(_mm512_slli_epi32(
                                    _mm512_cvtepu16_epi32(_mm256_loadu_si256(
                                        reinterpret_cast<const __m256i*>(p + i))),
                                    16)));
  }
  for (; i < n; ++i) dst[i] = load_scalar(src, t, offset + i);
  for (; i < padded; ++i) dst[i] = 0.0f;
}

// The W scales of one step as lanes: groups per step GPS = 1, 2 or 4.
template <int GPS>
inline __m512 lane_scales(const float* sc) {
  if constexpr (GPS == 1) {
    return _mm512_set1_ps(*sc);
  } else if constexpr (GPS == 2) {
    return _mm512_permutexvar_ps(
        _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1), _mm512_loadu_ps(sc));
  } else {
    return _mm512_permutexvar_ps(
        _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3), _mm512_loadu_ps(sc));
  }
}

template <int BITS, int G, int R, int NB>
inline void vnni_tile(const Weight& w, const VnniX& v, int64_t n, float* y, int64_t ldy,
                      Prefetch pf) {
  constexpr int STEP = kStepValues<BITS>;
  // Groups a step covers (1 when a group spans steps), and the step a group starts on.
  constexpr int GPS = G >= STEP ? 1 : STEP / G;
  const QWeight& q = w.quant;
  const int64_t K = w.K, row_bytes = K * BITS / 8, groups = v.groups;
  const uint8_t* rows[NB];
  for (int j = 0; j < NB; ++j)
    rows[j] = reinterpret_cast<const uint8_t*>(q.codes) + (n + j) * row_bytes;
  // Scales (then biases) as fp32; thread_local lives behind a call in a shared
  // library, so the loops below use the plain pointer.
  thread_local std::vector<float> buffer;
  const int64_t padded = groups + 16;
  buffer.resize(NB * padded);
  float* const scales = buffer.data();
  for (int j = 0; j < NB; ++j)
    row_f32(q.scales, q.sdtype, (n + j) * groups, groups, padded, scales + j * padded);

  __m512 total[R][NB];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < NB; ++j) total[r][j] = _mm512_setzero_ps();
  const __m512i nibble = _mm512_set1_epi8(0x0f);
  int cycle = pf.period - pf.phase;
  for (int64_t s = 0; s < v.steps; ++s) {
    const int64_t byte0 = s * 64;
    if (++cycle >= pf.period) {
      cycle = 0;
      for (int j = 0; j < NB; ++j) {  // as bf16_tile: the next tile's rows, or the next block's
        const char* line = reinterpret_cast<const char*>(rows[j] + pf.ahead * row_bytes + byte0);
        if (pf.ahead != kBf16Block) {
          _mm_prefetch(line, _MM_HINT_T0);
        } else {
          _mm_prefetch(line, _MM_HINT_T1);
        }
      }
    }
    const int64_t left = row_bytes - byte0;
    const __mmask64 mask = left >= 64 ? ~__mmask64(0) : (__mmask64(1) << left) - 1;
    __m512i lo[NB], hi[NB];
    __m512 sw[NB];
    const int64_t g = s * STEP / G;
    for (int j = 0; j < NB; ++j) {
      const __m512i c = _mm512_maskz_loadu_epi8(mask, rows[j] + byte0);
      if constexpr (BITS == 4) {
        lo[j] = _mm512_and_si512(c, nibble);
        hi[j] = _mm512_and_si512(_mm512_srli_epi16(c, 4), nibble);
      } else {
        lo[j] = c;
      }
      sw[j] = lane_scales<GPS>(scales + j * padded + g);
    }
    for (int r = 0; r < R; ++r) {
      const int8_t* xs = v.xq + r * v.Kp + s * STEP;
      const __m512i xe = _mm512_loadu_si512(xs);
      const __m512 sx = _mm512_loadu_ps(v.sxl + (r * v.steps + s) * 16);
      if constexpr (BITS == 4) {
        const __m512i xo = _mm512_loadu_si512(xs + 64);
        for (int j = 0; j < NB; ++j) {
          const __m512i acc = _mm512_dpbusd_epi32(
              _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo[j], xe), hi[j], xo);
          total[r][j] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(acc), sw[j]), sx,
                                        total[r][j]);
        }
      } else {
        for (int j = 0; j < NB; ++j) {
          const __m512i acc = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo[j], xe);
          total[r][j] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(acc), sw[j]), sx,
                                        total[r][j]);
        }
      }
    }
  }
  // The biases against the rounded x's per-group sums, 16 groups at a time.
  float* const biases = scales;  // the scales are done with
  for (int j = 0; j < NB; ++j) {
    row_f32(q.biases, q.sdtype, (n + j) * groups, groups, padded, biases);
    for (int r = 0; r < R; ++r) {
      const float* qs = v.qsum + r * groups;
      __m512 b = _mm512_setzero_ps();
      for (int64_t i = 0; i < groups; i += 16) {
        const __mmask16 mk = groups - i >= 16 ? 0xffff : __mmask16((1u << (groups - i)) - 1);
        b = _mm512_fmadd_ps(_mm512_loadu_ps(biases + i), _mm512_maskz_loadu_ps(mk, qs + i),
                            b);
      }
      y[r * ldy + n + j] = reduce(total[r][j]) + reduce(b);
    }
  }
}

template <int BITS, int G, int R>
inline void vnni_group(const Weight& w, const VnniX& v, int64_t n0, int64_t n1, float* y,
                       int64_t ldy, Prefetch pf) {
  // Registers: R * NB totals, one or two code vectors and a scale per W row, x.
  constexpr int NB = R >= 5 ? 2 : R >= 2 ? 3 : 4;
  const bool next_tile = pf.ahead == 0;
  int64_t n = n0;
  for (; n + NB <= n1; n += NB)
    vnni_tile<BITS, G, R, NB>(w, v, n, y, ldy, next_tile ? Prefetch{NB, 1, 0} : pf);
  for (; n < n1; ++n) vnni_tile<BITS, G, R, 1>(w, v, n, y, ldy, next_tile ? Prefetch{1, 1, 0} : pf);
}

template <int BITS, int G>
void vnni_rows(const Weight& w, const void* prepared, int m, int64_t n0, int64_t n1, float* y,
               int64_t ldy) {
  const VnniX all = vnni_layout(w, prepared, m);
  auto run = [&](int r0, int R, int64_t b, int64_t e, Prefetch pf) {
    VnniX v = all;
    v.xq += r0 * all.Kp;
    v.sxl += r0 * all.steps * 16;
    v.qsum += r0 * all.groups;
    float* yr = y + r0 * ldy;
    switch (R) {
      case 8: return vnni_group<BITS, G, 8>(w, v, b, e, yr, ldy, pf);
      case 7: return vnni_group<BITS, G, 7>(w, v, b, e, yr, ldy, pf);
      case 6: return vnni_group<BITS, G, 6>(w, v, b, e, yr, ldy, pf);
      case 5: return vnni_group<BITS, G, 5>(w, v, b, e, yr, ldy, pf);
      case 4: return vnni_group<BITS, G, 4>(w, v, b, e, yr, ldy, pf);
      case 3: return vnni_group<BITS, G, 3>(w, v, b, e, yr, ldy, pf);
      case 2: return vnni_group<BITS, G, 2>(w, v, b, e, yr, ldy, pf);
      default: return vnni_group<BITS, G, 1>(w, v, b, e, yr, ldy, pf);
    }
  };
  // One row too takes blocks with the next one prefetched into L2: 1.3x the
  // next-tile prefetch's speed on Zen 4 (the codes are half or a quarter of bf16's
  // bytes per value, so the next tile is too close).
  over_passes(m, n0, n1, run);
}

template <int BITS>
void vnni_bits(const Weight& w, const void* prepared, int m, int64_t n0, int64_t n1, float* y,
               int64_t ldy) {
  switch (w.quant.group) {
    case 32: return vnni_rows<BITS, 32>(w, prepared, m, n0, n1, y, ldy);
    case 64: return vnni_rows<BITS, 64>(w, prepared, m, n0, n1, y, ldy);
    default: return vnni_rows<BITS, 128>(w, prepared, m, n0, n1, y, ldy);
  }
}

void prepare_avx512(const Weight& w, const float* x, int m, std::vector<uint8_t>& out) {
  if (vnni_path(w)) return prepare_vnni(w, x, m, out);
  isa_avx2().prepare(w, x, m, out);
}

void gemv_avx512(const Weight& w, const float* x, const float* xsum, const void* prepared, int m,
                 int64_t n0, int64_t n1, float* y, int64_t ldy) {
  if (!vnni_path(w)) return isa_avx2().gemv(w, x, xsum, prepared, m, n0, n1, y, ldy);
  if (w.quant.bits == 4) return vnni_bits<4>(w, prepared, m, n0, n1, y, ldy);
  return vnni_bits<8>(w, prepared, m, n0, n1, y, ldy);
}

}  // namespace

void gemm_bf16_avx512(const Weight& weight, const uint16_t* x, int64_t m, float* y) {
  const int64_t N = weight.N, K = weight.K;
  const uint16_t* w = static_cast<const uint16_t*>(weight.data);
  const int64_t pairs = (K + 1) / 2;
  const int64_t panels = (m + MR - 1) / MR;
  // x in panels of 12 rows: ap[p][kp][i] = x[12p + i, 2kp .. 2kp + 1].
  std::vector<uint32_t> ap(panels * pairs * MR);
  parallel_for(int(panels), [&](int p) {
    uint32_t* dst = ap.data() + p * pairs * MR;
    for (int i = 0; i < MR; ++i) {
      const int64_t row = p * MR + i;
      if (row >= m) {
        for (int64_t q = 0; q < pairs; ++q) dst[q * MR + i] = 0;
        continue;
      }
      const uint16_t* src = x + row * K;
      for (int64_t q = 0; q < pairs; ++q) dst[q * MR + i] = pair_at(src, 2 * q, K);
    }
  });
  const int tasks = int((N + NCOLS - 1) / NCOLS);
  parallel_for(tasks, [&](int t) {
    thread_local std::vector<uint32_t> bp;
    thread_local std::vector<uint16_t> seg;  // one quantized row's values, as bf16
    bp.resize(NCOLS * KP);
    seg.resize(2 * KP);
    const int64_t n0 = t * NCOLS, nc = std::min(NCOLS, N - n0);
    for (int64_t q0 = 0; q0 < pairs; q0 += KP) {
      const int64_t kp = std::min(KP, pairs - q0);
      // W's columns in panels of 32: bp[panel][q][j] = W[n0 + 32 panel + j, 2q .. 2q + 1].
      for (int64_t j0 = 0; j0 < nc; j0 += NR) {
        uint32_t* dst = bp.data() + j0 * kp;
        for (int j = 0; j < NR; ++j) {
          const int64_t n = n0 + j0 + j;
          if (n >= N) {
            for (int64_t q = 0; q < kp; ++q) dst[q * NR + j] = 0;
            continue;
          }
          if (weight.quantized()) {  // K is a multiple of the group, so even
            dequant_bf16(weight.quant, K, n, 2 * q0, 2 * kp, seg.data());
            for (int64_t q = 0; q < kp; ++q) {
              uint32_t v;
              std::memcpy(&v, seg.data() + 2 * q, 4);
              dst[q * NR + j] = v;
            }
            continue;
          }
          const uint16_t* row = w + n * K;
          if (K % 2 == 0) {
            const int64_t full = kp;
            for (int64_t q = 0; q < full; ++q) {
              uint32_t v;
              std::memcpy(&v, row + 2 * (q0 + q), 4);
              dst[q * NR + j] = v;
            }
          } else {
            for (int64_t q = 0; q < kp; ++q) dst[q * NR + j] = pair_at(row, 2 * (q0 + q), K);
          }
        }
      }
      for (int64_t j0 = 0; j0 < nc; j0 += NR) {
        const int nr = int(std::min<int64_t>(NR, nc - j0));
        for (int64_t p = 0; p < panels; ++p) {
          const int mr = int(std::min<int64_t>(MR, m - p * MR));
          micro(ap.data() + p * pairs * MR + q0 * MR, bp.data() + j0 * kp, kp,
                y + p * MR * N + n0 + j0, N, mr, nr, q0 > 0);
        }
      }
    }
  });
}

const Isa& isa_avx512() {
  const Isa& avx2 = isa_avx2();
  static const Isa isa{"avx512",         prepare_avx512,    gemv_avx512, avx2.pack,
                       avx2.micro,       avx2.gemv_supports, avx2.read, gemm_bf16_avx512,
                       gemv_bf16_avx512, 64,                avx2.swiglu};
  return isa;
}

}  // namespace hk
