// The attention kernels, written once over a vector type. Each instruction set's
// translation unit (attention_generic.cpp, attention_avx2.cpp, attention_avx512.cpp)
// includes this with its own traits and compiler flags:
//
//   struct Traits {
//     using V;                         // W fp32 lanes
//     static constexpr int W;
//     static constexpr int DECODE_ROWS;  // rows per pass of the decode kernel
//     static constexpr int ACC_REGS;   // registers the decode kernel may keep sums in
//     static constexpr int MR, NV;     // Q K^T tile: MR rows x NV vectors of keys
//     static constexpr int MR2, NV2;   // P V tile: MR2 rows x NV2 vectors of dims
//     zero, set1, load, store, add, sub, mul, max, fma(a, b, c) = a * b + c,
//     hsum, hmax, hsum4(a, b, c, d, float out[4]), exp2 (0 below -126),
//     template <DType> load_as(const void* p, int64_t i): W values from element i
//   };
#pragma once

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "attention.h"

namespace hk {
namespace attn {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr float kLog2e = 1.44269504088896340736f;

inline int64_t round_up(int64_t n, int64_t m) {
  return (n + m - 1) / m * m;
}

// DT: the dtype of q, k, v. DC: the head dimension when fixed at compile time
// (64, 128), else 0 and read from the arguments.
template <class T, DType DT, int DC>
struct Impl {
  using V = typename T::V;
  static constexpr int W = T::W;
  static constexpr int64_t kElem = DT == DType::F32 ? 4 : 2;
  static constexpr int BK = 64;  // keys per block of the prefill kernel (a multiple of every NR)
  static constexpr int DBK = 256;  // keys per block of the decode kernel

  // bf16 rows are read 2W values per load and split into even and odd elements
  // (a shift and a mask: half the work of widening each half), so every 2W dims
  // of the decode kernel's q and o rows sit as [even | odd]; q is loaded in that
  // order and o put back on output.
  static constexpr bool kEvenOdd = DT == DType::BF16 && W > 1 && DC > 0 && DC % (2 * W) == 0;

  static int64_t slot(int64_t d) {
    if constexpr (!kEvenOdd) return d;
    const int64_t e = d % (2 * W);
    return d - e + (e % 2) * W + e / 2;
  }

  static int64_t dim(const AttnArgs& a) {
    return DC ? DC : a.D;
  }

  static const char* at(const void* base, int64_t elements) {
    return static_cast<const char*>(base) + elements * kElem;
  }

  // Row r of (b, kvh) -> its query vector.
  static const char* q_row(const AttnArgs& a, int64_t b, int64_t kvh, int64_t r) {
    const int64_t G = a.group(), h = kvh * G + r % G, i = r / G;
    return at(a.q, b * a.qs[0] + h * a.qs[1] + i * a.qs[2]);
  }

  // The row's softmax over keys it has seen so far, for the kernels below:
  // fold block scores s[0, n) (already in base 2, padded with -inf to a
  // multiple of W) into max m and sum l; s becomes the probabilities, and the
  // factor the old partial output must be scaled by is returned.
  static float online_softmax(float* s, int64_t n, float& m, float& l) {
    const int64_t padded = round_up(n, W);
    V vmax = T::set1(kNegInf);
    for (int64_t t = 0; t < padded; t += W) vmax = T::max(vmax, T::load(s + t));
    const float m_new = std::max(m, T::hmax(vmax));
    if (m_new == kNegInf) {  // nothing seen yet: every probability is 0
      std::fill(s, s + padded, 0.0f);
      return 1.0f;
    }
    const float corr = std::exp2(m - m_new);  // 0 when m is -inf
    const V vm = T::set1(m_new);
    V sum = T::zero();
    for (int64_t t = 0; t < padded; t += W) {
      V p = T::exp2(T::sub(T::load(s + t), vm));
      T::store(s + t, p);
      sum = T::add(sum, p);
    }
    l = l * corr + T::hsum(sum);
    m = m_new;
    return corr;
  }

  // ---------------------------------------------------------------- decode --
  // Few rows: per key, R dot products reduced across lanes, then o += p v.

  // Scores of R rows (q: [R][D], pre-scaled) against KJ keys `spread` rows
  // apart, from k on; key u's score goes to s[r * lds + u * spread].
  template <int R, int KJ>
  static void scores(const float* q, const char* k, int64_t kstride, int64_t spread, int64_t D,
                     float* s, int64_t lds) {
    V acc[R][KJ];
    for (int r = 0; r < R; ++r)
      for (int u = 0; u < KJ; ++u) acc[r][u] = T::zero();
    const int64_t step = spread * kstride * kElem;
    if constexpr (kEvenOdd) {
      for (int64_t c = 0; c < D; c += 2 * W) {
        V ke[KJ], ko[KJ];
        for (int u = 0; u < KJ; ++u) T::load_bf16_split(k + u * step, c, ke[u], ko[u]);
        for (int r = 0; r < R; ++r) {
          const V qe = T::load(q + r * D + c), qo = T::load(q + r * D + c + W);
          for (int u = 0; u < KJ; ++u) acc[r][u] = T::fma(qo, ko[u], T::fma(qe, ke[u], acc[r][u]));
        }
      }
    } else {
      for (int64_t c = 0; c < D; c += W) {
        V kv[KJ];
        for (int u = 0; u < KJ; ++u) kv[u] = T::template load_as<DT>(k + u * step, c);
        for (int r = 0; r < R; ++r) {
          const V qv = T::load(q + r * D + c);
          for (int u = 0; u < KJ; ++u) acc[r][u] = T::fma(qv, kv[u], acc[r][u]);
        }
      }
    }
    for (int r = 0; r < R; ++r) {
      float sums[KJ];
      if constexpr (KJ == 4) {
        T::hsum4(acc[r][0], acc[r][1], acc[r][2], acc[r][3], sums);
      } else {
        for (int u = 0; u < KJ; ++u) sums[u] = T::hsum(acc[r][u]);
      }
      for (int u = 0; u < KJ; ++u) s[r * lds + u * spread] = sums[u];
    }
  }

  // o[r][c0, c0 + NC W) = o * corr[r] + sum_t p[r][t] v[t][...] for R rows and
  // n keys, the sums in registers: each key's slice of v is read once. The keys
  // run as four interleaved sequential streams (each a quarter of the block):
  // four places in memory read at once keep more of it in flight than one.
  template <int R, int NC>
  static void accumulate_slice(const float* p, int64_t ldp, const char* v, int64_t vstride,
                               int64_t n, const float* corr, float* o, int64_t D, int64_t c0) {
    V acc[R][NC];
    for (int r = 0; r < R; ++r)
      for (int u = 0; u < NC; ++u)
        acc[r][u] = T::mul(T::load(o + r * D + c0 + u * W), T::set1(corr[r]));
    const int64_t step = vstride * kElem, quarter = n / 4;
    for (int64_t i = 0; i < n; ++i) {
      // Keys in the order of streams(): four runs of `quarter` keys, interleaved.
      const int64_t t = i < 4 * quarter ? (i % 4) * quarter + i / 4 : i;
      V vv[NC];
      if constexpr (kEvenOdd) {
        static_assert(NC % 2 == 0);
        for (int u = 0; u < NC; u += 2) T::load_bf16_split(v + t * step, c0 + u * W, vv[u], vv[u + 1]);
      } else {
        for (int u = 0; u < NC; ++u) vv[u] = T::template load_as<DT>(v + t * step, c0 + u * W);
      }
      for (int r = 0; r < R; ++r) {
        const V pr = T::set1(p[r * ldp + t]);
        for (int u = 0; u < NC; ++u) acc[r][u] = T::fma(pr, vv[u], acc[r][u]);
      }
    }
    for (int r = 0; r < R; ++r)
      for (int u = 0; u < NC; ++u) T::store(o + r * D + c0 + u * W, acc[r][u]);
  }

  // As many vectors of sums per row as the registers hold (a power of two, <= 8,
  // dividing D when that is known).
  template <int R>
  static constexpr int slice_vectors() {
    int nc = 1;
    while (nc < 8 && 2 * nc * R <= T::ACC_REGS && (DC == 0 || DC % (2 * nc * W) == 0)) nc *= 2;
    return nc;
  }

  template <int R>
  static void accumulate(const float* p, int64_t ldp, const char* v, int64_t vstride, int64_t n,
                         const float* corr, float* o, int64_t D) {
    constexpr int NC = slice_vectors<R>(), S = NC * W;
    const int64_t full = D - D % S;
    for (int64_t c = 0; c < full; c += S)
      accumulate_slice<R, NC>(p, ldp, v, vstride, n, corr, o, D, c);
    if constexpr (DC == 0 || DC % S != 0)
      for (int64_t c = full; c < D; c += W)
        accumulate_slice<R, 1>(p, ldp, v, vstride, n, corr, o, D, c);
  }

  template <int R>
  static void decode_pass(const AttnArgs& a, int64_t b, int64_t kvh, int64_t r0, int64_t j0,
                          int64_t j1, float* part) {
    const int64_t D = dim(a), G = a.group();
    thread_local std::vector<float> scratch;
    scratch.resize(R * (2 * D + DBK) + D);
    float* q = scratch.data();  // [R][D], scaled into base 2
    float* o = q + R * D;       // [R][D]
    float* s = o + R * D;       // [R][DBK]
    float* row = s + R * DBK;    // [D]: an output row in order
    float m[R], l[R], corr[R];
    int64_t seen[R];
    int64_t end = j0;
    const float qscale = a.scale * kLog2e;
    for (int r = 0; r < R; ++r) {
      const char* src = q_row(a, b, kvh, r0 + r);
      for (int64_t d = 0; d < D; ++d) q[r * D + slot(d)] = load_scalar(src, DT, d) * qscale;
      std::fill(o + r * D, o + (r + 1) * D, 0.0f);
      m[r] = kNegInf;
      l[r] = 0.0f;
      seen[r] = std::min(j1, a.keys_seen((r0 + r) / G));
      end = std::max(end, seen[r]);
    }
    const char* kbase = at(a.k, b * a.ks[0] + kvh * a.ks[1]);
    const char* vbase = at(a.v, b * a.vs[0] + kvh * a.vs[1]);
    for (int64_t jb = j0; jb < end; jb += DBK) {
      const int64_t n = std::min<int64_t>(DBK, end - jb);
      const char* k = kbase + jb * a.ks[2] * kElem;
      const int64_t quarter = n / 4;
      for (int64_t t = 0; t < quarter; ++t)
        scores<R, 4>(q, k + t * a.ks[2] * kElem, a.ks[2], quarter, D, s + t, DBK);
      for (int64_t t = 4 * quarter; t < n; ++t)
        scores<R, 1>(q, k + t * a.ks[2] * kElem, a.ks[2], 1, D, s + t, DBK);
      for (int r = 0; r < R; ++r) {
        float* sr = s + r * DBK;
        // Keys this row may not see (causal), and the padding, score -inf.
        const int64_t valid = std::clamp<int64_t>(seen[r] - jb, 0, n);
        for (int64_t u = valid; u < round_up(n, W); ++u) sr[u] = kNegInf;
        corr[r] = online_softmax(sr, n, m[r], l[r]);
      }
      accumulate<R>(s, DBK, vbase + jb * a.vs[2] * kElem, a.vs[2], n, corr, o, D);
    }
    for (int r = 0; r < R; ++r) {
      float* dst = part ? part + r * (D + 2) + 2 : row;
      for (int64_t d = 0; d < D; ++d) dst[d] = o[r * D + slot(d)];
      if (part) {
        dst[-2] = m[r];
        dst[-1] = l[r];
      } else {
        store_row(a, b, kvh, r0 + r, row, l[r] > 0 ? 1.0f / l[r] : 0.0f);
      }
    }
  }

  static void decode(const AttnArgs& a, int64_t b, int64_t kvh, int64_t r0, int64_t r1,
                     int64_t j0, int64_t j1, float* part) {
    constexpr int RB = T::DECODE_ROWS;
    static_assert(RB >= 1 && RB <= 4);
    const int64_t stride = dim(a) + 2;
    auto slot = [&](int64_t r) { return part ? part + (r - r0) * stride : nullptr; };
    int64_t r = r0;
    for (; r + RB <= r1; r += RB) decode_pass<RB>(a, b, kvh, r, j0, j1, slot(r));
    switch (r1 - r) {
      case 3:
        if constexpr (RB > 3) decode_pass<3>(a, b, kvh, r, j0, j1, slot(r));
        break;
      case 2:
        if constexpr (RB > 2) decode_pass<2>(a, b, kvh, r, j0, j1, slot(r));
        break;
      case 1:
        if constexpr (RB > 1) decode_pass<1>(a, b, kvh, r, j0, j1, slot(r));
        break;
      default:
        break;
    }
  }

  // --------------------------------------------------------------- prefill --
  // Many rows: per block of keys, S = Q K^T and O += P V as register-tiled
  // products over packed panels.

  static constexpr int MR = T::MR, NR = T::NV * T::W;
  static constexpr int MR2 = T::MR2;
  static_assert(BK % NR == 0 && MR % MR2 == 0);

  // S[MR][NR] = Qpanel^T Kpanel: qp[d * MR + i], kt[d * NR + j].
  static void micro_qk(const float* qp, const float* kt, int64_t D, float* s, int64_t lds) {
    constexpr int NV = T::NV;
    V acc[MR][NV];
    for (int i = 0; i < MR; ++i)
      for (int u = 0; u < NV; ++u) acc[i][u] = T::zero();
    for (int64_t d = 0; d < D; ++d) {
      V bv[NV];
      for (int u = 0; u < NV; ++u) bv[u] = T::load(kt + d * NR + u * W);
      for (int i = 0; i < MR; ++i) {
        const V av = T::set1(qp[d * MR + i]);
        for (int u = 0; u < NV; ++u) acc[i][u] = T::fma(av, bv[u], acc[i][u]);
      }
    }
    for (int i = 0; i < MR; ++i)
      for (int u = 0; u < NV; ++u) T::store(s + i * lds + u * W, acc[i][u]);
  }

  // O[MR2][NV * W] = O * corr + P[MR2][n] Vb[n][..]: p[i * ldp + t], vb[t * D + ..].
  template <int NV>
  static void micro_pv(const float* p, int64_t ldp, const float* vb, int64_t n, int64_t D,
                       const float* corr, float* o) {
    V acc[MR2][NV];
    for (int i = 0; i < MR2; ++i) {
      const V c = T::set1(corr[i]);
      for (int u = 0; u < NV; ++u) acc[i][u] = T::mul(T::load(o + i * D + u * W), c);
    }
    for (int64_t t = 0; t < n; ++t) {
      V bv[NV];
      for (int u = 0; u < NV; ++u) bv[u] = T::load(vb + t * D + u * W);
      for (int i = 0; i < MR2; ++i) {
        const V av = T::set1(p[i * ldp + t]);
        for (int u = 0; u < NV; ++u) acc[i][u] = T::fma(av, bv[u], acc[i][u]);
      }
    }
    for (int i = 0; i < MR2; ++i)
      for (int u = 0; u < NV; ++u) T::store(o + i * D + u * W, acc[i][u]);
  }

  static void prefill(const AttnArgs& a, int64_t b, int64_t kvh, int64_t i0, int64_t i1) {
    const int64_t D = dim(a), G = a.group();
    const int64_t rows = (i1 - i0) * G, padded = round_up(rows, MR);
    const int64_t panels = padded / MR;
    thread_local std::vector<float> scratch;
    scratch.resize(panels * MR * D + BK * D * 2 + padded * (BK + D + 3));
    float* qp = scratch.data();       // [panels][D][MR]
    float* kt = qp + panels * MR * D;  // [BK / NR][D][NR]
    float* vb = kt + BK * D;           // [BK][D]
    float* s = vb + BK * D;            // [padded][BK]
    float* o = s + padded * BK;        // [padded][D]
    float* m = o + padded * D;
    float* l = m + padded;
    float* corr = l + padded;
    for (int64_t p = 0; p < panels; ++p)
      for (int i = 0; i < MR; ++i) {
        const int64_t r = p * MR + i;
        float* dst = qp + p * MR * D + i;
        if (r < rows) {
          const char* src = q_row(a, b, kvh, i0 * G + r);
          for (int64_t d = 0; d < D; ++d) dst[d * MR] = load_scalar(src, DT, d);
        } else {
          for (int64_t d = 0; d < D; ++d) dst[d * MR] = 0.0f;
        }
      }
    std::fill(o, o + padded * D, 0.0f);
    std::fill(m, m + padded, kNegInf);
    std::fill(l, l + padded, 0.0f);
    std::fill(corr, corr + padded, 1.0f);
    // Rows past `rows` (tile padding) keep probabilities 0.
    std::fill(s + rows * BK, s + padded * BK, 0.0f);

    const float sscale = a.scale * kLog2e;
    const int64_t first_seen = a.keys_seen(i0), end = a.keys_seen(i1 - 1);
    const char* kbase = at(a.k, b * a.ks[0] + kvh * a.ks[1]);
    const char* vbase = at(a.v, b * a.vs[0] + kvh * a.vs[1]);
    for (int64_t jb = 0; jb < end; jb += BK) {
      const int64_t n = std::min<int64_t>(BK, end - jb), npanels = (n + NR - 1) / NR;
      // K^T in panels of NR keys (zero past n); V as fp32 rows.
      for (int64_t t = 0; t < npanels * NR; ++t) {
        float* dst = kt + (t / NR) * D * NR + t % NR;
        if (t < n) {
          const char* src = kbase + (jb + t) * a.ks[2] * kElem;
          for (int64_t d = 0; d < D; d += W) {
            alignas(64) float tmp[W];
            T::store(tmp, T::template load_as<DT>(src, d));
            for (int u = 0; u < W; ++u) dst[(d + u) * NR] = tmp[u];
          }
        } else {
          for (int64_t d = 0; d < D; ++d) dst[d * NR] = 0.0f;
        }
      }
      for (int64_t t = 0; t < n; ++t) {
        const char* src = vbase + (jb + t) * a.vs[2] * kElem;
        for (int64_t d = 0; d < D; d += W) T::store(vb + t * D + d, T::template load_as<DT>(src, d));
      }
      for (int64_t p = 0; p < panels; ++p)
        for (int64_t kp = 0; kp < npanels; ++kp)
          micro_qk(qp + p * MR * D, kt + kp * D * NR, D, s + p * MR * BK + kp * NR, BK);
      // Scale into base 2, mask, and fold into each row's softmax.
      const bool masked = jb + n > first_seen;
      const V vs = T::set1(sscale);
      for (int64_t r = 0; r < rows; ++r) {
        float* sr = s + r * BK;
        for (int64_t t = 0; t < n; t += W) T::store(sr + t, T::mul(T::load(sr + t), vs));
        int64_t valid = n;
        if (masked) valid = std::clamp<int64_t>(a.keys_seen(i0 + r / G) - jb, 0, n);
        for (int64_t t = valid; t < round_up(n, W); ++t) sr[t] = kNegInf;
        corr[r] = online_softmax(sr, n, m[r], l[r]);
      }
      for (int64_t r = 0; r < padded; r += MR2) {
        constexpr int S = T::NV2 * W;
        const int64_t full = D - D % S;
        for (int64_t d = 0; d < full; d += S)
          micro_pv<T::NV2>(s + r * BK, BK, vb + d, n, D, corr + r, o + r * D + d);
        if constexpr (DC == 0 || DC % S != 0)
          for (int64_t d = full; d < D; d += W)
            micro_pv<1>(s + r * BK, BK, vb + d, n, D, corr + r, o + r * D + d);
      }
    }
    for (int64_t r = 0; r < rows; ++r)
      store_row(a, b, kvh, i0 * G + r, o + r * D, l[r] > 0 ? 1.0f / l[r] : 0.0f);
  }
};

// The kernels for one instruction set, dispatched on dtype and head dimension.
template <class T>
struct Kernels {
  template <DType DT>
  static void decode_dt(const AttnArgs& a, int64_t b, int64_t kvh, int64_t r0, int64_t r1,
                        int64_t j0, int64_t j1, float* part) {
    switch (a.D) {
      case 64:
        return Impl<T, DT, 64>::decode(a, b, kvh, r0, r1, j0, j1, part);
      case 128:
        return Impl<T, DT, 128>::decode(a, b, kvh, r0, r1, j0, j1, part);
      default:
        return Impl<T, DT, 0>::decode(a, b, kvh, r0, r1, j0, j1, part);
    }
  }

  static void decode(const AttnArgs& a, int64_t b, int64_t kvh, int64_t r0, int64_t r1,
                     int64_t j0, int64_t j1, float* part) {
    switch (a.dtype) {
      case DType::F32:
        return decode_dt<DType::F32>(a, b, kvh, r0, r1, j0, j1, part);
      case DType::BF16:
        return decode_dt<DType::BF16>(a, b, kvh, r0, r1, j0, j1, part);
      default:
        return decode_dt<DType::F16>(a, b, kvh, r0, r1, j0, j1, part);
    }
  }

  template <DType DT>
  static void prefill_dt(const AttnArgs& a, int64_t b, int64_t kvh, int64_t i0, int64_t i1) {
    switch (a.D) {
      case 64:
        return Impl<T, DT, 64>::prefill(a, b, kvh, i0, i1);
      case 128:
        return Impl<T, DT, 128>::prefill(a, b, kvh, i0, i1);
      default:
        return Impl<T, DT, 0>::prefill(a, b, kvh, i0, i1);
    }
  }

  static void prefill(const AttnArgs& a, int64_t b, int64_t kvh, int64_t i0, int64_t i1) {
    switch (a.dtype) {
      case DType::F32:
        return prefill_dt<DType::F32>(a, b, kvh, i0, i1);
      case DType::BF16:
        return prefill_dt<DType::BF16>(a, b, kvh, i0, i1);
      default:
        return prefill_dt<DType::F16>(a, b, kvh, i0, i1);
    }
  }

  static bool supports(int64_t D) {
    return D > 0 && D % T::W == 0;
  }
};

}  // namespace attn
}  // namespace hk
