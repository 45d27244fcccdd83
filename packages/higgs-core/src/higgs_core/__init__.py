"""higgs_core: the Higgs Audio v2 dual-FFN language model on MLX.

Load a checkpoint in any of its layouts, quantize and save it, and generate
audio frames with ``higgs_sampling``'s frame state machine.
"""

from importlib.metadata import version as _version

from higgs_core.batch import Batch, Prefix, Stream, make_prefix
from higgs_core.config import ModelConfig
from higgs_core.errors import CheckpointError, ModelNotFoundError
from higgs_core.generate import FrameGenerator, GenerationResult, generate, generate_frames
from higgs_core.loading import load_model, quantize, resolve_path, save_model
from higgs_core.model import HiggsAudioModel

__version__ = _version("higgs-core")

__all__ = [
    "Batch",
    "CheckpointError",
    "FrameGenerator",
    "GenerationResult",
    "HiggsAudioModel",
    "ModelConfig",
    "ModelNotFoundError",
    "Prefix",
    "Stream",
    "generate",
    "generate_frames",
    "load_model",
    "make_prefix",
    "quantize",
    "resolve_path",
    "save_model",
]
