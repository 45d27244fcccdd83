"""higgs_core: the Higgs Audio v2 dual-FFN language model on MLX.

Load a checkpoint in any of its layouts, quantize and save it, and generate
audio frames with ``higgs_sampling``'s frame state machine.
"""

from importlib.metadata import version as _version

from higgs_core.batch import (
    Batch,
    Event,
    Finished,
    Frames,
    LogitsProcessor,
    PrefixReady,
    Status,
    Ticket,
)
from higgs_core.config import ModelConfig
from higgs_core.errors import CheckpointError, ModelNotFoundError
from higgs_core.generate import FrameGenerator, GenerationResult, generate, generate_frames
from higgs_core.loading import load_model, quantize, resolve_path, save_model
from higgs_core.model import HiggsAudioModel
from higgs_core.prefix import Prefix, make_prefix

__version__ = _version("higgs-core")

__all__ = [
    "Batch",
    "CheckpointError",
    "Event",
    "Finished",
    "FrameGenerator",
    "Frames",
    "GenerationResult",
    "HiggsAudioModel",
    "LogitsProcessor",
    "ModelConfig",
    "ModelNotFoundError",
    "Prefix",
    "PrefixReady",
    "Status",
    "Ticket",
    "generate",
    "generate_frames",
    "load_model",
    "make_prefix",
    "quantize",
    "resolve_path",
    "save_model",
]
