"""higgs_sampling: delay patterns, samplers and the frame loop of multi-codebook TTS on MLX."""

from importlib.metadata import version as _version

from higgs_sampling.delay import (
    CodeColumns,
    apply_delay,
    build_delay_pattern,
    default_delays,
    revert_delay,
)
from higgs_sampling.frames import FrameSampler, FrameState, StopReason
from higgs_sampling.rows import RowSampler, RowState
from higgs_sampling.samplers import (
    SamplingParams,
    filter_logits,
    greedy,
    gumbel_max,
    repetition_aware,
    sample,
)

__version__ = _version("higgs-sampling")

__all__ = [
    "CodeColumns",
    "FrameSampler",
    "FrameState",
    "RowSampler",
    "RowState",
    "SamplingParams",
    "StopReason",
    "apply_delay",
    "build_delay_pattern",
    "default_delays",
    "filter_logits",
    "greedy",
    "gumbel_max",
    "repetition_aware",
    "revert_delay",
    "sample",
]
