"""patch(): a model's linear layers swapped for kernel-backed twins, same outputs."""

import mlx.core as mx
import mlx.nn as nn
import pytest
from mlx.utils import tree_flatten

import higgs_kernels as hk
from higgs_kernels import ops


class Block(nn.Module):
    def __init__(self, dims):
        super().__init__()
        self.q = nn.Linear(dims, dims, bias=False)
        self.up = nn.Linear(dims, 2 * dims, bias=True)
        self.down = nn.Linear(2 * dims, dims, bias=False)
        self.norm = nn.RMSNorm(dims)

    def __call__(self, x):
        h = self.norm(x + self.q(x))
        return h + self.down(nn.gelu(self.up(h)))


class Model(nn.Module):
    def __init__(self, dims=64, layers=3):
        super().__init__()
        self.embed = nn.Embedding(50, dims)
        self.layers = [Block(dims) for _ in range(layers)]
        self.heads = {"text": nn.Linear(dims, 50, bias=False)}

    def __call__(self, ids):
        x = self.embed(ids)
        for layer in self.layers:
            x = layer(x)
        return self.heads["text"](x)


def model(quantize_bits=None):
    mx.random.seed(0)
    m = Model()
    m.set_dtype(mx.bfloat16)
    if quantize_bits:
        nn.quantize(
            m,
            group_size=32,
            bits=quantize_bits,
            class_predicate=lambda _, mod: isinstance(mod, nn.Linear),
        )
    mx.eval(m.parameters())
    return m


needs_kernels = pytest.mark.skipif(not hk.available(), reason="extension not built")


@needs_kernels
@pytest.mark.parametrize("bits", [None, 4, 8])
def test_patch_swaps_every_linear_and_keeps_outputs(bits):
    m = model(bits)
    ids = mx.array([[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5]])
    before = {k: v for k, v in tree_flatten(m.parameters())}
    # The reference: the same weights, stock MLX in float32 (stock 4-bit matmuls
    # with bf16 activations are themselves a few percent off).
    ref_model = model(bits)
    ref_model.set_dtype(mx.float32)
    want = ref_model(ids)  # 11 rows: the prefill path
    want_one = ref_model(ids[:, :1])  # one row each: the matrix-vector path
    assert hk.patch(m) == 3 * 3 + 1
    twin = hk.KernelQuantizedLinear if bits else hk.KernelLinear
    assert all(isinstance(getattr(b, name), twin) for b in m.layers for name in ("q", "up", "down"))
    after = {k: v for k, v in tree_flatten(m.parameters())}
    assert before.keys() == after.keys()
    assert all(before[k] is after[k] for k in before)  # the same arrays, not copies
    for got, ref in ((m(ids), want), (m(ids[:, :1]), want_one)):
        got = got.astype(mx.float32)
        # The patched model keeps bf16 activations, rounded after every layer.
        assert float(mx.abs(got - ref).max()) <= 0.03 * float(mx.abs(ref).max())
    # In float32 throughout, the kernels match stock MLX to float32 rounding.
    m.set_dtype(mx.float32)
    got = m(ids)
    assert float(mx.abs(got - want).max()) <= 1e-4 * float(mx.abs(want).max())
    assert hk.patch(m) == 0  # already swapped


@needs_kernels
def test_patch_leaves_unsupported_layers_alone():
    m = model()
    m.layers[0].q = nn.QuantizedLinear(64, 64, bias=False, group_size=32, bits=4, mode="mxfp4")
    assert hk.patch(m) == 3 * 3 + 1 - 1
    assert type(m.layers[0].q) is nn.QuantizedLinear


@needs_kernels
def test_patch_refuses_a_bare_layer():
    with pytest.raises(TypeError, match="call it on the model"):
        hk.patch(nn.Linear(4, 4))


def test_without_the_extension_everything_is_stock_mlx(monkeypatch):
    monkeypatch.setattr(ops, "_ext", None)
    assert not hk.available()
    assert hk.isa() is None and hk.threads() == 1
    m = model()
    assert hk.patch(m) == 0
    assert type(m.layers[0].q) is nn.Linear
    w = mx.random.normal((5, 8))
    x = mx.random.normal((2, 8))
    assert mx.array_equal(hk.linear(x, w), x @ w.T)
    wq, s, b = mx.quantize(mx.random.normal((8, 64)), group_size=64, bits=4)
    xq = mx.random.normal((1, 64))
    assert mx.array_equal(
        hk.quantized_linear(xq, wq, s, b, group_size=64, bits=4),
        mx.quantized_matmul(xq, wq, s, b, group_size=64, bits=4),
    )


def test_readme_example_runs():
    import re
    import subprocess
    import sys
    from pathlib import Path

    readme = Path(__file__).resolve().parents[2] / "packages/higgs-kernels/README.md"
    (example,) = re.findall(r"```python\n(.*?)```", readme.read_text(), flags=re.S)
    out = subprocess.run([sys.executable, "-c", example], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == str(hk.available())
    assert out.stdout.strip().endswith("(1, 1024) (1, 1024)")
