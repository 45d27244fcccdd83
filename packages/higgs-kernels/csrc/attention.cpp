// Splits attention over the thread pool: a task per (batch, kv head, block of
// queries) for prefill; for decode, where there are too few rows for that to
// keep every core streaming K and V, a task per (batch, kv head, block of keys),
// whose partial softmax sums are merged at the end. How the work splits depends
// only on the shapes, never on the thread count, so results do not either.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "attention.h"
#include "threadpool.h"

namespace hk {
namespace {

constexpr int64_t kDecodeRows = 8;    // rows per (batch, kv head) the decode path takes
constexpr int64_t kSplitKeys = 256;   // keys per decode task, about
constexpr int64_t kQueryBlock = 64;   // queries per prefill task

enum class Path { Auto, Decode, Prefill };
Path forced = Path::Auto;

const AttnKernels& kernels_for(int64_t D) {
  const AttnKernels* k = &attn_generic();
#if defined(__x86_64__) || defined(_M_X64)
  const std::string name = isa().name;
  if (name == "avx512") k = &attn_avx512();
  if (name == "avx2") k = &attn_avx2();
#endif
  return k->supports(D) ? *k : attn_generic();
}

}  // namespace

void set_attention_path(const char* name) {
  const std::string n = name ? name : "auto";
  if (n == "auto") forced = Path::Auto;
  else if (n == "decode") forced = Path::Decode;
  else if (n == "prefill") forced = Path::Prefill;
  else throw std::invalid_argument("unknown attention path '" + n + "' (auto, decode, prefill)");
}

void store_row(const AttnArgs& a, int64_t b, int64_t kvh, int64_t r, const float* o, float inv) {
  const int64_t G = a.group(), h = kvh * G + r % G, i = r / G, D = a.D;
  const int64_t off = ((b * a.Hq + h) * a.Lq + i) * D;
  switch (a.dtype) {
    case DType::F32: {
      float* dst = static_cast<float*>(a.out) + off;
      for (int64_t d = 0; d < D; ++d) dst[d] = o[d] * inv;
      break;
    }
    case DType::BF16: {
      uint16_t* dst = static_cast<uint16_t*>(a.out) + off;
      for (int64_t d = 0; d < D; ++d) dst[d] = f32_to_bf16(o[d] * inv);
      break;
    }
    default: {
      uint16_t* dst = static_cast<uint16_t*>(a.out) + off;
      for (int64_t d = 0; d < D; ++d) dst[d] = f32_to_f16(o[d] * inv);
      break;
    }
  }
}

void attention(const AttnArgs& a) {
  const int64_t total = a.B * a.Hq * a.Lq * a.D;
  if (total == 0) return;
  if (poison_outputs) std::memset(a.out, 0xff, total * dtype_size(a.dtype));
  const AttnKernels& k = kernels_for(a.D);
  const int64_t G = a.group(), rows = a.Lq * G, heads = a.B * a.Hkv, D = a.D;
  const bool decode =
      forced == Path::Decode || (forced == Path::Auto && rows <= kDecodeRows);
  if (!decode) {
    const int64_t blocks = (a.Lq + kQueryBlock - 1) / kQueryBlock;
    parallel_for(int(heads * blocks), [&](int t) {
      const int64_t h = t / blocks, i0 = (t % blocks) * kQueryBlock;
      k.prefill(a, h / a.Hkv, h % a.Hkv, i0, std::min(a.Lq, i0 + kQueryBlock));
    });
    return;
  }
  const int64_t splits = std::max<int64_t>(1, (a.Lk + kSplitKeys / 2) / kSplitKeys);
  if (splits == 1) {
    parallel_for(int(heads), [&](int h) {
      k.decode(a, h / a.Hkv, h % a.Hkv, 0, rows, 0, a.Lk, nullptr);
    });
    return;
  }
  // Keys in `splits` ranges of whole 64-key blocks; each range's partial
  // (max, sum, unnormalised output) per row, then merged per row.
  const int64_t chunk = ((a.Lk + splits - 1) / splits + 63) / 64 * 64;
  const int64_t slot = rows * (D + 2);
  std::vector<float> part(heads * splits * slot);
  if (poison_outputs) std::fill(part.begin(), part.end(), std::numeric_limits<float>::quiet_NaN());
  parallel_for(int(heads * splits), [&](int t) {
    const int64_t h = t / splits, j0 = std::min(a.Lk, (t % splits) * chunk);
    k.decode(a, h / a.Hkv, h % a.Hkv, 0, rows, j0, std::min(a.Lk, j0 + chunk),
             part.data() + t * slot);
  });
  parallel_for(int(heads), [&](int h) {
    std::vector<float> o(D);
    for (int64_t r = 0; r < rows; ++r) {
      const float* p = part.data() + h * splits * slot + r * (D + 2);
      float m = -std::numeric_limits<float>::infinity();
      for (int64_t s = 0; s < splits; ++s) m = std::max(m, p[s * slot]);
      std::fill(o.begin(), o.end(), 0.0f);
      float l = 0.0f;
      if (m != -std::numeric_limits<float>::infinity()) {
        for (int64_t s = 0; s < splits; ++s) {
          const float* ps = p + s * slot;
          if (ps[1] == 0.0f) continue;  // this range holds no key the row sees
          const float w = std::exp2(ps[0] - m);
          l += ps[1] * w;
          for (int64_t d = 0; d < D; ++d) o[d] += ps[2 + d] * w;
        }
      }
      store_row(a, h / a.Hkv, h % a.Hkv, r, o.data(), l > 0 ? 1.0f / l : 0.0f);
    }
  });
}

}  // namespace hk
