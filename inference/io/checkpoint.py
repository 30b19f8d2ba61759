"""A model directory as mlx-community ships it: find its weight files, plan them against the family's tensor spec,
load them with progress.

Validation happens against the config before anything is loaded, so a bad file fails fast with one line that
names it, and ``check_model_dir`` can list every problem at once (for ``bobby-tui inspect``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import mlx.core as mx

from ..api import LoadProgress
from ..config import read_json
from ..errors import CheckpointError, InferenceError
from ..models import family_of, read_model_args
from ..models.base import BaseModelArgs, QuantSpec
from ..safetensors_reader import SafetensorsFile, TensorInfo


def weight_files(model_dir: Path | str) -> list[Path]:
    """The safetensors files of a model: those the index names, else ``model.safetensors``, else ``model*.safetensors``."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise CheckpointError(model_dir, "model directory not found" if not model_dir.exists() else "not a directory")
    index_path = model_dir / "model.safetensors.index.json"
    if index_path.exists():
        weight_map = read_json(index_path, CheckpointError).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(index_path, "has no 'weight_map' object")
        files = [model_dir / name for name in sorted(set(weight_map.values()))]
        for f in files:
            if not f.exists():
                raise CheckpointError(f, "shard named in model.safetensors.index.json not found")
        return files
    files = sorted(model_dir.glob("model*.safetensors"))
    if not files:
        raise CheckpointError(model_dir, "no model.safetensors (or model.safetensors.index.json) in the model directory")
    return files


@dataclass
class CheckpointPlan:
    """What a model directory holds, validated against its config: ready to load, or a list of problems."""

    config: BaseModelArgs  # the family's ModelArgs
    files: dict[str, SafetensorsFile]  # tensor name -> the file that holds it
    quant: dict[str, QuantSpec | None]  # matrix module -> its quantization (None: dense)
    expected: set[str]  # the tensors the model is built from
    problems: list[str]

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
    quant: dict[str, QuantSpec | None] = {}
    ungrouped = set()  # quantized modules whose input is not whole groups: their tensors are not looked at
    for module, (_, in_f) in model_family.matrices(config).items():
        spec = quant[module] = config.quant_for(module, has_scales=f"{module}.scales" in files)
        if spec is not None and in_f % spec.group_size:
            problems.append(f"{config.path}: {module} input size {in_f} is not a multiple of group_size {spec.group_size}")
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
            problems.append(f"{shard.path}: tensor {name!r} has shape {list(info.shape)}, config.json implies {list(want.shape)}")
    for name in model_family.sanitize(config, list(files)):
        del files[name]
    return CheckpointPlan(config, files, quant, set(wanted), problems)


def check_model_dir(model_dir: Path | str) -> list[str]:
    """Every problem found in a model directory, one line each; empty when it loads."""
    try:
        plan = plan_checkpoint(model_dir)
    except InferenceError as e:
        return [str(e)]
    unexpected = sorted(set(plan.files) - plan.expected)
    return plan.problems + [f"{plan.files[n].path}: unexpected tensor {n!r}" for n in unexpected]


def load_weights(
    plan: CheckpointPlan, dtype: mx.Dtype, progress: Callable[[LoadProgress], None] | None = None
) -> dict[str, mx.array]:
    """Load every tensor of a valid plan; floating tensors are cast to the compute dtype."""
    if plan.problems:
        raise CheckpointError(None, plan.problems[0])
    total, done = plan.total_bytes, 0
    weights = {}
    for name in sorted(plan.expected):
        shard = plan.files[name]
        array = shard.load(name)
        if mx.issubdtype(array.dtype, mx.floating):
            array = array.astype(dtype)
        mx.eval(array)
        weights[name] = array
        done += shard.tensors[name].nbytes
        if progress is not None:
            progress(LoadProgress(done, total))
    return weights
