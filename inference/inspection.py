"""What a model or adapter directory holds, and every problem that would stop or change a generation, read from
config files and safetensors headers only (no tensor data): the facts ``bobby-tui inspect`` prints."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .errors import AdapterError, InferenceError, TokenizerError
from .io.checkpoint import check_tokenizer_fits, plan_checkpoint, stop_token_ids, weight_files
from .lora import AdapterConfig, check_adapter_dir
from .models import lora_keys, read_model_args
from .models.base import BaseModelArgs, QuantSpec
from .safetensors_reader import read_header
from .tokenizer import Tokenizer


@dataclass
class ModelFacts:
    path: Path
    problems: list[str]  # one line each; empty when the model loads and generates
    config: BaseModelArgs | None = None  # the family's ModelArgs; None when config.json cannot be used
    skipped: list[str] = field(default_factory=list)  # tensors the model drops on purpose (harmless, known extras)
    # Every matrix module of the checkpoint -> its quantization (None: dense): the family's in block order, then
    # any other 2-D weight.
    quantization: dict[str, QuantSpec | None] = field(default_factory=dict)
    parameters: int | None = None  # as the model sees them: packed weights unpacked, scales and biases left out
    weight_files: list[Path] = field(default_factory=list)
    weight_bytes: int | None = None
    disk_bytes: int = 0


@dataclass
class AdapterFacts:
    path: Path
    problems: list[str]
    config: AdapterConfig | None = None
    model_dir: Path | None = None  # the model it was checked against (given, or the local base its config names)
    model_layers: int | None = None  # that model's layer count
    layers: list[int] | None = None  # the adapted blocks, when the model is known
    keys: tuple[str, ...] = ()  # the adapted projections of each adapted block
    all_keys: bool = False  # the config names no keys: every linear projection of the family
    parameters: int | None = None
    disk_bytes: int = 0


def inspect_model(model_dir: Path | str) -> ModelFacts:
    model_dir = Path(model_dir)
    facts = ModelFacts(model_dir, [], disk_bytes=_dir_bytes(model_dir))
    planned: dict[str, QuantSpec | None] = {}
    try:
        plan = plan_checkpoint(model_dir)
        facts.problems, facts.skipped, planned = plan.problems, plan.skipped, plan.quant
    except InferenceError as err:
        facts.problems.append(str(err))
    try:
        facts.config = read_model_args(model_dir)
    except InferenceError:
        return facts  # the plan has said why
    facts.problems += _tokenizer_problems(model_dir, facts.config)
    try:
        files = weight_files(model_dir)
        tensors = {}
        for path in files:
            tensors.update(read_header(path))
    except InferenceError:
        return facts  # the plan has said why
    facts.quantization = _module_quantization(facts.config, tensors, planned)
    facts.parameters = _parameter_count(tensors, facts.quantization)
    facts.weight_files, facts.weight_bytes = files, sum(f.stat().st_size for f in files)
    return facts


def inspect_adapter(adapter_dir: Path | str, model_dir: Path | str | None = None) -> AdapterFacts:
    """The adapter alone, or checked against ``model_dir`` (default: the base model its config names, if local)."""
    adapter_dir = Path(adapter_dir)
    model_dir = Path(model_dir) if model_dir is not None else _base_model_dir(adapter_dir)
    model_config, problems = None, []
    if model_dir is not None:
        try:
            model_config = read_model_args(model_dir)
        except InferenceError as err:
            problems.append(f"cannot check against the model: {err}")
    facts = AdapterFacts(adapter_dir, problems + check_adapter_dir(adapter_dir, model_config),
                         model_dir=model_dir if model_config is not None else None, disk_bytes=_dir_bytes(adapter_dir))
    try:
        facts.config = config = AdapterConfig.from_dir(adapter_dir)
    except InferenceError:
        return facts  # check_adapter_dir has said why
    facts.keys, facts.all_keys = config.effective_keys(lora_keys(model_config)), config.keys is None
    if model_config is not None:
        facts.model_layers = model_config.num_hidden_layers
        facts.layers = config.layer_indices(model_config.num_hidden_layers)
    try:
        tensors = read_header(adapter_dir / "adapters.safetensors")
    except InferenceError:
        return facts  # check_adapter_dir has said why
    facts.parameters = sum(_numel(t.shape) for t in tensors.values())
    return facts


def inspect_adapters_dir(folder: Path | str, model_dir: Path | str | None = None) -> list[tuple[str, AdapterFacts]]:
    """Each subfolder of ``folder`` as an mlx_lm adapter (named by the subfolder, in name order) with its facts
    against ``model_dir``; a subfolder's problems are listed in its facts, not raised. Hidden entries and files are
    left out; a folder that does not exist holds no adapters. A path that is not a folder raises AdapterError."""
    folder = Path(folder)
    if not folder.exists():
        return []
    if not folder.is_dir():
        raise AdapterError(folder, "the adapters folder is not a directory")
    try:
        children = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as err:
        raise AdapterError(folder, f"cannot list the adapters folder ({err.strerror or err})") from None
    return [(child.name, inspect_adapter(child, model_dir)) for child in children]


def _tokenizer_problems(model_dir: Path, config: BaseModelArgs) -> list[str]:
    """What stops a generation on the tokenizer's side: its files, the chat template, the stop tokens."""
    try:
        tokenizer = Tokenizer(model_dir)
    except InferenceError as err:
        return [str(err)]
    problems = []
    try:  # no template, or one that fails on the simplest conversation
        tokenizer.apply_chat_template([{"role": "user", "content": "hi"}])
    except TokenizerError as err:
        problems.append(str(err))
    for check in (check_tokenizer_fits, stop_token_ids):
        try:
            check(model_dir, config, tokenizer)
        except InferenceError as err:
            problems.append(str(err))
    return problems


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


def _module_quantization(config: BaseModelArgs, tensors: dict, planned: dict[str, QuantSpec | None]
                         ) -> dict[str, QuantSpec | None]:
    """``planned``: the plan's quantization of the family's modules, in block order; any other matrix as its
    config entry or default says."""
    modules = {name[: -len(".weight")] for name in tensors if name.endswith(".weight")}
    matrices = {m for m in modules if len(tensors[m + ".weight"].shape) == 2}
    known = [m for m in planned if m in matrices]
    ordered = known + sorted(matrices - set(known))
    return {m: planned[m] if m in planned else config.quant_for(m, has_scales=f"{m}.scales" in tensors)
            for m in ordered}


def _parameter_count(tensors: dict, quant: dict[str, QuantSpec | None]) -> int:
    total = 0
    for name, info in tensors.items():
        module = name.rsplit(".", 1)[0]
        spec = quant.get(module)
        if spec is not None and name.endswith((".scales", ".biases")):
            continue
        numel = _numel(info.shape)
        total += numel * 32 // spec.bits if spec is not None and name.endswith(".weight") else numel
    return total


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0
