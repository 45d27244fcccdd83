"""The frame loop for one prompt: a :class:`~higgs_core.batch.Batch` of one stream.

Sampling, repetition-aware sampling and the delay ramps are higgs_sampling's;
the batch runs the model around them, one step queued ahead of the read-back,
so the device never waits on Python. One stream alone and the same stream
among others run the same code.
"""

from collections.abc import Iterator, Sequence

import mlx.core as mx

from higgs_core.batch import Batch, Finished, Frames, GenerationResult, LogitsProcessor, Prefix
from higgs_core.model import HiggsAudioModel
from higgs_sampling import SamplingParams

__all__ = ["FrameGenerator", "GenerationResult", "generate", "generate_frames"]


class FrameGenerator:
    """Stream audio frames for a prompt: a :class:`Batch` of one stream, its
    :class:`~higgs_core.Frames` events handed out as they come.

    ``input_ids``: 1-D token ids ending with ``<|audio_out_bos|>``; every
    audio placeholder position takes the next row of ``audio_ids [N, K]``
    (delayed-layout codes). Repetition-aware sampling looks back over
    ``history [M, K]`` (default: all of ``audio_ids``; the release passes its
    audio-out codes only, not audio in) and then the generated frames.
    ``prefix``: the cached KV state of the prompt's beginning
    (:func:`higgs_core.make_prefix`). ``logits_processor``: see
    :data:`higgs_core.LogitsProcessor`. Iterate for the frames (``mx.array [K]``
    int32, delayed layout, in order); ``result`` is set once they run out. Runs
    with the same seed give the same frames.
    """

    def __init__(
        self,
        model: HiggsAudioModel,
        input_ids: Sequence[int] | mx.array,
        audio_ids=None,
        *,
        params: SamplingParams,
        max_frames: int,
        seed: int = 0,
        prefill_step: int = 512,
        history=None,
        prefix: Prefix | None = None,
        logits_processor: LogitsProcessor | None = None,
    ):
        self.batch = Batch(model, max_batch=1, prefill_chunk=prefill_step)
        self.ticket = self.batch.submit(
            input_ids,
            audio_ids,
            params=params,
            max_frames=max_frames,
            seed=seed,
            history=history,
            prefix=prefix,
            logits_processor=logits_processor,
        )
        self.result: GenerationResult | None = None
        self._frames = self._run()

    def __iter__(self) -> Iterator[mx.array]:
        return self

    def __next__(self) -> mx.array:
        return next(self._frames)

    def cancel(self):
        self.ticket.cancel()

    def _run(self) -> Iterator[mx.array]:
        while self.result is None:
            for event in self.batch.step():
                if isinstance(event, Frames):
                    yield from event.frames
                elif isinstance(event, Finished):
                    self.result = event.result


generate_frames = FrameGenerator  # the name the library has always had for it


def generate(model: HiggsAudioModel, input_ids, audio_ids=None, **kwargs) -> GenerationResult:
    """Run a :class:`FrameGenerator` to the end and return its result."""
    gen = FrameGenerator(model, input_ids, audio_ids, **kwargs)
    for _ in gen:
        pass
    assert gen.result is not None  # set when the frames run out
    return gen.result
