"""Write the tiny text tokenizer used by the offline end-to-end tests.

It has the shape of the Higgs Audio (Llama-3) tokenizer at a fraction of the
size: a byte-level BPE of 384 entries, then the 256 Llama-3 special tokens with
Higgs' renamed audio tokens, at ``384 + (real_id - 128000)``. The tiny reference
models in tests/fixtures/core use the same ids (vocab 640, ``<|AUDIO_OUT|>`` =
400, ...).

Run from the repository root (workspace environment, no torch needed):

    uv run python scripts/make_tiny_tokenizer.py
"""

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

OUT = Path(__file__).resolve().parents[1] / "tests/fixtures/tokenizer"
BASE = 384  # where the special tokens start; the real tokenizer has 128000

# Higgs Audio's names for Llama-3's special token slots (offset from 128000).
NAMED = {
    0: "<|begin_of_text|>",
    1: "<|end_of_text|>",
    4: "<|finetune_right_pad_id|>",
    6: "<|start_header_id|>",
    7: "<|end_header_id|>",
    8: "<|eom_id|>",
    9: "<|eot_id|>",
    10: "<|python_tag|>",
    11: "<|audio_bos|>",
    12: "<|audio_eos|>",
    13: "<|audio_out_bos|>",
    15: "<|AUDIO|>",
    16: "<|AUDIO_OUT|>",
    18: "<|scene_desc_start|>",
    19: "<|scene_desc_end|>",
    22: "<SE>",
    23: "</SE>",
    24: "<SE_s>",
    25: "</SE_s>",
    26: "<SE_e>",
    27: "</SE_e>",
}

CORPUS = """\
Good morning. The weather today is clear, with a light breeze from the west.
Generate audio following instruction. Audio is recorded from a quiet room.
She spoke slowly and clearly, reading the letter aloud to the whole family.
He laughed, then asked whether anyone had seen the keys to the old car.
Numbers like 1, 2, 3 and 2026 appear in text; so do dates, times and prices.
A warm, friendly voice with a calm pace and very clear audio.
A deep male voice, slow and resonant, recorded close to the microphone.
The quick brown fox jumps over the lazy dog while the cat watches from the wall.
Speakers take turns: [SPEAKER0] opens the conversation and [SPEAKER1] replies.
Long passages are split at sentence boundaries so that each chunk stays short.
"""


def special_tokens() -> list[str]:
    return [NAMED.get(i, f"<|reserved_special_token_{i}|>") for i in range(256)]


def main():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BASE,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([CORPUS] * 4, trainer)
    if tok.get_vocab_size() != BASE:
        raise SystemExit(f"trained {tok.get_vocab_size()} entries, wanted {BASE}: grow the corpus")
    tok.add_special_tokens(special_tokens())
    for i, name in enumerate(special_tokens()):
        assert tok.token_to_id(name) == BASE + i, name

    OUT.mkdir(parents=True, exist_ok=True)
    tok.save(str(OUT / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|end_of_text|>",
        "model_max_length": 131072,
        "clean_up_tokenization_spaces": True,
    }
    (OUT / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    print(f"wrote {OUT} ({tok.get_vocab_size()} entries)")


if __name__ == "__main__":
    main()
