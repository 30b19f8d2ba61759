"""A model directory as mlx-community ships it: find its weight files, plan them against the family's tensor spec,
load them with progress.

Validation happens against the config before anything is loaded, so a bad file fails fast with one line that
names it, and a plan lists every problem at once (for ``bobby-tui inspect``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePath

import mlx.core as mx

from ..api import LoadProgress
from ..config import read_json
from ..errors import CheckpointError, ConfigError, TokenizerError
from ..models import family_of, read_model_args
from ..models.base import QUANT_BITS, QUANT_GROUP_SIZES, BaseModelArgs, QuantSpec, eos_ids
from ..safetensors_reader import SafetensorsFile, TensorInfo

_LAYER_TENSOR = re.compile(r"^model\.layers\.(\d+)\.")


def weight_files(model_dir: Path | str) -> list[Path]:
    """The safetensors files of a model: those the index names, else ``model.safetensors``, else
    ``model*.safetensors``."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise CheckpointError(model_dir, "model directory not found" if not model_dir.exists() else "not a directory")
    index_path = model_dir / "model.safetensors.index.json"
    if index_path.exists():
        weight_map = read_json(index_path, CheckpointError).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(index_path, "has no 'weight_map' object")
        names = set(weight_map.values())
        for name in names:
            if not isinstance(name, str) or not _inside(name):
                raise CheckpointError(index_path, f"shard {name!r} is not a file name inside the model directory")
        files = [model_dir / name for name in sorted(names)]
        for f in files:
            if not f.exists():
                raise CheckpointError(f, "shard named in model.safetensors.index.json not found")
    else:
        files = sorted(model_dir.glob("model*.safetensors"))
        if not files:
            raise CheckpointError(model_dir,
                                  "no model.safetensors (or model.safetensors.index.json) in the model directory")
    for f in files:
        if not f.is_file():  # a FIFO or a device would block or never end
            raise CheckpointError(f, "not a regular file")
    return files


def _inside(name: str) -> bool:
    """Whether a relative file name stays inside its directory (as written: a shard may be a symlink, as in the
    Hugging Face cache, whose target lies elsewhere)."""
    parts = PurePath(os.path.normpath(name)).parts
    return bool(parts) and not PurePath(name).is_absolute() and parts[0] not in ("..", ".") and "\0" not in name


@dataclass
class CheckpointPlan:
    """What a model directory holds, validated against its config: ready to load, or a list of problems."""

    config: BaseModelArgs  # the family's ModelArgs
    files: dict[str, SafetensorsFile]  # tensor name -> the file that holds it
    quant: dict[str, QuantSpec | None]  # matrix module -> its quantization (None: dense)
    expected: set[str]  # the tensors the model is built from
    problems: list[str]
    skipped: list[str]  # tensors of the checkpoint the family drops on purpose (known to be harmless)

    @property
    def total_bytes(self) -> int:
        return sum(self.files[name].tensors[name].nbytes for name in self.expected)


def plan_checkpoint(model_dir: Path | str) -> CheckpointPlan:
    """Read config and headers (not data) and check every tensor of the family's spec: presence, dtype and shape."""
    model_dir = Path(model_dir)
    paths = weight_files(model_dir)
    config = read_model_args(model_dir)
    model_family = family_of(config)
    files: dict[str, SafetensorsFile] = {}
    for path in paths:
        shard = SafetensorsFile(path)
        for name in shard.tensors:
            files[name] = shard
    problems: list[str] = []
    # A layer count far beyond the files' would make a spec (and a list of missing tensors) without bound: one line
    layers = getattr(config, "num_hidden_layers", None)
    held = {int(m.group(1)) for m in map(_LAYER_TENSOR.match, files) if m}
    if layers is not None and layers > len(held):
        problems.append(f"{config.path}: num_hidden_layers is {layers}, the checkpoint holds tensors of "
                        f"{len(held)} layers")
        return CheckpointPlan(config, files, {}, set(), problems, [])
    quant: dict[str, QuantSpec | None] = {}
    ungrouped = set()  # quantized modules whose input is not whole groups: their tensors are not looked at
    headers = {name: shard.tensors[name] for name, shard in files.items()}
    for module, (_, in_f) in model_family.matrices(config).items():
        spec = quant[module] = module_quantization(config, module, in_f, headers)
        if spec is not None and in_f % spec.group_size:
            problems.append(f"{config.path}: {module} input size {in_f} is not a multiple of group_size "
                            f"{spec.group_size}")
            ungrouped.add(module)
    wanted = model_family.tensor_spec(config, quant.get)
    for name, want in wanted.items():
        shard = files.get(name)
        if name.rsplit(".", 1)[0] in ungrouped:
            continue
        if shard is None:
            where = paths[0] if len(paths) == 1 else model_dir
            problems.append(f"{where}: tensor {name!r} is missing")
            continue
        info: TensorInfo = shard.tensors[name]
        if info.dtype not in want.dtypes:
            problems.append(f"{shard.path}: tensor {name!r} has dtype {info.dtype}, expected {'/'.join(want.dtypes)}")
        elif info.shape != want.shape:
            problems.append(f"{shard.path}: tensor {name!r} has shape {list(info.shape)}, config.json implies "
                            f"{list(want.shape)}")
    skipped = sorted(model_family.sanitize(config, list(files)))
    for name in skipped:
        del files[name]
    # Like mlx_lm ("parameters not in model"): a tensor the model would not use means the config does not describe
    # the checkpoint (biases it has no place for, more layers than config.json says), so the outputs would be wrong.
    for name in sorted(set(files) - set(wanted)):
        problems.append(f"{files[name].path}: tensor {name!r} is not used by the model{_layer_hint(config, name)}")
    return CheckpointPlan(config, files, quant, set(wanted), problems, skipped)


def module_quantization(config: BaseModelArgs, module: str, in_features: int | None,
                        tensors: dict[str, TensorInfo]) -> QuantSpec | None:
    """How one matrix module is stored, as mlx_lm 0.32 reads it: a per-module entry of config.json wins; otherwise a
    module with ``.scales`` in a quantized checkpoint is quantized, with the bits and group size its tensor shapes
    imply (the default when they imply none that exists: the shape check then names the problem)."""
    if module in config.quantization_overrides or in_features is None:
        return config.quant_for(module, has_scales=f"{module}.scales" in tensors)
    weight, scales = tensors.get(f"{module}.weight"), tensors.get(f"{module}.scales")
    if config.quantization is None or scales is None:
        return None
    if weight is not None and len(weight.shape) == len(scales.shape) == 2 and scales.shape[1] > 0:
        groups, packed_bits = scales.shape[1], weight.shape[1] * 32
        if in_features % groups == 0 and packed_bits % in_features == 0:
            spec = QuantSpec(bits=packed_bits // in_features, group_size=in_features // groups)
            if spec.bits in QUANT_BITS and spec.group_size in QUANT_GROUP_SIZES:
                return spec
    return config.quantization


def _layer_hint(config: BaseModelArgs, name: str) -> str:
    match = _LAYER_TENSOR.match(name)
    layers = getattr(config, "num_hidden_layers", None)
    if match and layers is not None and int(match.group(1)) >= layers:
        return f" (config.json says {layers} layers)"
    return ""


def check_tokenizer_fits(model_dir: Path, config: BaseModelArgs, tokenizer) -> None:
    """Every id the tokenizer can produce must name a row of the embedding table: a larger id would read past it."""
    if tokenizer.vocab_size > config.vocab_size:
        raise TokenizerError(model_dir / "tokenizer.json", f"has {tokenizer.vocab_size} tokens, more than the model's "
                             f"{config.vocab_size} embedding rows (vocab_size in config.json)")


def stop_token_ids(model_dir: Path, config: BaseModelArgs, tokenizer) -> set[int]:
    """The ids that end a generation, as mlx_lm (and transformers) choose them: generation_config.json's
    ``eos_token_id`` replaces config.json's, then the tokenizer's eos token is added (from tokenizer_config.json,
    else special_tokens_map.json)."""
    eos = set(config.eos_token_ids)
    generation_config = model_dir / "generation_config.json"
    if generation_config.exists():
        extra = read_json(generation_config).get("eos_token_id")
        if extra:
            eos = set(eos_ids(extra))
    eos |= tokenizer.eos_token_ids
    special_tokens = model_dir / "special_tokens_map.json"
    if not tokenizer.eos_token_ids and special_tokens.exists():
        entry = read_json(special_tokens, TokenizerError).get("eos_token")
        text = entry.get("content") if isinstance(entry, dict) else entry
        token = tokenizer.token_id(text) if isinstance(text, str) else None
        if token is not None:
            eos.add(token)
    if not eos:
        raise ConfigError(model_dir / "config.json",
                          "no eos_token_id in config.json, generation_config.json or the tokenizer")
    return eos


def load_weights(
    plan: CheckpointPlan, dtype: mx.Dtype, progress: Callable[[LoadProgress], None] | None = None
) -> dict[str, mx.array]:
    """Load every tensor of a valid plan; floating tensors are cast to the compute dtype."""
    if plan.problems:
        raise CheckpointError(None, plan.problems[0])
    total, done = plan.total_bytes, 0
    weights, finite = {}, []
    for name in sorted(plan.expected):
        shard = plan.files[name]
        array = shard.load(name)
        if mx.issubdtype(array.dtype, mx.floating):
            array = array.astype(dtype)
        mx.eval(array)
        if _checked_for_finite(name, array):
            finite.append(mx.all(mx.isfinite(array)))
        weights[name] = array
        done += shard.tensors[name].nbytes
        if progress is not None:
            progress(LoadProgress(done, total))
    _refuse_not_finite(plan, [n for n in sorted(plan.expected) if _checked_for_finite(n, weights[n])], finite)
    return weights


def _checked_for_finite(name: str, array: mx.array) -> bool:
    """Every floating tensor (norms, quantization scales and biases, dense matrices): a NaN or an infinity in any of
    them spoils the tokens that read it. The check is one reduction over an array that is in memory already;
    packed 4-bit words are integers and cannot hold one."""
    return mx.issubdtype(array.dtype, mx.floating)


def _refuse_not_finite(plan: CheckpointPlan, names: list[str], finite: list[mx.array]) -> None:
    if not finite:
        return
    flags = mx.stack(finite).tolist()
    broken = [name for name, ok in zip(names, flags, strict=True) if not ok]
    if broken:
        more = f" (and {len(broken) - 1} more)" if len(broken) > 1 else ""
        raise CheckpointError(plan.files[broken[0]].path,
                              f"tensor {broken[0]!r} holds NaN or infinity{more}: the checkpoint is broken")
