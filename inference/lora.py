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
from .models import FAMILIES, family_of, lora_keys
from .models.base import BaseModelArgs, ConfigFields
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
    def from_dir(cls, adapter_dir: Path | str) -> AdapterConfig:
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
        read, lora = ConfigFields(raw, path, AdapterError), ConfigFields(params, path, AdapterError)
        return cls(
            fine_tune_type=fine_tune_type,
            num_layers=read.integer("num_layers", low=None),  # 0 or negative: every block (mlx_lm)
            rank=lora.integer("rank"),
            scale=lora.number("scale"),
            dropout=lora.number("dropout", 0.0),
            keys=lora.strings("keys", None),
            path=path,
        )

    def effective_keys(self, lora_keys: tuple[str, ...]) -> tuple[str, ...]:
        """The adapted projections, given the family's adaptable ones (``LORA_KEYS``)."""
        return lora_keys if self.keys is None else self.keys

    def layer_indices(self, num_hidden_layers: int) -> list[int]:
        """The adapted blocks: the last ``num_layers`` (mlx_lm: 0 or a negative count means all of them)."""
        count = num_hidden_layers if self.num_layers <= 0 else min(self.num_layers, num_hidden_layers)
        return list(range(num_hidden_layers - count, num_hidden_layers))

    def adapted_modules(self, config: BaseModelArgs) -> tuple[list[str], list[str]]:
        """The model's matrix modules the adapter changes, and the keys that name none it can. As mlx_lm reads
        ``keys``: a block's projection (``self_attn.q_proj``: in each of the last ``num_layers`` blocks) or a
        module's full path (``model.layers.3.mlp.up_proj``, ``lm_head``: that module, whatever ``num_layers``)."""
        model_family = family_of(config)
        adaptable = [m for m in model_family.matrices(config) if m not in model_family.EMBEDDINGS]
        modules, unusable = set(), []
        for key in self.effective_keys(model_family.LORA_KEYS):
            if key in model_family.LORA_KEYS:
                modules.update(f"model.layers.{i}.{key}" for i in self.layer_indices(config.num_hidden_layers))
            elif key in adaptable:
                modules.add(key)
            else:
                unusable.append(key)
        return [m for m in adaptable if m in modules], unusable


def _read_adapter(adapter_dir: Path, config: BaseModelArgs | None) -> tuple[AdapterConfig, SafetensorsFile, list[str]]:
    adapter_config = AdapterConfig.from_dir(adapter_dir)
    weights_path = Path(adapter_dir) / "adapters.safetensors"
    tensors = SafetensorsFile(weights_path)
    problems = []
    if config is None:  # the keys against every family's projections, as block keys or in full paths
        known = lora_keys()
        unusable = [k for k in adapter_config.keys or ()
                    if k not in known and k != "lm_head" and not any(k.endswith("." + key) for key in known)]
    else:
        modules, unusable = adapter_config.adapted_modules(config)
    if unusable:
        what = config.model_type if config is not None else " or ".join(FAMILIES)
        problems.append(f"{adapter_config.path}: lora keys {unusable} are not {what} projections the adapter can "
                        f"change (a block's, e.g. {lora_keys(config)[0]!r}, or a module's full path)")
    if config is None:
        return adapter_config, tensors, problems
    shapes = family_of(config).matrices(config)
    expected = {}
    for module in modules:
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


def apply_adapter(model, adapter_dir: Path | str, name: str) -> AdapterConfig:
    """Attach the adapter's LoRA weights to the model's projections under ``name`` (the base weights are untouched;
    an adapter loaded before under that name is replaced)."""
    adapter_config, tensors, problems = _read_adapter(Path(adapter_dir), model.config)
    if problems:
        raise AdapterError(None, problems[0])
    adapted = set(adapter_config.adapted_modules(model.config)[0])

    def pair(module: str):
        return (tensors.load(f"{module}.lora_a"), tensors.load(f"{module}.lora_b")) if module in adapted else None

    for layer in model.layers:
        for group, keys in model.projection_groups.items():
            layer.projections[group].set_lora(name, [pair(f"model.layers.{layer.index}.{key}") for key in keys],
                                              adapter_config.scale, model.dtype)
        layer.forget_traces()
    model.lm_head.set_lora(name, [pair("lm_head")], adapter_config.scale, model.dtype)
    projections = [p for layer in model.layers for p in layer.projections.values()] + [model.lm_head]
    mx.eval([lora.a for p in projections for lora in p.loras[name] if lora])
    if name not in model.adapter_names:
        model.adapter_names.append(name)
    return adapter_config
