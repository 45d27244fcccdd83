// Splits attention over the thread pool: a task per (batch, kv head, block of
// queries) for prefill; for decode, where there are too few rows for that to
// keep every core streaming K and V, a task per (batch, kv head, block of keys),
// whose partial softmax sums are merged at the end. How the work splits depends
// only on the shapes, never on the thread count, so results do not either; the
// calls of attention_rows (a batch's rows, each over its own cache) split as
// they would alone and share one job on the pool.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <utility>
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

void attention_rows(const AttnArgs* calls, int n) {
  // One call's decode work: its (batch, kv head) pairs, each over `splits` ranges of
  // `chunk` keys, partials at `part` + its pair's slots. How a call splits depends on
  // its own shapes only, so each call gets exactly what it gets alone.
  struct Decode {
    const AttnArgs* a;
    const AttnKernels* k;
    int64_t rows, heads, splits, chunk, first_task, part;
  };
  std::vector<Decode> decodes;
  int64_t tasks = 0, part_floats = 0;
  for (int c = 0; c < n; ++c) {
    const AttnArgs& a = calls[c];
    if (a.B * a.Hq * a.Lq * a.D == 0) continue;
    if (poison_outputs) std::memset(a.out, 0xff, a.B * a.Hq * a.Lq * a.D * dtype_size(a.dtype));
    const AttnKernels& k = kernels_for(a.D);
    const int64_t rows = a.Lq * a.group(), heads = a.B * a.Hkv;
    const bool decode =
        forced == Path::Decode || (forced == Path::Auto && rows <= kDecodeRows);
    if (!decode) {
      const int64_t blocks = (a.Lq + kQueryBlock - 1) / kQueryBlock;
      parallel_for(int(heads * blocks), [&](int t) {
        const int64_t h = t / blocks, i0 = (t % blocks) * kQueryBlock;
        k.prefill(a, h / a.Hkv, h % a.Hkv, i0, std::min(a.Lq, i0 + kQueryBlock));
      });
      continue;
    }
    // Keys in `splits` ranges of whole 64-key blocks; with more than one, each
    // range's partial (max, sum, unnormalised output) per row, merged per row below.
    const int64_t splits = std::max<int64_t>(1, (a.Lk + kSplitKeys / 2) / kSplitKeys);
    const int64_t chunk = ((a.Lk + splits - 1) / splits + 63) / 64 * 64;
    decodes.push_back({&a, &k, rows, heads, splits, chunk, tasks, part_floats});
    tasks += heads * splits;
    if (splits > 1) part_floats += heads * splits * rows * (a.D + 2);
  }
  if (decodes.empty()) return;
  std::vector<float> part(part_floats);
  if (poison_outputs) std::fill(part.begin(), part.end(), std::numeric_limits<float>::quiet_NaN());
  // Every call's tasks in one job: a batch of decode rows wakes the pool once.
  auto owner = [&](int64_t t) {
    size_t i = 0;
    while (i + 1 < decodes.size() && decodes[i + 1].first_task <= t) ++i;
    return &decodes[i];
  };
  parallel_for(int(tasks), [&](int t) {
    const Decode& d = *owner(t);
    const AttnArgs& a = *d.a;
    const int64_t local = t - d.first_task, h = local / d.splits;
    if (d.splits == 1) {
      d.k->decode(a, h / a.Hkv, h % a.Hkv, 0, d.rows, 0, a.Lk, nullptr);
      return;
    }
    const int64_t j0 = std::min(a.Lk, (local % d.splits) * d.chunk);
    d.k->decode(a, h / a.Hkv, h % a.Hkv, 0, d.rows, j0, std::min(a.Lk, j0 + d.chunk),
                part.data() + d.part + local * d.rows * (a.D + 2));
  });
  std::vector<std::pair<const Decode*, int64_t>> merges;
  for (const Decode& d : decodes)
    if (d.splits > 1)
      for (int64_t h = 0; h < d.heads; ++h) merges.emplace_back(&d, h);
  parallel_for(int(merges.size()), [&](int t) {
    const Decode& d = *merges[t].first;
    const AttnArgs& a = *d.a;
    const int64_t h = merges[t].second, D = a.D, slot = d.rows * (D + 2);
    std::vector<float> o(D);
    for (int64_t r = 0; r < d.rows; ++r) {
      const float* p = part.data() + d.part + h * d.splits * slot + r * (D + 2);
      float m = -std::numeric_limits<float>::infinity();
      for (int64_t s = 0; s < d.splits; ++s) m = std::max(m, p[s * slot]);
      std::fill(o.begin(), o.end(), 0.0f);
      float l = 0.0f;
      if (m != -std::numeric_limits<float>::infinity()) {
        for (int64_t s = 0; s < d.splits; ++s) {
          const float* ps = p + s * slot;
          if (ps[1] == 0.0f) continue;  // this range holds no key the row sees
          const float w = std::exp2(ps[0] - m);
          l += ps[1] * w;
          for (int64_t e = 0; e < D; ++e) o[e] += ps[2 + e] * w;
        }
      }
      store_row(a, h / a.Hkv, h % a.Hkv, r, o.data(), l > 0 ? 1.0f / l : 0.0f);
    }
  });
}

}  // namespace hk
