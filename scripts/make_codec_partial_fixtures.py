"""Write the reference decodes of partial codes (the first k of 8 codebooks).

Run from the repository root with the reference environment (PyTorch, transformers 5.x),
after make_codec_fixtures.py:

    "$HIGGS_REF_PYTHON" scripts/make_codec_partial_fixtures.py

(scripts/README.md says how to make that environment.)

It loads the committed tiny codec tests/fixtures/codec/tiny with transformers (it does
not rebuild it), takes codes from tests/fixtures/codec/reference.npz and writes
tests/fixtures/codec/partial.npz with `{case}/k{k}/decoded` for codes[:k], k = 1..8.

What the references do with fewer codebooks: the original release's
HiggsAudioTokenizer.decode hands the [K', T] codes to its residual quantizer, whose
decode sums layer i's vectors for i in range(K'), i.e. the first K' quantizers, and
decodes that sum as usual (no check that K' = n_q, no rescaling). transformers 5.24's
HiggsAudioV2TokenizerModel.decode does the same (quantizers[i] for each of the K' rows),
so it decodes k < 8 directly; the script also sums the first k quantizers' vectors by
hand, as the original's loop does, and checks that the two agree.
"""

from pathlib import Path

import numpy as np
import torch
from transformers import HiggsAudioV2TokenizerModel

ROOT = Path(__file__).resolve().parents[1]
CODEC = ROOT / "tests" / "fixtures" / "codec"
CASES = ["mono24k_25f", "random37"]


def decode_first(model, codes):
    """The original release's partial decode on transformers' modules: the first k
    quantizers' vectors summed, then fc_post2 (fc2 here) and the acoustic decoder."""
    first = model.quantizer.quantizers[: len(codes)]
    quantized = sum(vq.decode(c[None]) for vq, c in zip(first, codes, strict=True))
    return model.acoustic_decoder(model.fc2(quantized.transpose(1, 2)).transpose(1, 2))[0, 0]


def main():
    model = HiggsAudioV2TokenizerModel.from_pretrained(CODEC / "tiny").eval()
    assert model.config.num_quantizers == 8
    with np.load(CODEC / "reference.npz") as data:
        ref = {k: data[k] for k in data.files}

    out = {}
    with torch.no_grad():
        for name in CASES:
            codes = torch.from_numpy(ref[f"{name}/codes"].astype(np.int64))
            for k in range(1, 9):
                decoded = model.decode(codes[None, :k], return_dict=True).audio_values[0, 0]
                by_hand = decode_first(model, codes[:k])
                assert torch.allclose(decoded, by_hand, rtol=0, atol=1e-6), (name, k)
                assert decoded.shape[0] == codes.shape[1] * 960
                out[f"{name}/k{k}/decoded"] = decoded.numpy()
            # k = 8 is the full decode: it must reproduce reference.npz (the load is right)
            want = ref[f"{name}/decoded"]
            err = np.abs(out[f"{name}/k8/decoded"] - want).max() / np.abs(want).max()
            assert err <= 1e-5, (name, err)
            # and the partial decodes must differ from it and from each other
            for k in range(1, 8):
                assert not np.allclose(out[f"{name}/k{k}/decoded"], out[f"{name}/k{k + 1}/decoded"])
            print(f"{name}: k=8 matches reference.npz (rel err {err:.1e})")

    path = CODEC / "partial.npz"
    np.savez_compressed(path, **out)
    print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
