"""`bobby-tui inspect`: what a model or adapter directory holds and every problem in it, read from headers only."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from inference import InferenceError
from inference.io.checkpoint import check_model_dir, weight_files
from inference.lora import AdapterConfig, check_adapter_dir
from inference.models import read_model_args as _read_args
from inference.models.base import BaseModelArgs as ModelConfig, QuantSpec
from inference.models.qwen3 import LORA_KEYS as ALL_LINEAR_KEYS
from inference.safetensors_reader import read_header

_LAYER_MODULE = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_QUANT_LEAVES = (".scales", ".biases")


@dataclass
class Report:
    kind: str  # "model" | "adapter"
    facts: list[tuple[str, str]] = field(default_factory=list)  # (label, value) in display order
    problems: list[str] = field(default_factory=list)

    def render(self, path: Path) -> str:
        width = max((len(label) for label, _ in self.facts), default=0)
        lines = [f"{path}: {self.kind}"]
        previous = None
        for label, value in self.facts:
            shown = "" if label == previous else label  # a fact on several lines names itself once
            lines.append(f"  {shown.ljust(width)}  {value}")
            previous = label
        if self.problems:
            lines.append(f"problems ({len(self.problems)}):")
            lines += [f"  - {p}" for p in self.problems]
        else:
            lines.append("problems: none")
        return "\n".join(lines)


def is_adapter_dir(path: Path) -> bool:
    return (path / "adapter_config.json").exists() or (path / "adapters.safetensors").exists()


def inspect_model(model_dir: Path) -> Report:
    report = Report("model", problems=check_model_dir(model_dir))
    try:
        config = _read_args(model_dir)
    except InferenceError:
        return report  # check_model_dir has said why
    report.facts += [
        ("model type", config.model_type),
        ("layers", str(config.num_hidden_layers)),
        ("hidden size", str(config.hidden_size)),
        ("intermediate size", str(config.intermediate_size)),
        ("attention heads", f"{config.num_attention_heads} query, {config.num_key_value_heads} key/value, "
                            f"head dim {config.head_dim}"),
        ("vocabulary", str(config.vocab_size)),
        ("tied embeddings", "yes (lm_head = embed_tokens)" if config.tie_word_embeddings else "no (separate lm_head)"),
        ("context", f"{config.max_position_embeddings} positions, rope theta {config.rope_theta:g}"),
    ]
    headers = _read_headers(model_dir)
    if headers is not None:
        files, tensors = headers
        quant = _module_quantization(config, tensors)
        report.facts.append(("parameters", _count(_parameter_count(tensors, quant))))
        report.facts += [("quantization", line) for line in _quantization_lines(quant)]
        weight_bytes = sum(f.stat().st_size for f in files)
        report.facts.append(("weights", f"{_bytes(weight_bytes)} in {len(files)} file{'s' if len(files) != 1 else ''}"))
    report.facts.append(("on disk", _bytes(_dir_bytes(model_dir))))
    return report


def inspect_adapter(adapter_dir: Path, model_dir: Path | None) -> Report:
    """The adapter alone, or checked against `model_dir` (default: the base model its config names, if local)."""
    model_dir = model_dir or _base_model_dir(adapter_dir)
    model_config = None
    problems: list[str] = []
    if model_dir is not None:
        try:
            model_config = _read_args(model_dir)
        except InferenceError as err:
            problems.append(f"cannot check against the model: {err}")
    report = Report("LoRA adapter", problems=problems + check_adapter_dir(adapter_dir, model_config))
    try:
        config = AdapterConfig.from_dir(adapter_dir)
    except InferenceError:
        return report
    report.facts += [
        ("type", config.fine_tune_type),
        ("rank", str(config.rank)),
        ("scale", f"{config.scale:g}"),
        ("effective multiplier", f"{config.scale:g} (the LoRA update is multiplied by scale itself, "
                                 f"not by scale/rank = {config.scale / config.rank:g} as in PEFT)"),
        ("dropout", f"{config.dropout:g} (training only)"),
        ("layers", _adapted_layers(config, model_config, model_dir)),
        ("projections", ", ".join(config.effective_keys(ALL_LINEAR_KEYS)) + (" (all linear projections)" if config.keys is None else "")),
    ]
    weights = adapter_dir / "adapters.safetensors"
    try:
        tensors = read_header(weights)
    except InferenceError:
        pass  # check_adapter_dir has said why
    else:
        report.facts.append(("parameters", _count(sum(_numel(t.shape) for t in tensors.values()))))
    report.facts.append(("on disk", _bytes(_dir_bytes(adapter_dir))))
    return report


def _base_model_dir(adapter_dir: Path) -> Path | None:
    """mlx_lm records the base model in adapter_config.json's "model": use it when it is a local directory
    (not a Hugging Face repo id)."""
    try:
        base = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8")).get("model")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(base, str) or not base:
        return None
    path = Path(base).expanduser()
    # mlx_lm writes the path as it was typed: relative to where training ran, most likely here
    candidates = [path] if path.is_absolute() else [Path.cwd() / path, adapter_dir / path]
    return next((c for c in candidates if (c / "config.json").exists()), None)


def _adapted_layers(config: AdapterConfig, model_config: ModelConfig | None, model_dir: Path | None) -> str:
    if model_config is None:
        count = "all" if config.num_layers < 0 else f"the last {config.num_layers}"
        return f"{count} of the model's layers (pass --model DIR to see which)"
    total = model_config.num_hidden_layers
    indices = config.layer_indices(total)
    return f"{_ranges(indices)} ({len(indices)} of {total}, counted on {model_dir})"


def _read_headers(model_dir: Path) -> tuple[list[Path], dict] | None:
    try:
        files = weight_files(model_dir)
        tensors = {}
        for path in files:
            tensors.update(read_header(path))
        return files, tensors
    except InferenceError:
        return None  # check_model_dir has said why


def _module_quantization(config: ModelConfig, tensors: dict) -> dict[str, QuantSpec | None]:
    """Every weight-bearing matrix module of the checkpoint -> its quantization (None: dense)."""
    modules = {name[: -len(".weight")] for name in tensors if name.endswith(".weight")}
    matrices = {m for m in modules if len(tensors[m + ".weight"].shape) == 2}
    return {m: config.quant_for(m, has_scales=f"{m}.scales" in tensors) for m in sorted(matrices)}


def _parameter_count(tensors: dict, quant: dict[str, QuantSpec | None]) -> int:
    """Parameters as the model sees them: packed weights unpacked, quantization scales and biases left out."""
    total = 0
    for name, info in tensors.items():
        module = name.rsplit(".", 1)[0]
        spec = quant.get(module)
        if spec is not None and name.endswith(_QUANT_LEAVES):
            continue
        numel = _numel(info.shape)
        total += numel * 32 // spec.bits if spec is not None and name.endswith(".weight") else numel
    return total


def _quantization_lines(quant: dict[str, QuantSpec | None]) -> list[str]:
    """One line per distinct quantization, its modules grouped: "4-bit, group size 64: embed_tokens; layers 0-27: ..."."""
    by_spec: dict[QuantSpec | None, list[str]] = defaultdict(list)
    for module, spec in quant.items():
        by_spec[spec].append(module)
    lines = []
    for spec in sorted(by_spec, key=lambda s: (s is None, s.bits if s else 0, s.group_size if s else 0)):
        label = "not quantized" if spec is None else f"{spec.bits}-bit, group size {spec.group_size}"
        lines.append(f"{label}: {_group_modules(by_spec[spec])}")
    return lines


def _group_modules(modules: list[str]) -> str:
    """"embed_tokens; layers 0-27: self_attn.q_proj, ...": per-layer modules folded over their layer indices."""
    layers_of: dict[str, list[int]] = defaultdict(list)  # module suffix -> layer indices
    others = []
    for module in modules:
        match = _LAYER_MODULE.match(module)
        if match:
            layers_of[match.group(2)].append(int(match.group(1)))
        else:
            others.append(module.removeprefix("model."))
    suffixes_of: dict[str, list[str]] = defaultdict(list)  # "0-27" -> suffixes adapted on exactly those layers
    for suffix in sorted(layers_of, key=_projection_order):
        suffixes_of[_ranges(layers_of[suffix])].append(suffix)
    parts = others + [
        f"{'layers' if len(set(layers_of[suffixes[0]])) > 1 else 'layer'} {ranges}: {', '.join(suffixes)}"
        for ranges, suffixes in suffixes_of.items()
    ]
    return "; ".join(parts)


def _projection_order(suffix: str) -> tuple[int, str]:
    """q, k, v, o, gate, up, down: the order of a transformer block, not the alphabet."""
    return (ALL_LINEAR_KEYS.index(suffix) if suffix in ALL_LINEAR_KEYS else len(ALL_LINEAR_KEYS), suffix)


def _ranges(indices: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> "0-2, 5, 7-8"."""
    runs: list[list[int]] = []
    for i in sorted(set(indices)):
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _count(n: int) -> str:
    for unit, size in (("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= size:
            return f"{n:,} ({n / size:.2f}{unit})"
    return f"{n:,}"


def _bytes(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n:,} bytes ({n / size:.1f} {unit})"
    return f"{n:,} bytes"


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
