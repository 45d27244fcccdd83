"""Voice prefixes: computed once, reused in memory and from the voice store, never
changing what is said; stale or damaged files are made again."""

import numpy as np
import pytest
from click.testing import CliRunner

from higgs_cli.main import cli
from higgs_cli.pipeline import Higgs
from higgs_cli.prefixes import PrefixCache
from higgs_core import Prefix


def run(*args):
    return CliRunner().invoke(cli, list(args))


@pytest.fixture
def fresh(home, tiny_model, tiny_codec):
    """A new Higgs on the test's voice store, as a new process would make."""
    return lambda: Higgs.from_pretrained(tiny_model, tiny_codec)


def test_a_voice_prefix_is_computed_once_and_reused_from_disk(home, fresh, steer):
    steer(100)  # so the built-in voice gets pinned
    first = fresh()
    a = first.say("Good morning.", voice="en_woman", seed=3, max_seconds=2)
    folder = home / "voices" / "en_woman"
    files = list(folder.glob("prefix-*.safetensors"))
    assert len(files) == 1 and a.cached_tokens == 0
    # The same process: from memory, and a second chunk of one text too.
    b = first.say("Good morning.", voice="en_woman", seed=3, max_seconds=2)
    assert b.cached_tokens > 0 and first.prefixes.hits >= 1
    assert np.array_equal(a.codes, b.codes) and np.array_equal(a.samples, b.samples)
    # A new process (empty memory) reads it from the store: no voice position recomputed.
    second = fresh()
    c = second.say("Good morning.", voice="en_woman", seed=3, max_seconds=2)
    assert c.cached_tokens == b.cached_tokens and second.prefixes.misses == 1
    assert np.array_equal(a.samples, c.samples)
    # Long text: every chunk after the first reuses it as well.
    d = second.say("One two three. Four five six.", voice="en_woman", chunk_words=3)
    assert len(d.chunks) == 2 and d.cached_tokens == 2 * b.cached_tokens


@pytest.mark.parametrize("damage", ["truncate", "garbage", "foreign"])
def test_a_damaged_or_stale_prefix_file_is_made_again(home, fresh, steer, damage):
    steer(100)
    want = fresh().say("Good morning.", voice="en_man", seed=3, max_seconds=2)
    [path] = (home / "voices" / "en_man").glob("prefix-*.safetensors")
    good = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(good[: len(good) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00" * 64)
    else:  # another prompt's prefix under this key's name
        other = fresh()
        other.say("Hi.", voice="en_man", seed=3, max_seconds=1, scene="A loud street.")
        [street] = [p for p in path.parent.glob("prefix-*.safetensors") if p != path]
        path.write_bytes(street.read_bytes())
    warnings = []
    got = fresh().say("Good morning.", voice="en_man", seed=3, max_seconds=2, warn=warnings.append)
    about = [w for w in warnings if "prefix" in w]
    assert len(about) == 1 and "making it again" in about[0], warnings
    assert got.cached_tokens == 0 and np.array_equal(got.samples, want.samples)
    assert path.read_bytes() == good  # rebuilt as it was


def test_the_cli_says_how_much_came_from_the_cache(home, tmp_path, steer):
    steer(100)
    out = tmp_path / "x.wav"
    args = ["say", "Hello.", "--voice", "en_woman", "-o", str(out), "-v", "--max-seconds", "1"]
    assert "(0 from cached voice prefixes)" in run(*args).stderr
    r = run(*args)
    assert r.exit_code == 0 and "(0 from cached" not in r.stderr and "from cached" in r.stderr


def test_the_memory_cache_is_bounded_in_bytes():
    import mlx.core as mx
    from mlx_lm.models.cache import KVCache

    def prefix(n):
        c = KVCache()
        c.keys = c.values = mx.zeros((1, 1, n, 8))
        c.offset = n
        return Prefix(np.zeros(n, np.int64), None, [c])

    cache = PrefixCache(max_bytes=3 * prefix(10).nbytes)
    for i in range(5):
        cache.put(f"k{i}", prefix(10))
    size = prefix(10).nbytes
    assert len(cache) == 3 and cache.nbytes == 3 * size == cache.max_bytes
    cache.put("k4", prefix(10))  # again under its key: replaced, not counted twice
    assert len(cache) == 3 and cache.nbytes == 3 * size
    assert cache.get("k0") is None and cache.get("k4") is not None
    cache.get("k2")  # used: k3 is now the oldest
    cache.put("k5", prefix(10))
    assert cache.get("k3") is None and cache.get("k2") is not None
    cache.put("huge", prefix(100))  # bigger than the whole cache: not kept
    assert cache.get("huge") is None
    assert cache.stats() == {
        "entries": 3,
        "bytes": 3 * size,
        "max_bytes": 3 * size,
        "hits": 3,
        "misses": 3,
        "loaded": 0,
    }


def test_each_precision_and_kernels_setting_keeps_its_own_prefix(
    home, tiny_model, tiny_codec, steer, monkeypatch
):
    # A prefix is KV state: the same voice and prompt in float32, in bf16 and in bf16 on
    # stock MLX are three different states, so three files beside the voice, and each
    # model takes back its own.
    import mlx.core as mx

    steer(100)
    variants = {}
    for name, dtype, kernels in [
        ("bf16", None, "1"),
        ("f32", mx.float32, "1"),
        ("stock", None, "0"),
    ]:
        monkeypatch.setenv("HIGGS_KERNELS", kernels)
        variants[name] = Higgs.from_pretrained(tiny_model, tiny_codec, dtype=dtype)
    assert variants["stock"].model.kernels.startswith("stock MLX")
    folder = home / "voices" / "en_woman"
    made = {}
    for name, tts in variants.items():
        before = set(folder.glob("prefix-*.safetensors"))
        made[name] = tts.say("Good morning.", voice="en_woman", seed=3, max_seconds=1)
        assert len(set(folder.glob("prefix-*.safetensors")) - before) == 1  # its own file
        assert made[name].cached_tokens == 0
    for name, tts in variants.items():  # with an empty memory, each reads its own back
        tts.prefixes = PrefixCache(2**20)
        warnings = []
        got = tts.say(
            "Good morning.", voice="en_woman", seed=3, max_seconds=1, warn=warnings.append
        )
        assert got.cached_tokens > 0 and tts.prefixes.loaded == 1, name
        assert not [w for w in warnings if "prefix" in w], warnings
        assert np.array_equal(got.samples, made[name].samples), name


def test_quantized_weights_key_their_own_prefixes(tiny_model):
    # One checkpoint folder, quantized in memory: its prefixes must not be the float ones.
    import mlx.core as mx

    from higgs_cli.prefixes import model_identity
    from higgs_core import load_model, quantize

    identities = {
        bits: model_identity(
            quantize(load_model(tiny_model, dtype=mx.bfloat16), bits, 32)
            if bits
            else load_model(tiny_model, dtype=mx.bfloat16),
            "same-folder",
        )
        for bits in (0, 8, 4)
    }
    assert len(set(identities.values())) == 3, identities
