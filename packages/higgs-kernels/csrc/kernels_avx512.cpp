// Kernels for CPUs with AVX512-BF16 and AVX512-VNNI (AMD Zen 4 and later, Intel
// Cooper Lake, Sapphire Rapids):
// - bf16 x against bf16 W, 1 to 64 rows (a decode batch): vdpbf16ps multiplies
//   pairs of bf16 exactly and accumulates in fp32, rows register-tiled against
//   W, which is read from memory once;
// - 4- and 8-bit W against bf16 or f16 x, 1 to 64 rows: x rounded to int8 per
//   group, vpdpbusd against W taken 16 rows to a tile (exact int32 group sums);
// - prefill for more rows: vdpbf16ps over packed panels. W is bf16, or
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
// largest |x|), and meets W's codes (unsigned) in vpdpbusd, four products summed
// exactly into an int32 lane per instruction.
//
// W is taken 16 rows at a time, one row per lane: each 64-byte piece of the 16
// rows is transposed so that dword t of every row shares a register, and that
// register meets dword t of each x row broadcast. A lane then sums its row's
// group exactly in int32, whatever the row count, and the group's float work
// (convert, times W's scale and x's scale, plus W's bias times x's group sum) is
// one vector for 16 W rows, in the same order for every x row: a row's result
// does not depend on the other rows of the call. The transpose is paid once per
// 16 W rows and shared by every x row; the float work once per group rather
// than once per 64 values.
//
// 8 bits: dword t of a group holds its values 4t..4t+3. 4 bits: dword t holds
// values 8t..8t+7, the low nibbles the even ones and the high nibbles the odd
// ones, so x is stored as [x0 x2 x4 x6 x1 x3 x5 x7] per 8 values.

inline bool vnni_path(const Weight& w) {
  return w.half_x && w.quantized() && (w.quant.bits == 4 || w.quant.bits == 8) &&
         (w.quant.group == 32 || w.quant.group == 64 || w.quant.group == 128);
}

// Layout of the prepared x, for m rows: int8 xq[m][K], then float sx[m][groups]
// (x's scale per group), then float qsum[m][groups] (sx times the group's sum of
// rounded values, which meets W's biases).
struct VnniX {
  const int8_t* xq;
  const float* sx;
  const float* qsum;
  int64_t K, groups;
};

inline VnniX vnni_layout(const Weight& w, const void* prepared, int m) {
  VnniX v;
  v.K = w.K;
  v.groups = w.K / w.quant.group;
  const auto* base = static_cast<const uint8_t*>(prepared);
  v.xq = reinterpret_cast<const int8_t*>(base);
  v.sx = reinterpret_cast<const float*>(base + (int64_t(m) * v.K + 63) / 64 * 64);
  v.qsum = v.sx + int64_t(m) * v.groups;
  return v;
}

void prepare_vnni(const Weight& w, const float* x, int m, std::vector<uint8_t>& out) {
  const int bits = w.quant.bits, G = w.quant.group;
  const int64_t K = w.K, groups = K / G;
  out.assign((int64_t(m) * K + 63) / 64 * 64 + 2 * int64_t(m) * groups * 4, 0);
  VnniX v = vnni_layout(w, out.data(), m);
  auto* xq = const_cast<int8_t*>(v.xq);
  auto* sx = const_cast<float*>(v.sx);
  auto* qsum = const_cast<float*>(v.qsum);
  const __m512 sign = _mm512_set1_ps(-0.0f);
  // 4 bits: each 8 values as [x0 x2 x4 x6 x1 x3 x5 x7].
  const __m512i order = bits == 4 ? _mm512_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9,
                                                      11, 13, 15)
                                  : _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
                                                      13, 14, 15);
  for (int r = 0; r < m; ++r) {
    const float* xr = x + r * K;
    int8_t* dst = xq + r * K;
    for (int64_t g = 0; g < groups; ++g) {
      __m512 mx = _mm512_setzero_ps();
      for (int64_t k = g * G; k < (g + 1) * G; k += 16)
        mx = _mm512_max_ps(mx, _mm512_andnot_ps(sign, _mm512_loadu_ps(xr + k)));
      const float top = _mm512_reduce_max_ps(mx);
      sx[r * groups + g] = top / 127.0f;
      const __m512 inv = _mm512_set1_ps(top > 0 ? 127.0f / top : 0.0f);
      __m512i sum = _mm512_setzero_si512();
      for (int64_t k = g * G; k < (g + 1) * G; k += 16) {
        // Round to nearest, ties to even, as the AVX2 path's round_row.
        const __m512i qi = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(xr + k), inv));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + k),
                         _mm512_cvtepi32_epi8(_mm512_permutexvar_epi32(order, qi)));
        sum = _mm512_add_epi32(sum, qi);
      }
      qsum[r * groups + g] = float(_mm512_reduce_add_epi32(sum)) * sx[r * groups + g];
    }
  }
}

// Rows r[i] of 16 dwords transposed in place: afterwards r[t] lane i holds what
// r[i] lane t held (dwords, then quadwords, then 128-bit lanes twice).
inline void transpose16(__m512i (&r)[16]) {
  __m512i a[16], b[16];
  for (int p = 0; p < 8; ++p) {
    a[2 * p] = _mm512_unpacklo_epi32(r[2 * p], r[2 * p + 1]);
    a[2 * p + 1] = _mm512_unpackhi_epi32(r[2 * p], r[2 * p + 1]);
  }
  for (int Q = 0; Q < 4; ++Q) {
    b[4 * Q + 0] = _mm512_unpacklo_epi64(a[4 * Q], a[4 * Q + 2]);
    b[4 * Q + 1] = _mm512_unpackhi_epi64(a[4 * Q], a[4 * Q + 2]);
    b[4 * Q + 2] = _mm512_unpacklo_epi64(a[4 * Q + 1], a[4 * Q + 3]);
    b[4 * Q + 3] = _mm512_unpackhi_epi64(a[4 * Q + 1], a[4 * Q + 3]);
  }
  for (int c = 0; c < 4; ++c) {
    const __m512i p0 = _mm512_shuffle_i32x4(b[c], b[4 + c], 0x44);
    const __m512i p1 = _mm512_shuffle_i32x4(b[c], b[4 + c], 0xee);
    const __m512i p2 = _mm512_shuffle_i32x4(b[8 + c], b[12 + c], 0x44);
    const __m512i p3 = _mm512_shuffle_i32x4(b[8 + c], b[12 + c], 0xee);
    r[c] = _mm512_shuffle_i32x4(p0, p2, 0x88);
    r[4 + c] = _mm512_shuffle_i32x4(p0, p2, 0xdd);
    r[8 + c] = _mm512_shuffle_i32x4(p1, p3, 0x88);
    r[12 + c] = _mm512_shuffle_i32x4(p1, p3, 0xdd);
  }
}

// Up to 16 values [offset, offset + n) of scales or biases as fp32, zero past n.
inline __m512 load16_f32(const void* src, DType t, int64_t offset, int n) {
  const __mmask16 mk = n >= 16 ? 0xffff : __mmask16((1u << n) - 1);
  if (t == DType::F32) return _mm512_maskz_loadu_ps(mk, static_cast<const float*>(src) + offset);
  const __m256i h = _mm256_maskz_loadu_epi16(mk, static_cast<const uint16_t*>(src) + offset);
  if (t == DType::F16) return _mm512_cvtph_ps(h);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

// The codes of one group, transposed: DPG dwords for 16 W rows, plus the number
// of groups in a 64-byte piece of a row (groups narrower than a piece share it).
template <int BITS, int G>
struct VnniShape {
  static constexpr int DPG = G * BITS / 32;                // dwords per group per row
  static constexpr int PIECE = DPG >= 16 ? DPG : 16;       // dwords transposed at once
  static constexpr int GPP = PIECE / DPG;                  // groups per piece
};

// acc + the unsigned bytes of c times the signed dword at x broadcast, in one
// instruction: GCC 12 keeps a separate vpbroadcastd for _mm512_set1_epi32.
inline __m512i dpbusd_bcast(__m512i acc, __m512i c, const int8_t* x) {
  asm("vpdpbusd %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(c), "m"(*reinterpret_cast<const int32_t*>(x)));
  return acc;
}

// RC x rows (SPLIT chains each, so that a lone row still keeps the dot-product
// unit busy: integer sums are exact in any order) over one group of 16 W rows.
template <int BITS, int DPG, int RC, int SPLIT>
inline void vnni_group_rows(const __m512i* cols, const int8_t* x, int64_t K, __m512i* out) {
  __m512i acc[RC][SPLIT];
  for (int r = 0; r < RC; ++r)
    for (int s = 0; s < SPLIT; ++s) acc[r][s] = _mm512_setzero_si512();
  // Unrolled, so that acc[r][t % SPLIT] names registers.
#pragma GCC unroll 32
  for (int t = 0; t < DPG; ++t) {
    if constexpr (BITS == 4) {
      const __m512i lo = cols[2 * t], hi = cols[2 * t + 1];
      for (int r = 0; r < RC; ++r) {
        __m512i& a = acc[r][t % SPLIT];
        a = dpbusd_bcast(dpbusd_bcast(a, lo, x + r * K + 8 * t), hi, x + r * K + 8 * t + 4);
      }
    } else {
      const __m512i c = cols[t];
      for (int r = 0; r < RC; ++r) {
        __m512i& a = acc[r][t % SPLIT];
        a = dpbusd_bcast(a, c, x + r * K + 4 * t);
      }
    }
  }
  for (int r = 0; r < RC; ++r) {
    __m512i s = acc[r][0];
    for (int i = 1; i < SPLIT; ++i) s = _mm512_add_epi32(s, acc[r][i]);
    out[r] = s;
  }
}

template <int BITS, int DPG>
inline void vnni_rows_of_group(const __m512i* cols, const int8_t* x, int64_t K, int R,
                               __m512i* out) {
  switch (R) {
    case 8: return vnni_group_rows<BITS, DPG, 8, 1>(cols, x, K, out);
    case 7: return vnni_group_rows<BITS, DPG, 7, 1>(cols, x, K, out);
    case 6: return vnni_group_rows<BITS, DPG, 6, 1>(cols, x, K, out);
    case 5: return vnni_group_rows<BITS, DPG, 5, 1>(cols, x, K, out);
    case 4: return vnni_group_rows<BITS, DPG, 4, 1>(cols, x, K, out);
    case 3: return vnni_group_rows<BITS, DPG, 3, 2>(cols, x, K, out);
    case 2: return vnni_group_rows<BITS, DPG, 2, 2>(cols, x, K, out);
    default: return vnni_group_rows<BITS, DPG, 1, 4>(cols, x, K, out);
  }
}

// W rows [n, n + live) (live <= 16) against all m rows of x; `work` holds
// 16 * 16 fp32 scales and biases, the transposed codes of a piece and m
// accumulators of 16 fp32 lanes.
// The scales and biases of W rows [n, n + live) for groups [g0, g0 + 16), one
// vector of 16 rows per group (zero past the rows and groups).
inline void scale_tables(const QWeight& q, int64_t n, int live, int64_t groups, int64_t g0,
                         float* st, float* bt) {
  const int ng = int(std::min<int64_t>(16, groups - g0));
  for (int part = 0; part < 2; ++part) {
    __m512i t[16];
    for (int i = 0; i < 16; ++i)
      t[i] = i < live ? _mm512_castps_si512(load16_f32(part ? q.biases : q.scales, q.sdtype,
                                                       (n + i) * groups + g0, ng))
                      : _mm512_setzero_si512();
    transpose16(t);
    float* dst = part ? bt : st;
    for (int i = 0; i < 16; ++i) _mm512_store_si512(dst + 16 * i, t[i]);
  }
}

// A group's float work for one x row, the same in every path: its exact int32 sums
// (one lane per W row) times W's scales times x's scale, plus W's biases times x's
// scaled group sum.
inline __m512 group_total(__m512 total, __m512i sums, __m512 sw, __m512 bw, float sx, float qsum) {
  const __m512 t = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums), _mm512_mul_ps(sw, _mm512_set1_ps(sx)),
                                   total);
  return _mm512_fmadd_ps(bw, _mm512_set1_ps(qsum), t);
}

// Sixteen int32 vectors v[i] (W row i), each holding GPU groups of 16 / GPU
// consecutive lanes: out[j] lane i is the sum of v[i]'s lanes of group j.
template <int GPU>
inline void reduce_rows(const __m512i (&v)[16], __m512i* out) {
  __m512i u[8], w[4];
  for (int p = 0; p < 8; ++p)  // per 128-bit lane: [a0+a2, b0+b2, a1+a3, b1+b3]
    u[p] = _mm512_add_epi32(_mm512_unpacklo_epi32(v[2 * p], v[2 * p + 1]),
                            _mm512_unpackhi_epi32(v[2 * p], v[2 * p + 1]));
  for (int p = 0; p < 4; ++p)  // lane 4k + i: row 4p + i's sum over 128-bit lane k
    w[p] = _mm512_add_epi32(_mm512_unpacklo_epi64(u[2 * p], u[2 * p + 1]),
                            _mm512_unpackhi_epi64(u[2 * p], u[2 * p + 1]));
  if constexpr (GPU == 4) {  // group j is 128-bit lane j: gather it from the four
    const __m512i a = _mm512_shuffle_i32x4(w[0], w[1], 0x44), b = _mm512_shuffle_i32x4(w[0], w[1], 0xee);
    const __m512i c = _mm512_shuffle_i32x4(w[2], w[3], 0x44), d = _mm512_shuffle_i32x4(w[2], w[3], 0xee);
    out[0] = _mm512_shuffle_i32x4(a, c, 0x88);
    out[1] = _mm512_shuffle_i32x4(a, c, 0xdd);
    out[2] = _mm512_shuffle_i32x4(b, d, 0x88);
    out[3] = _mm512_shuffle_i32x4(b, d, 0xdd);
  } else {
    // 128-bit lanes 0 + 1 and 2 + 3: rows 4p..4p+3 of group 0, then group 1.
    const __m512i y0 = _mm512_add_epi32(_mm512_shuffle_i32x4(w[0], w[1], 0x88),
                                        _mm512_shuffle_i32x4(w[0], w[1], 0xdd));
    const __m512i y1 = _mm512_add_epi32(_mm512_shuffle_i32x4(w[2], w[3], 0x88),
                                        _mm512_shuffle_i32x4(w[2], w[3], 0xdd));
    // y0: [rows 0-3 g0, rows 0-3 g1, rows 4-7 g0, rows 4-7 g1], y1 likewise for 8-15.
    const __m512i g0 = _mm512_shuffle_i32x4(y0, y1, 0x88), g1 = _mm512_shuffle_i32x4(y0, y1, 0xdd);
    if constexpr (GPU == 2) {
      out[0] = g0;
      out[1] = g1;
    } else {
      out[0] = _mm512_add_epi32(g0, g1);
    }
  }
}

// One x row: each W row's codes meet x in their own order (lane l of a 64-byte
// step takes its dword l), and reduce_rows turns the 16 rows' lanes into the same
// exact per-group sums the transposed tiles compute; no transpose of the codes.
template <int BITS, int G>
void vnni_tile_one(const Weight& w, const VnniX& v, int64_t n, int live, float* y, float* work,
                   int64_t ahead) {
  using S = VnniShape<BITS, G>;
  constexpr int UNIT = S::PIECE * 4;  // bytes of a row per unit: one or two steps of 64
  constexpr int GPU = S::GPP;
  const QWeight& q = w.quant;
  const int64_t row_bytes = w.K * BITS / 8, groups = v.groups;
  const uint8_t* rows[16];
  for (int i = 0; i < 16; ++i)
    rows[i] = reinterpret_cast<const uint8_t*>(q.codes) + (n + std::min(i, live - 1)) * row_bytes;
  float* const st = work;
  float* const bt = st + 256;
  __m512 total = _mm512_setzero_ps();
  const __m512i nibble = _mm512_set1_epi8(0x0f);
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  const int64_t units = (row_bytes + UNIT - 1) / UNIT;
  for (int64_t u = 0; u < units; ++u) {
    const int64_t g0 = u * GPU;
    if (g0 % 16 == 0) scale_tables(q, n, live, groups, g0, st, bt);
    __m512i acc[16];
    for (int i = 0; i < 16; ++i) acc[i] = _mm512_setzero_si512();
    for (int h = 0; h < UNIT; h += 64) {
      const int64_t byte0 = u * UNIT + h, left = row_bytes - byte0;
      if (left <= 0) break;
      const __mmask64 mask = left >= 64 ? ~__mmask64(0) : (__mmask64(1) << left) - 1;
      const int8_t* xs = v.xq + byte0 * 8 / BITS;  // x values from byte0's first code on
      // Past K the x bytes may be another row's or beyond: the codes there are
      // masked to zero, and x is masked too.
      const int64_t xleft = v.K - byte0 * 8 / BITS;
      if constexpr (BITS == 4) {
        const __mmask64 m0 = xleft >= 64 ? ~__mmask64(0) : (__mmask64(1) << xleft) - 1;
        const __mmask64 m1 = xleft >= 128 ? ~__mmask64(0)
                             : xleft > 64 ? (__mmask64(1) << (xleft - 64)) - 1 : 0;
        const __m512i a = _mm512_maskz_loadu_epi8(m0, xs), b = _mm512_maskz_loadu_epi8(m1, xs + 64);
        const __m512i xe = _mm512_permutex2var_epi32(a, even, b);
        const __m512i xo = _mm512_permutex2var_epi32(a, odd, b);
        for (int i = 0; i < 16; ++i) {
          _mm_prefetch(reinterpret_cast<const char*>(rows[i] + ahead + byte0), _MM_HINT_T1);
          const __m512i c = _mm512_maskz_loadu_epi8(mask, rows[i] + byte0);
          acc[i] = _mm512_dpbusd_epi32(acc[i], _mm512_and_si512(c, nibble), xe);
          acc[i] = _mm512_dpbusd_epi32(acc[i], _mm512_and_si512(_mm512_srli_epi16(c, 4), nibble), xo);
        }
      } else {
        const __m512i xv = _mm512_maskz_loadu_epi8(mask, xs);
        for (int i = 0; i < 16; ++i) {
          _mm_prefetch(reinterpret_cast<const char*>(rows[i] + ahead + byte0), _MM_HINT_T1);
          acc[i] = _mm512_dpbusd_epi32(acc[i], _mm512_maskz_loadu_epi8(mask, rows[i] + byte0), xv);
        }
      }
    }
    __m512i sums[GPU];
    reduce_rows<GPU>(acc, sums);
    for (int gi = 0; gi < GPU && g0 + gi < groups; ++gi) {
      const int64_t g = g0 + gi;
      total = group_total(total, sums[gi], _mm512_load_ps(st + 16 * (g % 16)),
                          _mm512_load_ps(bt + 16 * (g % 16)), v.sx[g], v.qsum[g]);
    }
  }
  _mm512_mask_storeu_ps(y + n, __mmask16((1u << live) - 1), total);
}

template <int BITS, int G>
void vnni_tile(const Weight& w, const VnniX& v, int m, int64_t n, int live, float* y,
               int64_t ldy, float* work, int64_t ahead) {
  using S = VnniShape<BITS, G>;
  const QWeight& q = w.quant;
  const int64_t row_bytes = w.K * BITS / 8, groups = v.groups;
  const uint8_t* rows[16];
  for (int i = 0; i < 16; ++i)
    rows[i] = reinterpret_cast<const uint8_t*>(q.codes) + (n + std::min(i, live - 1)) * row_bytes;
  float* const st = work;           // [16 groups][16 rows] scales
  float* const bt = st + 256;       // biases
  auto* const cols = reinterpret_cast<__m512i*>(bt + 256);  // [PIECE or 2 PIECE]
  __m512* const total = reinterpret_cast<__m512*>(cols + 2 * S::PIECE);  // [m]
  for (int r = 0; r < m; ++r) total[r] = _mm512_setzero_ps();

  const int64_t pieces = (row_bytes + S::PIECE * 4 - 1) / (S::PIECE * 4);
  for (int64_t p = 0; p < pieces; ++p) {
    const int64_t g0 = p * S::GPP;
    if (g0 % 16 == 0) scale_tables(q, n, live, groups, g0, st, bt);
    // The piece's codes: 16 rows of PIECE dwords, transposed 16 dwords at a time.
    for (int h = 0; h < S::PIECE; h += 16) {
      const int64_t byte0 = p * S::PIECE * 4 + h * 4, left = row_bytes - byte0;
      const __mmask64 mask = left >= 64 ? ~__mmask64(0) : (__mmask64(1) << left) - 1;
      __m512i t[16];
      for (int i = 0; i < 16; ++i) {
        // The next tile's rows, into L2 while this one computes.
        _mm_prefetch(reinterpret_cast<const char*>(rows[i] + ahead + byte0), _MM_HINT_T1);
        t[i] = _mm512_maskz_loadu_epi8(mask, rows[i] + byte0);
      }
      transpose16(t);
      for (int i = 0; i < 16; ++i) {
        if constexpr (BITS == 4) {
          const __m512i nibble = _mm512_set1_epi8(0x0f);
          cols[2 * (h + i)] = _mm512_and_si512(t[i], nibble);
          cols[2 * (h + i) + 1] = _mm512_and_si512(_mm512_srli_epi16(t[i], 4), nibble);
        } else {
          cols[h + i] = t[i];
        }
      }
    }
    for (int gi = 0; gi < S::GPP && g0 + gi < groups; ++gi) {
      const int64_t g = g0 + gi;
      const __m512 sw = _mm512_load_ps(st + 16 * (g % 16));
      const __m512 bw = _mm512_load_ps(bt + 16 * (g % 16));
      const __m512i* gc = cols + gi * S::DPG * (BITS == 4 ? 2 : 1);
      for (int r0 = 0; r0 < m; r0 += 8) {
        const int R = std::min(8, m - r0);
        __m512i sums[8];
        vnni_rows_of_group<BITS, S::DPG>(gc, v.xq + r0 * v.K + g * G, v.K, R, sums);
        for (int r = 0; r < R; ++r) {
          const int64_t at = (r0 + r) * groups + g;
          total[r0 + r] = group_total(total[r0 + r], sums[r], sw, bw, v.sx[at], v.qsum[at]);
        }
      }
    }
  }
  const __mmask16 out = __mmask16((1u << live) - 1);
  for (int r = 0; r < m; ++r) _mm512_mask_storeu_ps(y + r * ldy + n, out, total[r]);
}

template <int BITS, int G>
void vnni_rows(const Weight& w, const void* prepared, int m, int64_t n0, int64_t n1, float* y,
               int64_t ldy) {
  using S = VnniShape<BITS, G>;
  const VnniX v = vnni_layout(w, prepared, m);
  // thread_local lives behind a call in a shared library: fetch it once.
  thread_local std::vector<__m512> buffer;
  buffer.resize(32 + 2 * S::PIECE + m);
  float* const work = reinterpret_cast<float*>(buffer.data());
  const int64_t row_bytes = w.K * BITS / 8;
  for (int64_t n = n0; n < n1; n += 16) {
    const int live = int(std::min<int64_t>(16, n1 - n));
    const int64_t ahead = n + 16 < n1 ? 16 * row_bytes : 0;
    if (m == 1)
      vnni_tile_one<BITS, G>(w, v, n, live, y, work, ahead);
    else
      vnni_tile<BITS, G>(w, v, m, n, live, y, ldy, work, ahead);
  }
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

bool xsum_avx512(const Weight& w) {
  return !vnni_path(w) && isa_avx2().gemv_xsum(w);
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
  static const Isa isa{"avx512",         prepare_avx512,     gemv_avx512,  avx2.pack,
                       avx2.micro,       avx2.gemv_supports, xsum_avx512,  avx2.read,
                       gemm_bf16_avx512, gemv_bf16_avx512,   64,           avx2.swiglu};
  return isa;
}

}  // namespace hk
