"""Voices into prompt speakers: a stored recording's codes (encoded once and kept),
a built-in voice's pin (spoken once by the model, then kept), reference recordings
and cloned codes; and the reference audio checks the CLI and the server run first."""

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from higgs_cli.generation import Generation, Warn
from higgs_cli.prompt import Speaker
from higgs_cli.runner import Work
from higgs_cli.settings import MAX_REF_SECONDS, HiggsError, ReferenceTooLong, Request, Settings
from higgs_cli.voices import BUILTINS, PIN_TEXT, VoiceError, VoiceStore, check_name, fingerprint
from higgs_core import Batch
from higgs_sampling import frames_for_codes

# A built-in voice's pin is kept only if the model ended it itself, at a sane length;
# otherwise the next seed is tried, this many times in all.
PIN_ATTEMPTS, PIN_SECONDS = 4, (2.0, 12.0)


class Voicing:
    """The speakers of requests, for one model and codec.

    ``encoder``: the codec with its encoders (loaded on first need);
    ``pin_key``/``codec_key``: the keys stored pins and recordings' codes are valid
    under; ``model_path``: recorded with a pin, as what made it.
    """

    def __init__(
        self,
        voices: VoiceStore,
        generation: Generation,
        encoder: Callable[[], object],
        *,
        pin_key: Callable[[], str],
        codec_key: Callable[[], str],
        model_path: Path,
        frame_rate: float,
        num_codebooks: int,
    ):
        self.voices = voices
        self.generation = generation
        self.encoder = encoder
        self.pin_key = pin_key
        self.codec_key = codec_key
        self.model_path = model_path
        self.frame_rate = frame_rate
        self.num_codebooks = num_codebooks
        self.max_ref_seconds = MAX_REF_SECONDS  # longest reference recording taken
        self._pins: dict[str, np.ndarray] = {}  # pins made here that could not be stored

    def encode_file(self, path: str | os.PathLike) -> np.ndarray:
        return encode_file(self.encoder(), path, self.max_ref_seconds)

    def speaker(self, name: str, batch: Batch, warn: Warn) -> Work:
        """The prompt speaker for voice ``name``, pinning a built-in voice on first use."""
        voice = self.voices.get(name)
        key = self.pin_key() if voice.kind == "builtin" else self.codec_key()
        try:
            codes = self.voices.codes(name, key, self.num_codebooks)
        except VoiceError as e:
            warn(f"{e}; making it again")
            codes = None
        if voice.kind == "recording":
            assert voice.audio is not None  # the store checks a recording has its copy
            if codes is None:
                codes = self.encode_file(voice.audio)
                try:
                    self.voices.save_codes(name, key, codes)
                except OSError as e:
                    warn(f"cannot store the codes of voice {name!r} ({e}); using them unstored")
            return Speaker(transcript=voice.transcript, codes=codes)
        if codes is None:
            codes = self._pins.get(name)
        if codes is None:
            codes = yield from self._pin(name, batch, warn)
        return Speaker(transcript=PIN_TEXT, codes=codes)

    def _pin(self, name: str, batch: Batch, warn: Warn) -> Work:
        """Speak the pin sentence in the described voice until the model ends it
        itself at a sane length (the voice's seed, then the next ones), and keep it."""
        builtin = BUILTINS[name]
        low, high = PIN_SECONDS
        # one column past the longest take kept, so a take that runs on stops past it
        max_frames = frames_for_codes(int(high * self.frame_rate) + 1, self.num_codebooks)
        speakers = [Speaker(description=builtin.description)]
        tries = []
        for attempt in range(PIN_ATTEMPTS):
            seed = builtin.seed + attempt
            settings = Settings(seed=seed)
            prompt = self.generation.prompt(PIN_TEXT, speakers, [], settings)
            res = yield from self.generation.frames(batch, prompt, settings, seed, max_frames)
            codes = np.array(res.codes, dtype=np.int32)
            seconds = codes.shape[1] / self.frame_rate
            tries.append((codes, res.stop_reason, seconds))
            if res.stop_reason == "eos" and low <= seconds <= high:
                made_by = {"model": str(self.model_path), "seed": seed, "seconds": seconds}
                try:
                    self.voices.pin(name, self.pin_key(), codes, PIN_TEXT, made_by=made_by)
                except OSError as e:
                    warn(f"cannot store the pin of {name!r} ({e}); it lasts until exit")
                    self._pins[name] = codes
                return codes
        codes = next((t for t in tries if t[1] == "eos"), tries[0])[0]
        warn(
            f"{PIN_ATTEMPTS} tries at pinning {name!r} gave no clean take (stopped on "
            f"{', '.join(f'{t[1]} at {t[2]:.1f} s' for t in tries)}); using one for this "
            "run only"
        )
        self._pins[name] = codes
        return codes

    def speakers(self, request: Request, batch: Batch, warn: Warn) -> Work:
        """Voices for SPEAKER0, SPEAKER1, ...: named voices, then the references.
        With none, the prompt lets the model pick (one voice, or for a dialogue
        the release's alternating feminine/masculine descriptions)."""
        out = []
        for name in request.voices:
            out.append((yield from self.speaker(name, batch, warn)))
        for audio, transcript in request.refs:
            codes = self.encode_file(audio)
            out.append(Speaker(transcript=" ".join(transcript.split()), codes=codes))
        for transcript, codes in request.clones:
            if codes.shape[0] != self.num_codebooks:
                raise HiggsError(
                    f"a cloned voice has {codes.shape[0]} codebooks, the model {self.num_codebooks}"
                )
            out.append(Speaker(transcript=transcript, codes=np.asarray(codes, np.int32)))
        return out

    def prefix_folder(self, request: Request) -> Path | None:
        """Where a request's voice prefixes are stored: beside its voice, when its
        speakers are stored voices."""
        if not request.voices or request.refs or request.clones:
            return None
        folder = self.voices.root / request.voices[0]
        return folder if folder.is_dir() else None


def codec_key(codec) -> str:
    """The fingerprint under which codes made by ``codec`` are stored."""
    return f"codec-{fingerprint(codec.path)}"


def check_ref_audio(path: str | os.PathLike, max_seconds: float = MAX_REF_SECONDS):
    """A reference recording's length against the limit, from its header alone (no model,
    no decoding): what the CLI and the server check before anything loads."""
    from higgs_codec import CodecError
    from higgs_codec.audio import read_audio_info

    try:
        seconds = read_audio_info(path)
    except CodecError as e:
        raise HiggsError(str(e)) from e
    if seconds > max_seconds:
        raise ReferenceTooLong(
            f"{path} is {seconds:.1f} s long; reference audio may be at most {max_seconds:g} s"
        )


def encode_file(codec, path: str | os.PathLike, max_seconds: float = MAX_REF_SECONDS) -> np.ndarray:
    """Codes ``[K, T]`` of an audio file of at most ``max_seconds`` (checked before decoding)."""
    from higgs_codec import read_audio

    wave, sr = read_audio(path, max_seconds=max_seconds)
    return np.array(codec.encode(wave, sr), dtype=np.int32)


def add_voice(
    store: VoiceStore, codec, name, audio, text, *, force=False, max_seconds=MAX_REF_SECONDS
):
    """Encode a recording once and keep it, with its transcript, as voice ``name``.

    ``codec``: a loaded codec, or a hub id / folder to load one from. The audio
    is read and encoded before anything is written.
    """
    check_name(name)
    if isinstance(codec, str | os.PathLike):
        from higgs_codec import load_codec

        codec = load_codec(codec)
    codes = encode_file(codec, audio, max_seconds)
    return store.add(name, Path(audio), text, codes=codes, key=codec_key(codec), force=force)
