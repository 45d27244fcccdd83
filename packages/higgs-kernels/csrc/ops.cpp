// The MLX side: a primitive that evaluates y = x @ W^T (dense or affine
// group-quantized W) with the kernels of this package on the CPU, and its
// Python bindings.
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/variant.h>
#include <nanobind/stl/vector.h>

#include <cstring>
#include <sstream>
#include <stdexcept>
#include <utility>
#include <vector>

#include "attention.h"
#include "kernels.h"
#include "mlx/backend/cpu/encoder.h"
#include "mlx/mlx.h"
#include "mlx/primitives.h"
#include "threadpool.h"

namespace mx = mlx::core;
namespace nb = nanobind;
using namespace nb::literals;

namespace {

hk::DType kernel_dtype(mx::Dtype t) {
  if (t == mx::float32) return hk::DType::F32;
  if (t == mx::bfloat16) return hk::DType::BF16;
  return hk::DType::F16;
}

bool floating(mx::Dtype t) {
  return t == mx::float32 || t == mx::bfloat16 || t == mx::float16;
}

std::string dtype_name(mx::Dtype t) {
  std::ostringstream os;
  os << t;
  return os.str();
}

// The array's elements in row-major order: its own memory when already laid out
// so, else a gathered copy in `buf`.
const void* row_major(const mx::array& a, std::vector<char>& buf) {
  if (a.flags().row_contiguous) return a.data<char>();
  const size_t item = a.itemsize();
  buf.resize(a.size() * item);
  const char* src = a.data<char>();
  const int nd = a.ndim();
  std::vector<int64_t> idx(nd, 0);
  for (size_t i = 0; i < a.size(); ++i) {
    int64_t off = 0;
    for (int d = 0; d < nd; ++d) off += idx[d] * a.strides()[d];
    std::memcpy(buf.data() + i * item, src + off * item, item);
    for (int d = nd - 1; d >= 0; --d) {
      if (++idx[d] < a.shape(d)) break;
      idx[d] = 0;
    }
  }
  return buf.data();
}

// A primitive these kernels evaluate on the CPU stream; its output has the
// first input's shape unless it says otherwise.
class CpuPrimitive : public mx::UnaryPrimitive {
 public:
  using mx::UnaryPrimitive::UnaryPrimitive;

  void eval_gpu(const std::vector<mx::array>&, mx::array&) override {
    throw std::runtime_error("[higgs_kernels] these kernels run on the CPU only.");
  }

  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override {
    return {inputs[0].shape()};
  }

 protected:
  // Allocates `out`, registers the arrays with the stream's encoder and queues
  // run(out) on it (with a weak copy of out: the graph keeps the array alive).
  template <typename F>
  void enqueue(const std::vector<mx::array>& inputs, mx::array& out, F&& run) {
    out.set_data(mx::allocator::malloc(out.nbytes()));
    auto& encoder = mx::cpu::get_command_encoder(stream());
    for (auto& a : inputs) encoder.set_input_array(a);
    encoder.set_output_array(out);
    encoder.dispatch(
        [run = std::forward<F>(run), out = mx::array::unsafe_weak_copy(out)]() mutable {
          run(out);
        });
  }
};

class HiggsLinear : public CpuPrimitive {
 public:
  // group == 0: a dense weight; else affine-quantized with `group` and `bits`.
  HiggsLinear(mx::Stream stream, int group, int bits)
      : CpuPrimitive(stream), group_(group), bits_(bits) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    enqueue(inputs, out, [inputs, group = group_, bits = bits_](mx::array& out) {
      std::vector<char> bufs[4];
      const void* ptr[4];
      for (size_t i = 0; i < inputs.size(); ++i) ptr[i] = row_major(inputs[i], bufs[i]);
      const mx::array& x = inputs[0];
      const mx::array& w = inputs[1];
      hk::Weight weight{};
      weight.N = w.shape(0);
      if (group == 0) {
        weight.K = w.shape(1);
        weight.data = ptr[1];
        weight.dtype = kernel_dtype(w.dtype());
      } else {
        weight.K = int64_t(w.shape(1)) * 32 / bits;
        weight.quant = {static_cast<const uint32_t*>(ptr[1]), ptr[2], ptr[3],
                        kernel_dtype(inputs[2].dtype()), group, bits};
      }
      const int64_t m = weight.N ? int64_t(out.size()) / weight.N : 0;
      hk::linear(weight, ptr[0], kernel_dtype(x.dtype()), m, out.data<void>(),
                 kernel_dtype(out.dtype()));
    });
  }

  const char* name() const override {
    return group_ ? "HiggsQuantizedLinear" : "HiggsLinear";
  }

  bool is_equivalent(const mx::Primitive& other) const override {
    auto& o = static_cast<const HiggsLinear&>(other);
    return group_ == o.group_ && bits_ == o.bits_;
  }

  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override {
    mx::Shape shape = inputs[0].shape();
    shape.back() = inputs[1].shape(0);
    return {shape};
  }

 private:
  int group_;
  int bits_;
};

// Batch, head and position axes at any stride (a KV cache's view of a larger
// buffer reads in place); only a strided last axis is copied, into `buf`.
const void* attention_operand(const mx::array& a, std::vector<char>& buf, int64_t* strides) {
  if (a.shape(3) > 1 && a.strides()[3] != 1) {
    const int64_t d = a.shape(3), l = a.shape(2), h = a.shape(1);
    strides[0] = h * l * d, strides[1] = l * d, strides[2] = d;
    return row_major(a, buf);
  }
  for (int ax = 0; ax < 3; ++ax) strides[ax] = a.strides()[ax];
  return a.data<void>();
}

// softmax(q k^T * scale [+ causal mask]) v over q [B, Hq, Lq, D], k and v
// [B, Hkv, Lk, D]; see attention.h. With inputs q, k_0, v_0, k_1, v_1, ... instead
// (attention_rows), row b of q attends over its own k_b and v_b [1, Hkv, Lk_b, D]:
// a decode batch whose rows' caches differ in length, each row as it is alone.
class HiggsAttention : public CpuPrimitive {
 public:
  HiggsAttention(mx::Stream stream, float scale, bool causal)
      : CpuPrimitive(stream), scale_(scale), causal_(causal) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    enqueue(inputs, out, [inputs, scale = scale_, causal = causal_](mx::array& out) {
      const mx::array& q = inputs[0];
      const bool rows = inputs.size() != 3;  // (one row's k and v: the same either way)
      const int64_t n = rows ? q.shape(0) : 1;
      std::vector<hk::AttnArgs> calls(n);
      std::vector<std::vector<char>> bufs(2 * n + 1);
      int64_t qs[3];
      const char* qp = static_cast<const char*>(attention_operand(q, bufs[0], qs));
      const int64_t row = int64_t(q.shape(1)) * q.shape(2) * q.shape(3) * q.itemsize();
      for (int64_t c = 0; c < n; ++c) {
        hk::AttnArgs& a = calls[c];
        const mx::array& k = inputs[1 + 2 * c];
        a.q = qp + qs[0] * q.itemsize() * c;
        for (int ax = 0; ax < 3; ++ax) a.qs[ax] = qs[ax];
        a.k = attention_operand(k, bufs[1 + 2 * c], a.ks);
        a.v = attention_operand(inputs[2 + 2 * c], bufs[2 + 2 * c], a.vs);
        a.out = out.data<char>() + row * c;
        a.dtype = kernel_dtype(q.dtype());
        a.B = rows ? 1 : q.shape(0), a.Hq = q.shape(1), a.Lq = q.shape(2), a.D = q.shape(3);
        a.Hkv = k.shape(1), a.Lk = k.shape(2);
        a.scale = scale;
        a.causal = causal;
      }
      hk::attention_rows(calls.data(), int(n));
    });
  }

  const char* name() const override {
    return "HiggsAttention";
  }

  bool is_equivalent(const mx::Primitive& other) const override {
    auto& o = static_cast<const HiggsAttention&>(other);
    return scale_ == o.scale_ && causal_ == o.causal_;
  }

 private:
  float scale_;
  bool causal_;
};

// silu(gate) * up elementwise (a SwiGLU MLP's activation), fp32 inside. MLX's
// CPU exp is scalar; this one is vectorised.
class HiggsSwiglu : public CpuPrimitive {
 public:
  explicit HiggsSwiglu(mx::Stream stream) : CpuPrimitive(stream) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    enqueue(inputs, out, [inputs](mx::array& out) {
      std::vector<char> bufs[2];
      const void* g = row_major(inputs[0], bufs[0]);
      const void* u = row_major(inputs[1], bufs[1]);
      hk::swiglu(g, u, kernel_dtype(out.dtype()), out.size(), out.data<void>());
    });
  }

  const char* name() const override {
    return "HiggsSwiglu";
  }

  bool is_equivalent(const mx::Primitive&) const override {
    return true;
  }
};

// Rotary embedding with given frequencies (mx.fast.rope's `freqs`, rotate-half
// layout): MLX's CPU backend runs it as a dozen separate ops, ~60 us a call. One
// offset for all of x, or one per index of its first axis (a decode batch whose
// rows stand at different positions), each slice as it would be alone.
class HiggsRope : public CpuPrimitive {
 public:
  HiggsRope(mx::Stream stream, int dims, std::vector<int64_t> offsets, float scale)
      : CpuPrimitive(stream), dims_(dims), offsets_(std::move(offsets)), scale_(scale) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    enqueue(inputs, out,
            [inputs, dims = dims_, offsets = offsets_, scale = scale_](mx::array& out) {
      std::vector<char> bufs[2];
      const mx::array& x = inputs[0];
      const void* xp = row_major(x, bufs[0]);
      const float* freqs = static_cast<const float*>(row_major(inputs[1], bufs[1]));
      std::vector<float> inv(dims / 2);
      for (int i = 0; i < dims / 2; ++i) inv[i] = 1.0f / freqs[i];
      const int64_t D = x.shape(-1), L = x.ndim() >= 2 ? x.shape(-2) : 1;
      const int64_t rows = L * D == 0 ? 0 : int64_t(x.size()) / (L * D);
      const int64_t parts = int64_t(offsets.size()), each = rows / parts;
      const int64_t bytes = each * L * D * x.itemsize();
      for (int64_t p = 0; p < parts; ++p)
        hk::rope(static_cast<const char*>(xp) + p * bytes, kernel_dtype(x.dtype()), each, L, D,
                 dims, inv.data(), offsets[p], scale, out.data<char>() + p * bytes);
    });
  }

  const char* name() const override {
    return "HiggsRope";
  }

  bool is_equivalent(const mx::Primitive& other) const override {
    auto& o = static_cast<const HiggsRope&>(other);
    return dims_ == o.dims_ && offsets_ == o.offsets_ && scale_ == o.scale_;
  }

 private:
  int dims_;
  std::vector<int64_t> offsets_;
  float scale_;
};

mx::Stream cpu_stream(mx::StreamOrDevice s) {
  mx::Stream stream = mx::to_stream(s, mx::Device::cpu);
  if (stream.device != mx::Device::cpu)
    throw std::invalid_argument("[higgs_kernels] these kernels run on the CPU only.");
  return stream;
}

void check_x(const mx::array& x, int64_t K, const char* op) {
  if (!floating(x.dtype()))
    throw std::invalid_argument(std::string("[") + op +
                                "] x must be float32, bfloat16 or float16, not " +
                                dtype_name(x.dtype()) + ".");
  if (x.ndim() < 1 || x.shape(-1) != K) {
    std::ostringstream os;
    os << "[" << op << "] x has shape " << x.shape() << ": its last axis must be " << K << ".";
    throw std::invalid_argument(os.str());
  }
}

mx::array linear(const mx::array& x, const mx::array& w, mx::StreamOrDevice s) {
  if (w.ndim() != 2 || !floating(w.dtype())) {
    std::ostringstream os;
    os << "[higgs_kernels.linear] w must be a 2-D float32, bfloat16 or float16 matrix [N, K], "
       << "got shape " << w.shape() << " of " << w.dtype() << ".";
    throw std::invalid_argument(os.str());
  }
  check_x(x, w.shape(1), "higgs_kernels.linear");
  mx::Shape shape = x.shape();
  shape.back() = w.shape(0);
  auto dtype = mx::promote_types(x.dtype(), w.dtype());
  return mx::array(shape, dtype, std::make_shared<HiggsLinear>(cpu_stream(s), 0, 0), {x, w});
}

mx::array quantized_linear(const mx::array& x, const mx::array& w, const mx::array& scales,
                           const mx::array& biases, int group_size, int bits,
                           mx::StreamOrDevice s) {
  const char* op = "higgs_kernels.quantized_linear";
  if (bits < 2 || bits > 8 || bits == 7)
    throw std::invalid_argument("[higgs_kernels.quantized_linear] bits must be 2, 3, 4, 5, 6 or "
                                "8, not " +
                                std::to_string(bits) + ".");
  if (group_size != 32 && group_size != 64 && group_size != 128)
    throw std::invalid_argument(
        "[higgs_kernels.quantized_linear] group_size must be 32, 64 or 128, not " +
        std::to_string(group_size) + ".");
  if (w.ndim() != 2 || w.dtype() != mx::uint32) {
    std::ostringstream os;
    os << "[" << op << "] w must be the 2-D uint32 codes of mx.quantize, got shape " << w.shape()
       << " of " << w.dtype() << ".";
    throw std::invalid_argument(os.str());
  }
  const int64_t N = w.shape(0), K = int64_t(w.shape(1)) * 32 / bits;
  if (K % group_size != 0 || int64_t(w.shape(1)) * 32 % bits != 0)
    throw std::invalid_argument(std::string("[") + op + "] w's width does not fit bits=" +
                                std::to_string(bits) + ", group_size=" +
                                std::to_string(group_size) + ".");
  mx::Shape sshape{int(N), int(K / group_size)};
  for (const mx::array* a : {&scales, &biases}) {
    if (a->shape() != sshape || !floating(a->dtype())) {
      std::ostringstream os;
      os << "[" << op << "] scales and biases must be float arrays of shape " << sshape
         << " for these codes, got " << a->shape() << " of " << a->dtype() << ".";
      throw std::invalid_argument(os.str());
    }
  }
  if (scales.dtype() != biases.dtype())
    throw std::invalid_argument(std::string("[") + op +
                                "] scales and biases must share a dtype.");
  check_x(x, K, op);
  mx::Shape shape = x.shape();
  shape.back() = int(N);
  auto dtype = mx::promote_types(x.dtype(), scales.dtype());
  return mx::array(shape, dtype,
                   std::make_shared<HiggsLinear>(cpu_stream(s), group_size, bits),
                   {x, w, scales, biases});
}

mx::array attention(const mx::array& q, const mx::array& k, const mx::array& v, float scale,
                    bool causal, mx::StreamOrDevice s) {
  const char* op = "[higgs_kernels.attention] ";
  for (const mx::array* a : {&q, &k, &v}) {
    if (a->ndim() != 4) {
      std::ostringstream os;
      os << op << "q, k and v must be 4-D [batch, heads, positions, head_dim], got shape "
         << a->shape() << ".";
      throw std::invalid_argument(os.str());
    }
    if (!floating(a->dtype()) || a->dtype() != q.dtype()) {
      std::ostringstream os;
      os << op << "q, k and v must share one dtype of float32, bfloat16 or float16, got "
         << q.dtype() << ", " << k.dtype() << ", " << v.dtype() << ".";
      throw std::invalid_argument(os.str());
    }
  }
  if (k.shape() != v.shape() || k.shape(0) != q.shape(0) || k.shape(3) != q.shape(3) ||
      k.shape(1) == 0 || q.shape(1) % k.shape(1) != 0) {
    std::ostringstream os;
    os << op << "shapes q " << q.shape() << ", k " << k.shape() << ", v " << v.shape()
       << " do not fit: k and v must be [B, Hkv, Lk, D] for q [B, Hq, Lq, D], with Hq a "
       << "multiple of Hkv.";
    throw std::invalid_argument(os.str());
  }
  return mx::array(q.shape(), q.dtype(),
                   std::make_shared<HiggsAttention>(cpu_stream(s), scale, causal), {q, k, v});
}

mx::array attention_rows(const mx::array& q, const std::vector<mx::array>& keys,
                         const std::vector<mx::array>& values, float scale, bool causal,
                         mx::StreamOrDevice s) {
  const char* op = "[higgs_kernels.attention_rows] ";
  if (q.ndim() != 4 || !floating(q.dtype())) {
    std::ostringstream os;
    os << op << "q must be a 4-D float array [batch, heads, positions, head_dim], got shape "
       << q.shape() << " of " << q.dtype() << ".";
    throw std::invalid_argument(os.str());
  }
  if (int64_t(keys.size()) != q.shape(0) || values.size() != keys.size()) {
    std::ostringstream os;
    os << op << "one k and one v per row of q: q has " << q.shape(0) << " rows, got "
       << keys.size() << " k and " << values.size() << " v.";
    throw std::invalid_argument(os.str());
  }
  std::vector<mx::array> inputs{q};
  for (size_t b = 0; b < keys.size(); ++b) {
    const mx::array &k = keys[b], &v = values[b];
    if (k.ndim() != 4 || k.shape() != v.shape() || k.shape(0) != 1 || k.shape(3) != q.shape(3) ||
        k.shape(1) == 0 || q.shape(1) % k.shape(1) != 0 || k.dtype() != q.dtype() ||
        v.dtype() != q.dtype()) {
      std::ostringstream os;
      os << op << "row " << b << ": k " << k.shape() << " of " << k.dtype() << " and v "
         << v.shape() << " of " << v.dtype() << " do not fit q " << q.shape() << " of "
         << q.dtype() << ": each must be [1, Hkv, Lk, D] of q's dtype, Hq a multiple of Hkv.";
      throw std::invalid_argument(os.str());
    }
    inputs.push_back(k);
    inputs.push_back(v);
  }
  return mx::array(q.shape(), q.dtype(),
                   std::make_shared<HiggsAttention>(cpu_stream(s), scale, causal),
                   std::move(inputs));
}

mx::array swiglu(const mx::array& gate, const mx::array& up, mx::StreamOrDevice s) {
  if (gate.shape() != up.shape() || gate.dtype() != up.dtype() || !floating(gate.dtype())) {
    std::ostringstream os;
    os << "[higgs_kernels.swiglu] gate and up must share one shape and one dtype of float32, "
       << "bfloat16 or float16, got " << gate.shape() << " of " << gate.dtype() << " and "
       << up.shape() << " of " << up.dtype() << ".";
    throw std::invalid_argument(os.str());
  }
  return mx::array(gate.shape(), gate.dtype(), std::make_shared<HiggsSwiglu>(cpu_stream(s)),
                   {gate, up});
}

mx::array rope(const mx::array& x, int dims, const mx::array& freqs,
               const std::vector<int64_t>& offsets, float scale, mx::StreamOrDevice s) {
  const char* op = "[higgs_kernels.rope] ";
  if (x.ndim() < 2 || !floating(x.dtype())) {
    std::ostringstream os;
    os << op << "x must be a float array of at least 2 axes [..., positions, dims], got shape "
       << x.shape() << " of " << x.dtype() << ".";
    throw std::invalid_argument(os.str());
  }
  if (dims <= 0 || dims % 2 != 0 || dims > x.shape(-1) || freqs.dtype() != mx::float32 ||
      freqs.ndim() != 1 || freqs.shape(0) != dims / 2) {
    std::ostringstream os;
    os << op << "dims must be even and at most x's last axis (" << x.shape(-1)
       << "), with float32 freqs of shape [dims / 2]; got dims " << dims << ", freqs "
       << freqs.shape() << " of " << freqs.dtype() << ".";
    throw std::invalid_argument(os.str());
  }
  const bool per_row = offsets.size() > 1;
  if (offsets.empty() || (per_row && (x.ndim() < 3 || int64_t(offsets.size()) != x.shape(0)))) {
    std::ostringstream os;
    os << op << "one offset, or one per index of x's first axis (with at least 3 axes), got "
       << offsets.size() << " offsets for x of shape " << x.shape() << ".";
    throw std::invalid_argument(os.str());
  }
  return mx::array(x.shape(), x.dtype(),
                   std::make_shared<HiggsRope>(cpu_stream(s), dims, offsets, scale), {x, freqs});
}

}  // namespace

NB_MODULE(_ext, m) {
  m.doc() = "CPU kernels for MLX: dense and group-quantized linear layers, attention, SwiGLU, RoPE.";
  m.def("linear", &linear, "x"_a, "w"_a, nb::kw_only(), "stream"_a = nb::none(),
        "y = x @ w.T for a dense weight w [N, K], on the CPU.");
  m.def("quantized_linear", &quantized_linear, "x"_a, "w"_a, "scales"_a, "biases"_a,
        nb::kw_only(), "group_size"_a, "bits"_a, "stream"_a = nb::none(),
        "y = x @ dequantize(w).T for MLX's affine layout, on the CPU.");
  m.def("attention", &attention, "q"_a, "k"_a, "v"_a, nb::kw_only(), "scale"_a, "causal"_a = false,
        "stream"_a = nb::none(),
        "softmax(q k^T * scale) v with grouped heads (q [B, Hq, Lq, D], k/v [B, Hkv, Lk, D]), "
        "causal as with a KV cache (query i sees keys j <= Lk - Lq + i), on the CPU.");
  m.def("attention_rows", &attention_rows, "q"_a, "keys"_a, "values"_a, nb::kw_only(), "scale"_a,
        "causal"_a = false, "stream"_a = nb::none(),
        "attention for each row b of q [B, Hq, Lq, D] over its own keys[b] and values[b] "
        "[1, Hkv, Lk_b, D], each as attention() computes it alone, on the CPU.");
  m.def("swiglu", &swiglu, "gate"_a, "up"_a, nb::kw_only(), "stream"_a = nb::none(),
        "silu(gate) * up elementwise, fp32 inside, on the CPU.");
  m.def("rope", &rope, "x"_a, "dims"_a, nb::kw_only(), "freqs"_a, "offsets"_a, "scale"_a = 1.0f,
        "stream"_a = nb::none(),
        "Rotary embedding as mx.fast.rope(x, dims, traditional=False, base=None, scale=scale, "
        "offset=offset, freqs=freqs), on the CPU; one offset, or one per index of x's first axis.");
  m.def(
      "set_attention_path", [](const std::string& name) { hk::set_attention_path(name.c_str()); },
      "name"_a, "Testing aid: force 'decode' (keys split) or 'prefill' kernels, or 'auto'.");
  m.def("num_threads", &hk::num_threads, "Threads the kernels use, the caller included.");
  m.def("set_num_threads", &hk::set_num_threads, "n"_a,
        "Use n threads (n <= 0: HIGGS_KERNELS_THREADS, else every core).");
  m.def(
      "set_poison", [](bool on) { hk::poison_outputs = on; }, "on"_a,
      "Testing aid: fill outputs with NaN before the kernels write them.");
  m.def(
      "read_seconds",
      [](const mx::array& a) {
        mx::array c = mx::contiguous(a);
        c.eval();
        return hk::read_seconds(c.data<void>(), c.nbytes());
      },
      "a"_a, "Seconds for every thread to read the array once (a bandwidth probe).");
  m.def(
      "isa", [] { return std::string(hk::isa().name); },
      "The instruction set in use: 'avx2' or 'generic'.");
  m.def(
      "set_isa", [](const std::string& name) { hk::set_isa(name.c_str()); }, "name"_a,
      "Force 'avx2' or 'generic', or 'auto' to choose by the CPU.");
}
