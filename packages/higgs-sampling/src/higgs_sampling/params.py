"""How to sample: the settings alone, with no MLX, so that a command line can read its
defaults and check its values without loading anything."""

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class SamplingParams:
    """How to pick a code from each codebook's logits.

    ``temperature`` 0 means greedy (argmax). ``top_k`` 0 and ``top_p`` 1
    disable those filters. Repetition-aware sampling redraws a codebook from
    its raw softmax when the sampled code already occurs ``ras_max_repeat``
    times in the codebook's last ``ras_window`` codes; ``ras_window`` 0 turns
    it off.

    The defaults are the settings the Higgs Audio release documents in its
    README (boson-ai/higgs-audio, "Usage": temperature 0.3, top_k 50, top_p
    0.95) with its RAS defaults (window 7, max repeat 2, ``examples/generation.py``).
    Its scripts' own signatures differ (generation.py 1.0, serve_engine.py
    0.7 and no top-k); the README is the documented contract.
    """

    temperature: float = 0.3
    top_k: int = 50
    top_p: float = 0.95
    ras_window: int = 7
    ras_max_repeat: int = 2

    def __post_init__(self):
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(f"temperature must be >= 0 (0 is greedy), got {self.temperature}")
        if not (isinstance(self.top_k, int) and self.top_k >= 0):
            raise ValueError(f"top_k must be an integer >= 0 (0 disables it), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not (isinstance(self.ras_window, int) and self.ras_window >= 0):
            raise ValueError(
                f"ras_window must be an integer >= 0 (0 disables it), got {self.ras_window}"
            )
        if self.ras_window > 0 and not (
            isinstance(self.ras_max_repeat, int) and self.ras_max_repeat >= 1
        ):
            raise ValueError(f"ras_max_repeat must be an integer >= 1, got {self.ras_max_repeat}")

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0
