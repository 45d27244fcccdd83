"""Write ``tests/fixtures/prompts/release.json``: prompts built by the release's own code.

Boson AI's ``boson-ai/higgs-audio`` repository is the reference for how a text
becomes a prompt. This script runs its code, it does not restate it:

- from ``examples/generation.py`` (parsed with ``ast``, since importing it
  loads the model, langid, jieba and a codec): the normalisation statements of
  ``main()``, ``prepare_generation_context`` and the per-chunk loop of
  ``HiggsAudioModelClient.generate``, which adds the earlier chunks and their
  audio as user/assistant turns;
- from ``boson_multimodal``: ``prepare_chatml_sample``, the
  ``HiggsAudioSampleCollator`` and the model's
  ``merge_input_ids_with_audio_features``, which widens each audio
  placeholder to one position per delayed frame of its clip;
- from ``boson_multimodal/serve/serve_engine.py``: ``_prepare_inputs`` with
  ``force_audio_gen=True``, to check that the prompts end the way it ends them.

No model and no audio: a fake ``CURR_DIR`` holds the voice prompts, a fake
audio tokenizer gives each voice fixed codes, and a fake model "generates" the
fixed codes of each earlier chunk. Text goes through the tiny tokenizer of
``tests/fixtures/tokenizer/`` and the ids are the tiny model's.

Run from the repository root with the reference environment's python
(scripts/README.md), after extracting the release's source anywhere outside
this repository::

    "$HIGGS_REF_PYTHON" -m pip install dacite pandas loguru pyyaml
    "$HIGGS_REF_PYTHON" scripts/make_prompt_fixtures.py --release ../higgs-audio

(or set ``HIGGS_RELEASE`` to that folder instead of passing ``--release``).
"""

import argparse
import ast
import base64
import copy
import importlib
import importlib.machinery
import io
import json
import os
import re
import sys
import tempfile
import types
import zlib
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import yaml
from transformers import AutoTokenizer

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests/fixtures/prompts/release.json"
CONFIG = json.loads((ROOT / "tests/fixtures/tiny-model/config.json").read_text())
K = CONFIG["audio_num_codebooks"]
CODES = CONFIG["audio_codebook_size"]

# The voices of the fake voice_prompts folder: transcript and number of frames.
VOICES = {
    "ada": ("This is how I sound when I read aloud.", 4),
    "ben": ("Hello, my name is Ben and I speak slowly.", 3),
}
STORY = [
    "The storm rolled in at dusk.",
    "Rain hammered the old tin roof.",
    "By morning the fields were silver.",
]
DIALOGUE = "[SPEAKER0] Did you hear that noise?\n[SPEAKER1] Hear what, exactly?"

# scene: True for the release's default scene file, False for none. chunks: the
# chunk texts handed to the generate loop (every chunk but the last comes with
# "generated" audio); without them the whole normalised text is one chunk.
CASES = [
    dict(name="smart_voice_scene", text="Good morning! The coffee is ready, and the sun is out."),
    dict(name="smart_voice_no_scene", text="Good morning! The coffee is ready.", scene=False),
    dict(name="no_final_punctuation", text="We walked along the river until the lights came on"),
    dict(
        name="one_cloned_voice",
        text="Thank you for calling. How can I help?",
        voices=["ada"],
    ),
    dict(
        name="two_cloned_voices",
        text="[SPEAKER0] Are you ready to go?\n[SPEAKER1] Almost, give me a minute.",
        voices=["ada", "ben"],
        scene=False,
    ),
    dict(
        name="dialogue_no_voices",
        text=(
            "[SPEAKER0]  Did you hear that?\n  [SPEAKER1] Hear what?  \n"
            "[SPEAKER2] Quiet, both of you.\n[SPEAKER0] There it is again."
        ),
    ),
    dict(
        name="refs_in_system",
        text="[SPEAKER0] Are you ready to go?\n[SPEAKER1] Almost, give me a minute.",
        voices=["ada", "ben"],
        refs_in_system=True,
    ),
    dict(
        name="refs_in_system_no_scene",
        text="Thank you for calling.",
        voices=["ada"],
        refs_in_system=True,
        scene=False,
    ),
    dict(name="context_one_chunk", text=" ".join(STORY[:2]), voices=["ada"], chunks=STORY[:2]),
    dict(name="context_two_chunks", text=" ".join(STORY), scene=False, chunks=STORY),
    dict(
        name="context_dialogue_no_voices",
        text=DIALOGUE,
        chunks=DIALOGUE.split("\n"),
    ),
    dict(
        name="full_width_punctuation",
        text="他说：“今天的气温是25°C，很舒服。”(aside)我们去《公园》、湖边吧！（小声）你呢…？",
    ),
    dict(
        name="sound_events",
        text=(
            "[laugh] That was too funny! [applause] [music start] Dance with me tonight "
            "[music end] Then quiet. [humming start] la la la [humming end]"
        ),
    ),
]


def codes_for(key: str, frames: int) -> np.ndarray:
    """Fixed codes [K, frames] for a voice or a chunk, the same on every run."""
    rng = np.random.default_rng(zlib.crc32(key.encode()))
    return rng.integers(0, CODES, (K, frames), dtype=np.int64)


def chunk_codes(case: str, i: int) -> np.ndarray:
    return codes_for(f"{case}/chunk{i}", 3 - i % 2)


# --- loading the release ---------------------------------------------------------------


def load_release(root: Path) -> SimpleNamespace:
    """The release's modules and functions, without its model or codec."""
    sys.path.insert(0, str(root))
    # The collator and the serve engine import librosa for resampling and for
    # whisper features, both off here; _prepare_inputs' librosa.load is faked
    # so that it hands the fake audio tokenizer the path it was given.
    librosa = types.ModuleType("librosa")
    librosa.__spec__ = importlib.machinery.ModuleSpec("librosa", None)
    librosa.load = lambda path, sr=None, **_: (path, sr)
    sys.modules["librosa"] = librosa
    importlib.import_module("boson_multimodal.model")
    # model/higgs_audio/__init__.py imports the whole model (and a transformers
    # of its own time); register the package bare so that utils.py loads alone.
    package = types.ModuleType("boson_multimodal.model.higgs_audio")
    package.__path__ = [str(root / "boson_multimodal/model/higgs_audio")]
    sys.modules[package.__name__] = package
    from loguru import logger

    logger.remove()  # the generate loop logs every prompt it builds

    data_types = importlib.import_module("boson_multimodal.data_types")
    dataset = importlib.import_module("boson_multimodal.dataset.chatml_dataset")
    collator = importlib.import_module("boson_multimodal.data_collator.higgs_audio_collator")
    utils = importlib.import_module("boson_multimodal.model.higgs_audio.utils")
    names = dict(
        os=os,
        re=re,
        yaml=yaml,
        copy=copy,
        torch=torch,
        np=np,
        base64=base64,
        BytesIO=io.BytesIO,
        librosa=librosa,
        asdict=asdict,
        logger=logger,
        tqdm=SimpleNamespace(tqdm=lambda it, **_: it),  # no progress bars
        Message=data_types.Message,
        ChatMLSample=data_types.ChatMLSample,
        AudioContent=data_types.AudioContent,
        TextContent=data_types.TextContent,
        ChatMLDatasetSample=dataset.ChatMLDatasetSample,
        prepare_chatml_sample=dataset.prepare_chatml_sample,
        revert_delay_pattern=utils.revert_delay_pattern,
    )
    generation = ast.parse((root / "examples/generation.py").read_text(encoding="utf-8"))
    serve = ast.parse((root / "boson_multimodal/serve/serve_engine.py").read_text(encoding="utf-8"))
    wanted = [
        constant(generation, "AUDIO_PLACEHOLDER_TOKEN"),
        constant(generation, "MULTISPEAKER_DEFAULT_SYSTEM_MESSAGE"),
        function(generation, "normalize_chinese_punctuation"),
        function(generation, "_build_system_message_with_audio_prompt"),
        function(generation, "prepare_generation_context"),
        function(generation, "generate", "HiggsAudioModelClient"),
        function(serve, "_prepare_inputs", "HiggsAudioServeEngine"),
        normaliser(function(generation, "main")),
    ]
    module = ast.fix_missing_locations(ast.Module(body=wanted, type_ignores=[]))
    exec(compile(module, "<release>", "exec"), names)
    return SimpleNamespace(
        names=names,
        Collator=collator.HiggsAudioSampleCollator,
        merge=utils.merge_input_ids_with_audio_features,
        delay=utils.build_delay_pattern_mask,
        scene=(root / "examples/scene_prompts/quiet_indoor.txt").read_text(encoding="utf-8"),
    )


def constant(tree: ast.Module, name: str) -> ast.stmt:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in node.targets
        ):
            return node
    raise LookupError(f"no {name} in the release")


def function(tree: ast.Module, name: str, cls: str | None = None) -> ast.FunctionDef:
    body = tree.body
    if cls:
        body = next(n for n in body if isinstance(n, ast.ClassDef) and n.name == cls).body
    for node in body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return node
    raise LookupError(f"no {cls + '.' if cls else ''}{name} in the release")


def normaliser(main: ast.FunctionDef) -> ast.FunctionDef:
    """``release_normalise(transcript) -> (transcript, speaker_tags)``: the statements
    of ``main()`` from ``pattern = ...`` and from ``speaker_tags = ...`` through the
    final-period ``if``, unchanged; the file reading in between is left out."""

    def assigns(node, name):
        return isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in node.targets
        )

    body = main.body
    pattern = next(n for n in body if assigns(n, "pattern"))
    start = next(i for i, n in enumerate(body) if assigns(n, "speaker_tags"))
    end = next(
        i
        for i, n in enumerate(body)
        if i > start and isinstance(n, ast.If) and "endswith" in ast.unparse(n.test)
    )
    fn = ast.parse("def release_normalise(transcript):\n    return transcript, speaker_tags")
    node = fn.body[0]
    assert isinstance(node, ast.FunctionDef)
    node.body = [pattern, *body[start : end + 1], *node.body]
    return node


# --- the fakes ---------------------------------------------------------------------------


class FakeAudioTokenizer:
    """``encode`` returns the fixed codes of the voice prompt at a path."""

    codebook_size = CODES
    sampling_rate = 24000

    def __init__(self, codes: dict[str, np.ndarray]):
        self.codes = codes

    def encode(self, path, sr=None):
        return torch.from_numpy(self.codes[Path(path).stem])


class FakeModel:
    """Generates each earlier chunk's fixed codes, as the real model returns them
    (delayed, with stream BOS/EOS); stops the loop at the chunk under test."""

    class Done(Exception):
        pass

    def __init__(self, outputs: list[np.ndarray], delay):
        self.outputs = list(outputs)
        self.delay = delay  # the release's build_delay_pattern_mask

    def generate(self, input_ids, **_):
        if not self.outputs:
            raise FakeModel.Done
        codes = torch.from_numpy(self.outputs.pop(0))
        framed = torch.cat([torch.full((K, 1), CODES), codes, torch.full((K, 1), CODES + 1)], dim=1)
        delayed = self.delay(framed.unsqueeze(0), bos_token_id=CODES, pad_token_id=CODES + 1)[0]
        return input_ids, [delayed[0]]


def make_collator(release):
    # The tiny model's ids; audio-in codes on, for the references in the system
    # turn (a model without encode_audio_in_tokens cannot read those).
    return release.Collator(
        whisper_processor=None,
        audio_in_token_id=CONFIG["audio_in_token_idx"],
        audio_out_token_id=CONFIG["audio_out_token_idx"],
        audio_stream_bos_id=CONFIG["audio_stream_bos_id"],
        audio_stream_eos_id=CONFIG["audio_stream_eos_id"],
        encode_whisper_embed=False,
        pad_token_id=CONFIG["pad_token_id"],
        return_audio_in_tokens=True,
        use_delay_pattern=CONFIG["use_delay_pattern"],
        round_to=1,
        audio_num_codebooks=K,
    )


# --- one case ----------------------------------------------------------------------------


def expand(release, batch) -> tuple[list[int], list[list[int]], list[bool]]:
    """The model's merge of a collated batch (as its forward does at inference:
    round_to 1, left padding), with each audio position's "embedding" being its
    codes, so that the merged rows are the delayed codes of each position."""
    ids = batch.input_ids
    text = torch.full((*ids.shape, K), -1, dtype=torch.long)
    audio_in = batch.audio_in_ids.T.contiguous() if batch.audio_in_ids.numel() else None
    audio_out = batch.audio_out_ids.T.contiguous() if batch.audio_out_ids.numel() else None
    merged = release.merge(
        None,
        None,
        audio_in,
        batch.audio_in_ids_start,
        audio_out,
        batch.audio_out_ids_start,
        CONFIG["audio_in_token_idx"],
        CONFIG["audio_out_token_idx"],
        text,
        ids,
        batch.attention_mask,
        None,
        pad_token_id=CONFIG["pad_token_id"],
        round_to=1,
        left_padding=True,
    )
    embedding, _, _, _, final_ids, in_mask, _, out_mask = merged
    audio = (in_mask | out_mask)[0]
    return final_ids[0].tolist(), embedding[0][audio].tolist(), out_mask[0][audio].tolist()


def run_case(release, tokenizer, spec: dict, prompts_dir: Path) -> dict:
    names = release.names
    transcript, speaker_tags = names["release_normalise"](spec["text"])
    chunks = spec.get("chunks") or [transcript]
    # The release chunks by word count (and ends a paragraph's last chunk with
    # "\n\n"); ours at sentences. The loop is given our chunks of the same text.
    assert " ".join(chunks).split() == transcript.split(), spec["name"]
    voices = spec.get("voices", [])
    codes = {v: codes_for(v, VOICES[v][1]) for v in voices}
    context = [chunk_codes(spec["name"], i) for i in range(len(chunks) - 1)]
    scene = release.scene.strip() if spec.get("scene", True) else None  # as main() reads it
    names["CURR_DIR"] = str(prompts_dir)
    audio_tokenizer = FakeAudioTokenizer(codes)
    messages, audio_ids = names["prepare_generation_context"](
        scene_prompt=scene,
        ref_audio=",".join(voices) or None,
        ref_audio_in_system_message=spec.get("refs_in_system", False),
        audio_tokenizer=audio_tokenizer,
        speaker_tags=speaker_tags,
    )

    collator = make_collator(release)
    seen = []  # (ChatMLSample, ChatMLDatasetSample) of each chunk's prompt
    real = names["prepare_chatml_sample"]

    def prepare(sample, tok):
        seen.append([sample])
        return real(sample, tok)

    def collate(samples):
        seen[-1].append(samples[0])
        return collator(samples)

    client = SimpleNamespace(
        _tokenizer=tokenizer,
        _collator=collate,
        _device="cpu",
        _model=FakeModel(context, release.delay),
        _audio_tokenizer=audio_tokenizer,
        _config=SimpleNamespace(use_delay_pattern=CONFIG["use_delay_pattern"]),
        _use_static_kv_cache=False,
        kv_caches=None,
        _max_new_tokens=16,
    )
    names["prepare_chatml_sample"] = prepare
    try:
        names["generate"](client, messages, audio_ids, chunks, None)
        raise AssertionError("the fake model should have stopped the loop")
    except FakeModel.Done:
        pass
    finally:
        names["prepare_chatml_sample"] = real
    assert len(seen) == len(chunks)
    chatml, sample = seen[-1]
    given = [*audio_ids, *map(torch.from_numpy, context)]  # the fake model gave them back
    assert not given or torch.equal(sample.audio_ids_concat, torch.cat(given, dim=1))
    # The loop's prompt ends with the assistant header; the serve engine's
    # _prepare_inputs(force_audio_gen=True) adds <|audio_out_bos|> after it,
    # as ours do (checked against it below, where it can run).
    bos = tokenizer.encode("<|audio_out_bos|>", add_special_tokens=False)
    sample.input_ids = torch.cat([sample.input_ids, torch.tensor(bos, dtype=torch.long)])
    batch = collator([sample])

    # _prepare_inputs encodes the audio it finds at each AudioContent's path, so
    # it can rebuild prompts whose audio all has one: no generated chunks, no
    # references in the system turn (those are given as audio_ids, url "").
    served = None
    if not context and not spec.get("refs_in_system"):
        engine = SimpleNamespace(
            tokenizer=tokenizer,
            audio_tokenizer=audio_tokenizer,
            collator=collator,
            device="cpu",
            model=SimpleNamespace(device="cpu"),
        )
        served = names["_prepare_inputs"](engine, chatml, force_audio_gen=True)
        for key in ("input_ids", "audio_out_ids", "audio_in_ids"):
            mine, theirs = getattr(batch, key), served[key]
            assert (mine is None and theirs is None) or torch.equal(mine, theirs), key

    input_ids, audio, audio_out = expand(release, batch)
    collated = batch.input_ids[0].tolist()
    return {
        "name": spec["name"],
        "text": spec["text"],
        "normalized": transcript,
        "scene": scene,
        "voices": [
            {"name": v, "transcript": VOICES[v][0], "codes": codes[v].tolist()} for v in voices
        ],
        "refs_in_system": spec.get("refs_in_system", False),
        "context": [
            {"text": t, "codes": c.tolist()} for t, c in zip(chunks[:-1], context, strict=True)
        ],
        "chunk": chunks[-1],
        "checked_with_serve_engine": served is not None,
        # One <|AUDIO|> / <|AUDIO_OUT|> per clip, as the collator returns it.
        "prompt": tokenizer.decode(collated, skip_special_tokens=False),
        "input_ids": input_ids,
        "audio": audio,
        "audio_out": audio_out,
    }


# --- output ------------------------------------------------------------------------------


def dump(cases: list[dict]) -> str:
    """JSON with every list of numbers (or flags) on one line."""
    text = json.dumps({"cases": cases}, indent=1, ensure_ascii=False)
    flat = re.compile(r"\[\s*((?:-?\d+|true|false)(?:,\s*(?:-?\d+|true|false))*)\s*\]")
    return flat.sub(lambda m: "[" + re.sub(r"\s+", " ", m.group(1)) + "]", text)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--release",
        type=Path,
        default=os.environ.get("HIGGS_RELEASE"),
        help="the extracted boson-ai/higgs-audio repository (default: $HIGGS_RELEASE)",
    )
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    if args.release is None or not (args.release / "examples/generation.py").is_file():
        parser.error("give --release (or HIGGS_RELEASE): the boson-ai/higgs-audio source folder")
    release = load_release(args.release.resolve())
    tokenizer = AutoTokenizer.from_pretrained(
        str(ROOT / "tests/fixtures/tokenizer"), clean_up_tokenization_spaces=False
    )
    cases = []
    with tempfile.TemporaryDirectory() as tmp:
        prompts = Path(tmp) / "voice_prompts"
        prompts.mkdir()
        for name, (transcript, _) in VOICES.items():
            (prompts / f"{name}.wav").write_bytes(b"")  # only its existence is checked
            (prompts / f"{name}.txt").write_text(transcript + "\n", encoding="utf-8")
        for spec in CASES:
            case = run_case(release, tokenizer, spec, Path(tmp))
            cases.append(case)
            print(
                f"{case['name']:28} {len(case['input_ids']):4} ids, {len(case['audio']):3} audio "
                f"rows ({sum(case['audio_out'])} out), {len(case['context'])} context chunks"
                + (", = serve engine" if case["checked_with_serve_engine"] else "")
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(dump(cases) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
