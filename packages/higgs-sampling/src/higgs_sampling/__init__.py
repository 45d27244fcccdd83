"""higgs_sampling: delay patterns, samplers and the frame loop of multi-codebook TTS on MLX.

The names load on first use: ``SamplingParams`` alone does not import MLX.
"""

import importlib
from importlib.metadata import version as _version
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from higgs_sampling.delay import (
        CodeColumns,
        apply_delay,
        build_delay_pattern,
        default_delays,
        frames_for_codes,
        frames_to_codes,
        revert_delay,
    )
    from higgs_sampling.frames import FrameSampler, FrameState, StopReason
    from higgs_sampling.params import SamplingParams
    from higgs_sampling.rows import RowSampler, RowState
    from higgs_sampling.samplers import filter_logits, greedy, gumbel_max, repetition_aware, sample

__version__ = _version("higgs-sampling")

# Each public name and the module that holds it.
_MODULES = {
    **dict.fromkeys(
        [
            "CodeColumns",
            "apply_delay",
            "build_delay_pattern",
            "default_delays",
            "frames_for_codes",
            "frames_to_codes",
            "revert_delay",
        ],
        "delay",
    ),
    **dict.fromkeys(["FrameSampler", "FrameState", "StopReason"], "frames"),
    "SamplingParams": "params",
    **dict.fromkeys(["RowSampler", "RowState"], "rows"),
    **dict.fromkeys(
        ["filter_logits", "greedy", "gumbel_max", "repetition_aware", "sample"], "samplers"
    ),
}
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
    "frames_for_codes",
    "frames_to_codes",
    "greedy",
    "gumbel_max",
    "repetition_aware",
    "revert_delay",
    "sample",
]


def __getattr__(name: str):
    if name not in _MODULES:
        raise AttributeError(f"module 'higgs_sampling' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"higgs_sampling.{_MODULES[name]}"), name)
    globals()[name] = value  # once: later lookups find it directly
    return value


def __dir__():
    return sorted([*globals(), *_MODULES])
