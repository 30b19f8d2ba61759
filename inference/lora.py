"""Runtime LoRA from an mlx_lm adapter directory (adapter_config.json + adapters.safetensors).

mlx_lm's LoRALinear computes ``y = W x + scale * ((x @ lora_a) @ lora_b)``: the multiplier is ``scale`` itself,
not ``scale / rank`` as in the PEFT convention. Getting this wrong makes a tuned model subtly worse.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx

from .config import read_json
from .errors import AdapterError, InferenceError
from .models import FAMILIES, family, family_of
from .models.base import BaseModelArgs
from .safetensors_reader import SafetensorsFile


@dataclass(frozen=True)
class AdapterConfig:
    fine_tune_type: str
    num_layers: int
    rank: int
    scale: float
    dropout: float
    keys: tuple[str, ...] | None  # None: every linear projection of the adapted blocks
    path: Path

    @classmethod
    def from_dir(cls, adapter_dir: Path | str) -> "AdapterConfig":
        adapter_dir = Path(adapter_dir)
        if not adapter_dir.is_dir():
            raise AdapterError(adapter_dir, "adapter directory not found" if not adapter_dir.exists() else "not a directory")
        path = adapter_dir / "adapter_config.json"
        raw = read_json(path, AdapterError)
        fine_tune_type = raw.get("fine_tune_type", "lora")
        if fine_tune_type != "lora":
            raise AdapterError(path, f"fine_tune_type {fine_tune_type!r} is not supported (only 'lora')")
        params = raw.get("lora_parameters")
        if not isinstance(params, dict):
            raise AdapterError(path, "missing 'lora_parameters' object")
        if "scale" not in params:
            hint = " (found 'alpha': mlx_lm adapters use 'scale')" if "alpha" in params else ""
            raise AdapterError(path, f"'lora_parameters' has no 'scale'{hint}")
        try:
            keys = params.get("keys")
            return cls(
                fine_tune_type=fine_tune_type,
                num_layers=int(raw["num_layers"]),
                rank=int(params["rank"]),
                scale=float(params["scale"]),
                dropout=float(params.get("dropout", 0.0)),
                keys=None if keys is None else tuple(str(k) for k in keys),
                path=path,
            )
        except KeyError as e:
            raise AdapterError(path, f"missing required key {e.args[0]!r}") from None
        except (TypeError, ValueError) as e:
            raise AdapterError(path, f"a value has the wrong type ({e})") from None

    def effective_keys(self, lora_keys: tuple[str, ...]) -> tuple[str, ...]:
        """The adapted projections, given the family's adaptable ones (``LORA_KEYS``)."""
        return lora_keys if self.keys is None else self.keys

    def layer_indices(self, num_hidden_layers: int) -> list[int]:
        """The adapted blocks: the last ``num_layers`` (mlx_lm: a negative count means all of them)."""
        count = num_hidden_layers if self.num_layers < 0 else min(self.num_layers, num_hidden_layers)
        return list(range(num_hidden_layers - count, num_hidden_layers))


def _read_adapter(adapter_dir: Path, config: BaseModelArgs | None) -> tuple[AdapterConfig, SafetensorsFile, list[str]]:
    adapter_config = AdapterConfig.from_dir(adapter_dir)
    weights_path = Path(adapter_dir) / "adapters.safetensors"
    tensors = SafetensorsFile(weights_path)
    problems = []
    # Without a model, the keys are checked against every family's projections
    families = [family_of(config)] if config is not None else [family(t, adapter_config.path) for t in FAMILIES]
    known = {key for f in families for key in f.LORA_KEYS}
    unknown_keys = [k for k in adapter_config.keys or () if k not in known]
    if unknown_keys:
        what = config.model_type if config is not None else " or ".join(FAMILIES)
        problems.append(f"{adapter_config.path}: lora keys {unknown_keys} are not {what} block projections")
    if config is None:
        return adapter_config, tensors, problems
    model_family = families[0]
    keys = adapter_config.effective_keys(model_family.LORA_KEYS)
    shapes = model_family.matrices(config)
    expected = {}
    for i in adapter_config.layer_indices(config.num_hidden_layers):
        for key in keys:
            module = f"model.layers.{i}.{key}"
            if module in shapes:
                out_f, in_f = shapes[module]
                expected[f"{module}.lora_a"] = (in_f, adapter_config.rank)
                expected[f"{module}.lora_b"] = (adapter_config.rank, out_f)
    for name, info in tensors.tensors.items():
        if name not in expected:
            problems.append(f"{weights_path}: tensor {name!r} names no adapted layer of the model ({config.num_hidden_layers} layers)")
        elif info.shape != expected[name]:
            problems.append(f"{weights_path}: tensor {name!r} has shape {list(info.shape)}, the model needs {list(expected[name])}")
    for name in sorted(set(expected) - set(tensors.tensors)):
        problems.append(f"{weights_path}: tensor {name!r} is missing")
    return adapter_config, tensors, problems


def check_adapter_dir(adapter_dir: Path | str, model_config: BaseModelArgs | None = None) -> list[str]:
    """Every problem found in an adapter directory (against a model, when given), one line each."""
    try:
        return _read_adapter(Path(adapter_dir), model_config)[2]
    except InferenceError as e:
        return [str(e)]


def apply_adapter(model, adapter_dir: Path | str) -> AdapterConfig:
    """Attach the adapter's LoRA weights to the model's projections (the base weights are untouched)."""
    adapter_config, tensors, problems = _read_adapter(Path(adapter_dir), model.config)
    if problems:
        raise AdapterError(None, problems[0])
    adapted = set(adapter_config.layer_indices(model.config.num_hidden_layers))
    keys_adapted = adapter_config.effective_keys(family_of(model.config).LORA_KEYS)
    for layer in model.layers:
        for name, keys in model.projection_groups.items():
            pairs = []
            for key in keys:
                module = f"model.layers.{layer.index}.{key}"
                if layer.index in adapted and key in keys_adapted:
                    pairs.append((tensors.load(f"{module}.lora_a"), tensors.load(f"{module}.lora_b")))
                else:
                    pairs.append(None)
            layer.projections[name].set_lora(pairs, adapter_config.scale, model.dtype)
        layer.forget_traces()
    mx.eval([lora.a for layer in model.layers for p in layer.projections.values() for lora in p.loras if lora])
    return adapter_config
