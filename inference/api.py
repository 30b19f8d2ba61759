"""What a front end exchanges with the engine: parameters, requests and events. No MLX import.

The app's UI thread, the CLI's argument checks and the HTTP server build these and read them without loading MLX
(``python -X importtime -c "import bobby_tui.app"`` shows no ``mlx``); only the engine thread imports the rest of
``inference``. Sampling parameters are validated here, once: the config file, the CLI and the server derive their
limits from ``SAMPLING_LIMITS``.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, fields, replace

from .errors import InferenceError


class ParameterError(InferenceError, ValueError):
    """A sampling or request parameter is out of its range; the message names the parameter."""

    def __init__(self, problem: str):
        super().__init__(None, problem)


SEED_LIMIT = 2**63  # seeds are in [0, SEED_LIMIT): MLX's random keys take a 64-bit unsigned seed


@dataclass(frozen=True)
class Limit:
    """The range of one numeric parameter: ``low`` and ``high`` inclusive unless ``*_open``; None is unbounded."""

    low: float | None
    high: float | None
    integer: bool = False
    low_open: bool = False
    high_open: bool = False

    def problem(self, value: object) -> str | None:
        """What is wrong with ``value`` for this range (as "must be ..."), or None when it fits."""
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (self.integer and not isinstance(value, int)):
            return "must be an integer" if self.integer else "must be a number"
        if not math.isfinite(value):
            return "must be a finite number"
        too_low = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        too_high = self.high is not None and (value >= self.high if self.high_open else value > self.high)
        if too_low or too_high:
            return f"must be {self.describe()} (got {value})"
        return None

    def describe(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {_number(self.low)}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {_number(self.high)}"
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"in {left}{_number(self.low)}, {_number(self.high)}{right}"


def _number(value: float | None) -> str:
    return str(int(value)) if value is not None and float(value).is_integer() else str(value)


# The one place the sampling ranges are written down (the config, the CLI and the server check against these).
SAMPLING_LIMITS: dict[str, Limit] = {
    "temperature": Limit(0.0, 100.0),
    "top_p": Limit(0.0, 1.0, low_open=True),
    "top_k": Limit(0, None, integer=True),  # 0: off; larger than the vocabulary: off too (clamped by the sampler)
    "min_p": Limit(0.0, 1.0),
    "repetition_penalty": Limit(0.0, 100.0, low_open=True),
    "seed": Limit(0, SEED_LIMIT, integer=True, high_open=True),
}


@dataclass(frozen=True)
class SamplingParams:
    """How one draft picks its tokens. Invalid values raise ParameterError at construction."""

    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None  # None: one is picked, and reported back, so any draft can be reproduced

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and f.name == "seed":
                continue
            problem = SAMPLING_LIMITS[f.name].problem(value)
            if problem:
                raise ParameterError(f"{f.name} {problem}")

    def resolved(self) -> SamplingParams:
        return self if self.seed is not None else replace(self, seed=random.randrange(2**31))


@dataclass
class GenerationRequest:
    prompt: str  # fully rendered prompt text (see Engine.render_prompt)
    drafts: list[SamplingParams] = field(default_factory=lambda: [SamplingParams()])
    max_tokens: int = 256
    stop_strings: tuple[str, ...] = ()
    # One entry per draft: an adapter's name, or None for the base model. None: every draft runs with the engine's
    # current setting (its active adapter if switched on). Drafts of one request may differ (a spread of base /
    # adapter A / adapter B on one seed): each adapter in use prefills the prompt once.
    adapters: tuple[str | None, ...] | None = None


LOAD_PHASES = ("reading", "preparing", "warming up")  # in order: tensors read, weights transformed, kernels warmed


@dataclass(frozen=True)
class LoadProgress:
    done: int  # bytes of tensors loaded so far (while reading); 0 / 1 / ... steps in the later phases
    total: int  # bytes of tensors to load in all (while reading); steps of the phase in the later ones
    phase: str = "reading"  # one of LOAD_PHASES


@dataclass
class TokenDelta:
    draft: int
    text: str


@dataclass
class GenerationStats:
    prompt_tokens: int
    generated_tokens: int
    prefill_tok_s: float
    decode_tok_s: float
    peak_memory_bytes: int
    prefilled_tokens: int = 0  # the prompt tokens computed for this draft; the rest came from the prompt cache


@dataclass
class DraftDone:
    draft: int
    text: str
    finish_reason: str  # "stop" | "length" | "cancelled"
    params: SamplingParams  # with the seed that was used
    stats: GenerationStats
