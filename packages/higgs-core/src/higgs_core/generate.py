"""The frame loop: prefill a prompt, then one model step per audio frame.

Sampling, repetition-aware sampling and the delay ramps are
``higgs_sampling.FrameSampler``'s; this module runs the model around it. Each
step is queued with ``mx.async_eval`` before the previous frame is handed out,
so the device never waits on Python, and the sampler's stop flag is read back
only every few frames (or every frame when frames are slow anyway).
"""

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from higgs_core.model import HiggsAudioModel
from higgs_sampling import FrameSampler, SamplingParams, StopReason

# Read the stop flag back every CHECK_FRAMES frames; once frames take longer
# than SLOW_FRAME seconds, every frame (a read-back is nothing next to them,
# and streaming consumers get each frame as soon as it is made).
CHECK_FRAMES = 4
SLOW_FRAME = 0.05


@dataclass(frozen=True)
class GenerationResult:
    """What a finished run produced.

    frames: ``[K, F]`` delayed codes; frame 0 is the synthetic all-BOS frame.
    codes: ``[K, T]`` the audio codes (delay reverted, BOS/EOS columns dropped).
    stop_reason: "eos" or "max_frames".
    num_frames: sampled frames (``F - 1``).
    prefill_seconds: the prompt's prefill and the first frame's sampling.
    decode_seconds: wall time from there to the end, including the time the
        caller spent between frames.
    """

    frames: mx.array
    codes: mx.array
    stop_reason: str
    prompt_tokens: int
    prefill_seconds: float
    decode_seconds: float

    @property
    def num_frames(self) -> int:
        return self.frames.shape[1] - 1

    @property
    def frames_per_second(self) -> float:
        return self.num_frames / self.decode_seconds if self.decode_seconds > 0 else 0.0


class FrameGenerator:
    """Iterates over sampled frames (``mx.array [K]`` int32, delayed layout, in
    order); ``result`` is set once the iterator is exhausted.

    See :func:`generate_frames`.
    """

    def __init__(
        self,
        model: HiggsAudioModel,
        input_ids,
        audio_ids=None,
        *,
        params: SamplingParams,
        max_frames: int,
        seed: int = 0,
        prefill_step: int = 512,
        history=None,
    ):
        cfg = model.config
        ids = np.asarray(input_ids.tolist() if isinstance(input_ids, mx.array) else input_ids)
        if ids.ndim != 1 or ids.size == 0:
            raise ValueError(f"input_ids must be a non-empty 1-D sequence, got shape {ids.shape}")
        if int(ids[-1]) != cfg.audio_out_bos_token_id:
            raise ValueError(
                f"input_ids must end with <|audio_out_bos|> ({cfg.audio_out_bos_token_id}), "
                f"got {int(ids[-1])}"
            )
        if prefill_step < 1:
            raise ValueError(f"prefill_step must be >= 1, got {prefill_step}")
        K = cfg.num_codebooks
        audio = None if audio_ids is None else mx.array(audio_ids).astype(mx.int32)
        if audio is not None and audio.size == 0:
            audio = None
        if audio is not None and (audio.ndim != 2 or audio.shape[1] != K):
            raise ValueError(f"audio_ids must be [N, {K}], got shape {tuple(audio.shape)}")
        model.route(ids, audio)  # every audio position has a frame
        if history is not None:
            history = mx.array(history).astype(mx.int32)
            if history.size == 0:
                history = None
            elif history.ndim != 2 or history.shape[1] != K:
                raise ValueError(f"history must be [N, {K}], got shape {tuple(history.shape)}")
        elif audio is not None:
            history = audio

        self.model = model
        self.ids = ids.astype(np.int64)
        self.audio = audio
        self.history = history
        self.prefill_step = prefill_step
        self.sampler = FrameSampler(
            K, cfg.audio_stream_bos_id, cfg.audio_stream_eos_id, params, max_frames=max_frames
        )
        self.seed = seed
        self.result: GenerationResult | None = None
        self._frames = self._run()

    def __iter__(self) -> Iterator[mx.array]:
        return self

    def __next__(self) -> mx.array:
        return next(self._frames)

    def _run(self) -> Iterator[mx.array]:
        model, sampler, cfg = self.model, self.sampler, self.model.config
        D = max(sampler.delays)
        cache = model.make_cache()

        # The synthetic BOS frame rides at the end of the prefill: its logits give frame 1.
        t0 = time.perf_counter()
        first, state = sampler.start(
            mx.random.key(self.seed), history=None if self.history is None else self.history.T
        )
        ids = np.append(self.ids, cfg.audio_out_token_id)
        audio = first[None] if self.audio is None else mx.concatenate([self.audio, first[None]])
        logits = model.prefill(ids, audio, cache, self.prefill_step)
        frame, state = sampler.step(logits, state)
        mx.eval(frame, state.arrays())
        t1 = time.perf_counter()

        frames = [first, frame]  # frames[t] is frame t
        end = sampler.max_frames  # the last frame that can exist; tightened once EOS shows
        t, handed, stopped = 1, 0, False
        last_check, last_check_time, interval = 0, t1, CHECK_FRAMES
        while not stopped:
            if t < end:  # queue frame t + 1 before reading anything back
                nxt, nxt_state = sampler.step(model.step(frame, cache), state)
                mx.async_eval(nxt, nxt_state.arrays())
            if t >= end or t - last_check >= interval:
                # Frame t + 1 is queued, so this read-back leaves the device busy.
                stop, pos, eos_col = (int(v) for v in (state.stop, state.pos, state.eos_col))
                now = time.perf_counter()
                slow = (now - last_check_time) / (t - last_check) > SLOW_FRAME
                interval = 1 if slow else CHECK_FRAMES
                last_check, last_check_time = t, now
                if stop != StopReason.RUNNING:
                    stopped, valid = True, pos - 1
                    stop_reason = StopReason(stop)
                else:
                    valid = t
                    if eos_col <= t:  # ramp-out running: the stream ends D frames past it
                        end = min(end, eos_col + D)
                for i in range(handed + 1, valid + 1):
                    yield frames[i]
                handed = max(handed, valid)
                if stopped:
                    break
            if t >= end:  # cannot happen: the sampler stops by the last frame
                raise RuntimeError(f"frame loop passed its last frame {end} without stopping")
            frames.append(nxt)
            frame, state, t = nxt, nxt_state, t + 1
            if t % 256 == 0:  # the KV cache grows in 256-step blocks; drop the old ones
                mx.clear_cache()

        stacked = mx.stack(frames[: handed + 1], axis=1)  # [K, F]
        if stacked.shape[1] > D:
            codes = sampler.to_codes(stacked)
        else:  # stopped before every codebook got past its delay: no whole column yet
            codes = mx.zeros((cfg.num_codebooks, 0), dtype=mx.int32)
        mx.eval(stacked, codes)
        self.result = GenerationResult(
            frames=stacked,
            codes=codes,
            stop_reason=stop_reason.label,
            prompt_tokens=len(self.ids),
            prefill_seconds=t1 - t0,
            decode_seconds=time.perf_counter() - t1,
        )
        del cache


def generate_frames(
    model: HiggsAudioModel,
    input_ids: Sequence[int] | mx.array,
    audio_ids=None,
    *,
    params: SamplingParams,
    max_frames: int,
    seed: int = 0,
    prefill_step: int = 512,
    history=None,
) -> FrameGenerator:
    """Stream audio frames for a prompt.

    ``input_ids``: 1-D token ids ending with ``<|audio_out_bos|>``; every
    audio placeholder position takes the next row of ``audio_ids [N, K]``
    (delayed-layout codes). Repetition-aware sampling looks back over
    ``history [M, K]`` (default: all of ``audio_ids``; the release passes its
    audio-out codes only, not audio in) and then the generated frames. Iterate
    for the frames; read ``.result`` afterwards. Runs with the same seed give
    the same frames.
    """
    return FrameGenerator(
        model,
        input_ids,
        audio_ids,
        params=params,
        max_frames=max_frames,
        seed=seed,
        prefill_step=prefill_step,
        history=history,
    )


def generate(model: HiggsAudioModel, input_ids, audio_ids=None, **kwargs) -> GenerationResult:
    """Run :func:`generate_frames` to the end and return its result."""
    gen = generate_frames(model, input_ids, audio_ids, **kwargs)
    for _ in gen:
        pass
    return gen.result
