"""`bobby-tui inspect`: what a model or adapter directory holds and every problem in it, read from headers only."""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from inference import AdapterFacts, QuantSpec
from inference import inspect_adapter as engine_inspect_adapter
from inference import inspect_model as engine_inspect_model

_LAYER_MODULE = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


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
    facts = engine_inspect_model(model_dir)
    report = Report("model", problems=facts.problems)
    config = facts.config
    if config is None:
        return report  # the problems say why
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
    if facts.parameters is not None:
        report.facts.append(("parameters", _count(facts.parameters)))
        report.facts += [("quantization", line) for line in _quantization_lines(facts.quantization)]
        count = len(facts.weight_files)
        report.facts.append(("weights", f"{_bytes(facts.weight_bytes)} in {count} file{'s' if count != 1 else ''}"))
    if facts.skipped:
        report.facts.append(("skipped tensors", f"{len(facts.skipped)}, not used by the model: "
                                                f"{', '.join(facts.skipped)}"))
    report.facts.append(("on disk", _bytes(facts.disk_bytes)))
    return report


def inspect_adapter(adapter_dir: Path, model_dir: Path | None) -> Report:
    """The adapter alone, or checked against `model_dir` (default: the base model its config names, if local)."""
    facts = engine_inspect_adapter(adapter_dir, model_dir)
    report = Report("LoRA adapter", problems=facts.problems)
    config = facts.config
    if config is None:
        return report
    report.facts += [
        ("type", config.fine_tune_type),
        ("rank", str(config.rank)),
        ("scale", f"{config.scale:g}"),
        ("effective multiplier", f"{config.scale:g} (the LoRA update is multiplied by scale itself, "
                                 f"not by scale/rank = {config.scale / config.rank:g} as in PEFT)"),
        ("dropout", f"{config.dropout:g} (training only)"),
        ("layers", _adapted_layers(facts)),
        ("projections", ", ".join(facts.keys) + (" (all linear projections)" if facts.all_keys else "")),
    ]
    if facts.parameters is not None:
        report.facts.append(("parameters", _count(facts.parameters)))
    report.facts.append(("on disk", _bytes(facts.disk_bytes)))
    return report


def adapter_summary(adapter_dir: Path, model_dir: Path | None) -> tuple[str, list[str]]:
    """One line of an adapter's facts ("rank 8 · scale 20 · layers 0-3 (4 of 4) · 12,288 bytes (12.0 KiB)") and its
    problems."""
    facts = engine_inspect_adapter(adapter_dir, model_dir)
    if facts.config is None:
        return "", facts.problems
    config = facts.config
    if facts.layers is None:
        layers = "all layers" if config.num_layers <= 0 else f"the last {config.num_layers} layers"
    else:
        layers = f"layers {_ranges(facts.layers)} ({len(facts.layers)} of {facts.model_layers})"
    return " · ".join([f"rank {config.rank}", f"scale {config.scale:g}", layers, _bytes(facts.disk_bytes)]), \
        facts.problems


def _adapted_layers(facts: AdapterFacts) -> str:
    if facts.layers is None:
        count = "all" if facts.config.num_layers <= 0 else f"the last {facts.config.num_layers}"
        return f"{count} of the model's layers (pass --model DIR to see which)"
    return f"{_ranges(facts.layers)} ({len(facts.layers)} of {facts.model_layers}, counted on {facts.model_dir})"


def _quantization_lines(quant: dict[str, QuantSpec | None]) -> list[str]:
    """One line per distinct quantization, its modules grouped: "4-bit, group size 64: embed_tokens; layers 0-27:
    ..."."""
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
    layers_of: dict[str, list[int]] = defaultdict(list)  # module suffix -> layer indices, in block order (q, k, ...)
    others = []
    for module in modules:  # the engine lists a family's modules in block order
        match = _LAYER_MODULE.match(module)
        if match:
            layers_of[match.group(2)].append(int(match.group(1)))
        else:
            others.append(module)
    suffixes_of: dict[str, list[str]] = defaultdict(list)  # "0-27" -> suffixes adapted on exactly those layers
    for suffix in layers_of:
        suffixes_of[_ranges(layers_of[suffix])].append(suffix)
    parts = [m.removeprefix("model.") for m in sorted(others)] + [
        f"{'layers' if len(set(layers_of[suffixes[0]])) > 1 else 'layer'} {ranges}: {', '.join(suffixes)}"
        for ranges, suffixes in suffixes_of.items()
    ]
    return "; ".join(parts)


def _ranges(indices: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> "0-2, 5, 7-8"."""
    runs: list[list[int]] = []
    for i in sorted(set(indices)):
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


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
