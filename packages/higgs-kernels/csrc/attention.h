// Scaled dot-product attention on the CPU, free of MLX headers like kernels.h.
//
// q [B, Hq, Lq, D], k and v [B, Hkv, Lk, D], one dtype for all three and the
// output; Hq is a multiple of Hkv (query head h reads key/value head h / (Hq / Hkv)).
// Each input is addressed through its own strides (in elements) for the batch,
// head and position axes, its last axis contiguous, so that a view into a larger
// KV cache needs no copy. The output is contiguous [B, Hq, Lq, D].
//
// Scores are fp32 dot products, softmax is online (flash-style, in base 2 with
// log2(e) folded into the scale) and the weighted sums of v accumulate in fp32.
// Causal: query i sees keys j <= Lk - Lq + i (the convention of a KV cache that
// already holds the Lk - Lq earlier positions); a query that sees no key gives 0.
#pragma once

#include <cstdint>

#include "kernels.h"

namespace hk {

struct AttnArgs {
  const void* q;
  const void* k;
  const void* v;
  void* out;
  DType dtype;
  int64_t qs[3], ks[3], vs[3];  // strides of the batch, head and position axes
  int64_t B, Hq, Hkv, Lq, Lk, D;
  float scale;
  bool causal;

  int64_t group() const {
    return Hq / Hkv;
  }
  // The last key query i may see, plus one (0 when it sees none).
  int64_t keys_seen(int64_t i) const {
    if (!causal) return Lk;
    int64_t n = Lk - Lq + i + 1;
    return n < 0 ? 0 : n > Lk ? Lk : n;
  }
};

// A row is one (query, head) pair of a (batch, kv head): row r stands for query
// position r / group and head kv_head * group + r % group, so that the query heads
// sharing a key head take turns over the same keys.

// Per instruction set: the two ways one task runs.
struct AttnKernels {
  const char* name;
  // Can it run head dimension D (else the portable kernels do)?
  bool (*supports)(int64_t D);
  // Rows [r0, r1) of (b, kv head) over keys [j0, j1), for few rows (decode):
  // one pass over those keys for every row. Writes, per row r, the running max
  // m (base 2), the sum l and the unnormalised fp32 sum o[D] at
  // part[(r - r0) * (D + 2)] as {m, l, o...}; with part == nullptr it writes the
  // normalised output row instead.
  void (*decode)(const AttnArgs& a, int64_t b, int64_t kvh, int64_t r0, int64_t r1, int64_t j0,
                 int64_t j1, float* part);
  // Queries [i0, i1) of (b, kv head), all their heads, over every key they see:
  // blocked over keys with register-tiled products (prefill). Writes the output.
  void (*prefill)(const AttnArgs& a, int64_t b, int64_t kvh, int64_t i0, int64_t i1);
};

const AttnKernels& attn_generic();
#if defined(__x86_64__) || defined(_M_X64)
const AttnKernels& attn_avx2();
const AttnKernels& attn_avx512();
#endif

// Writes o * inv as row r of (b, kv head) of the output, in its dtype.
void store_row(const AttnArgs& a, int64_t b, int64_t kvh, int64_t r, const float* o, float inv);

// The entry point: n independent calls (one, or each row of a decode batch over
// its own KV cache), split over the thread pool with the kernels of the
// instruction set isa() names. Each call's split depends on its own shapes only,
// so it gets exactly what it gets alone; the calls' decode work runs as one job.
void attention_rows(const AttnArgs* calls, int n);

// Testing aid: "auto", or force "decode" (keys split and merged) or "prefill".
void set_attention_path(const char* name);

}  // namespace hk
