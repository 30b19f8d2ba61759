"""Model configuration: config.json as mlx-community ships Qwen3, as plain data classes."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError

SUPPORTED_MODEL_TYPES = ("qwen3",)


@dataclass(frozen=True)
class QuantSpec:
    bits: int
    group_size: int


def read_json(path: Path, error=ConfigError) -> dict:
    """Load a JSON object from ``path``, raising ``error`` with a one-line message when it is missing or malformed."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(path, "file not found") from None
    except json.JSONDecodeError as e:
        raise error(path, f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise error(path, f"cannot be read ({e})") from None
    if not isinstance(data, dict):
        raise error(path, "expected a JSON object")
    return data


def _quant_spec(path: Path, where: str, value) -> QuantSpec | None:
    if value is False or value is None:
        return None
    try:
        spec = QuantSpec(bits=int(value["bits"]), group_size=int(value["group_size"]))
    except (KeyError, TypeError, ValueError):
        raise ConfigError(path, f"quantization entry {where!r} needs integer 'bits' and 'group_size'") from None
    if spec.bits not in (2, 3, 4, 5, 6, 8) or spec.group_size not in (32, 64, 128):
        raise ConfigError(path, f"quantization {where!r}: unsupported bits={spec.bits} group_size={spec.group_size}")
    return spec


@dataclass(frozen=True)
class ModelConfig:
    model_type: str
    hidden_size: int
    num_hidden_layers: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    rms_norm_eps: float
    rope_theta: float
    tie_word_embeddings: bool
    max_position_embeddings: int
    eos_token_ids: tuple[int, ...] = ()
    quantization: QuantSpec | None = None
    # Per-module overrides as mlx_lm writes them: "model.layers.0.mlp.down_proj": {"bits": 8, ...} or False.
    quantization_overrides: dict[str, QuantSpec | None] = field(default_factory=dict)
    path: Path | None = None

    @classmethod
    def from_dir(cls, model_dir: Path | str) -> "ModelConfig":
        path = Path(model_dir) / "config.json"
        return cls.from_dict(read_json(path), path)

    @classmethod
    def from_dict(cls, raw: dict, path: Path) -> "ModelConfig":
        model_type = raw.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ConfigError(path, f"unknown model_type {model_type!r} (supported: {', '.join(SUPPORTED_MODEL_TYPES)})")
        rope = raw.get("rope_scaling") or (raw.get("rope_parameters") or {})
        rope_type = rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, dict) else "default"
        if rope_type not in ("default", None):
            raise ConfigError(path, f"rope scaling {rope_type!r} is not supported")
        rope_theta = raw.get("rope_theta", rope.get("rope_theta") if isinstance(rope, dict) else None)
        try:
            heads = int(raw["num_attention_heads"])
            hidden = int(raw["hidden_size"])
            eos = raw.get("eos_token_id")
            quant_raw = raw.get("quantization") or raw.get("quantization_config")
            default_quant, overrides = None, {}
            if isinstance(quant_raw, dict):
                default_quant = _quant_spec(path, "quantization", quant_raw)
                overrides = {
                    key: _quant_spec(path, key, value)
                    for key, value in quant_raw.items()
                    if key not in ("bits", "group_size", "mode", "quant_method") and (isinstance(value, dict) or value is False)
                }
                if quant_raw.get("mode", "affine") != "affine":
                    raise ConfigError(path, f"quantization mode {quant_raw['mode']!r} is not supported (only affine)")
            return cls(
                model_type=model_type,
                hidden_size=hidden,
                num_hidden_layers=int(raw["num_hidden_layers"]),
                intermediate_size=int(raw["intermediate_size"]),
                num_attention_heads=heads,
                num_key_value_heads=int(raw.get("num_key_value_heads", heads)),
                head_dim=int(raw.get("head_dim") or hidden // heads),
                vocab_size=int(raw["vocab_size"]),
                rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
                rope_theta=float(rope_theta if rope_theta is not None else 1_000_000.0),
                tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
                max_position_embeddings=int(raw.get("max_position_embeddings", 40960)),
                eos_token_ids=tuple(eos if isinstance(eos, list) else [eos] if eos is not None else []),
                quantization=default_quant,
                quantization_overrides=overrides,
                path=path,
            )
        except KeyError as e:
            raise ConfigError(path, f"missing required key {e.args[0]!r}") from None
        except (TypeError, ValueError) as e:
            raise ConfigError(path, f"a value has the wrong type ({e})") from None

    def quant_for(self, module_path: str, has_scales: bool = True) -> QuantSpec | None:
        """The quantization of one module, e.g. ``model.layers.3.mlp.down_proj``.

        Like mlx_lm: an explicit per-module entry wins; otherwise a module is quantized with the default spec when
        the checkpoint carries ``<module>.scales``.
        """
        if module_path in self.quantization_overrides:
            return self.quantization_overrides[module_path]
        return self.quantization if has_scales else None
