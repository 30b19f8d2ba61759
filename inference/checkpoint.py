"""A model directory as mlx-community ships it: find, validate and load its weights.

Validation happens against the config before anything is loaded, so a bad file fails fast with one line that
names it, and ``check_model_dir`` can list every problem at once (for ``bobby-tui inspect``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import mlx.core as mx

from .api import LoadProgress
from .config import ModelConfig, QuantSpec, read_json
from .errors import CheckpointError, InferenceError
from .safetensors_reader import SafetensorsFile, TensorInfo

FLOAT_DTYPES = ("F32", "F16", "BF16")


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


def linear_shapes(config: ModelConfig) -> dict[str, tuple[int, int]]:
    """Every (possibly quantized) matrix module of a Qwen3 model -> (out_features, in_features)."""
    h, hd = config.hidden_size, config.head_dim
    shapes = {"model.embed_tokens": (config.vocab_size, h)}
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}"
        shapes.update({
            f"{p}.self_attn.q_proj": (config.num_attention_heads * hd, h),
            f"{p}.self_attn.k_proj": (config.num_key_value_heads * hd, h),
            f"{p}.self_attn.v_proj": (config.num_key_value_heads * hd, h),
            f"{p}.self_attn.o_proj": (h, config.num_attention_heads * hd),
            f"{p}.mlp.gate_proj": (config.intermediate_size, h),
            f"{p}.mlp.up_proj": (config.intermediate_size, h),
            f"{p}.mlp.down_proj": (h, config.intermediate_size),
        })
    if not config.tie_word_embeddings:
        shapes["lm_head"] = (config.vocab_size, h)
    return shapes


def norm_shapes(config: ModelConfig) -> dict[str, tuple[int]]:
    shapes = {"model.norm.weight": (config.hidden_size,)}
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}"
        shapes.update({
            f"{p}.input_layernorm.weight": (config.hidden_size,),
            f"{p}.post_attention_layernorm.weight": (config.hidden_size,),
            f"{p}.self_attn.q_norm.weight": (config.head_dim,),
            f"{p}.self_attn.k_norm.weight": (config.head_dim,),
        })
    return shapes


@dataclass
class CheckpointPlan:
    """What a model directory holds, validated against its config: ready to load, or a list of problems."""

    config: ModelConfig
    files: dict[str, SafetensorsFile]  # tensor name -> the file that holds it
    quant: dict[str, QuantSpec | None]  # matrix module -> its quantization (None: dense)
    expected: set[str]  # the tensors the model is built from
    problems: list[str]

    @property
    def total_bytes(self) -> int:
        return sum(self.files[name].tensors[name].nbytes for name in self.expected)


def plan_checkpoint(model_dir: Path | str) -> CheckpointPlan:
    """Read config and headers (not data) and check every expected tensor's presence, dtype and shape."""
    model_dir = Path(model_dir)
    paths = weight_files(model_dir)
    config = ModelConfig.from_dir(model_dir)
    files: dict[str, SafetensorsFile] = {}
    for path in paths:
        shard = SafetensorsFile(path)
        for name in shard.tensors:
            files[name] = shard
    problems: list[str] = []

    def expect(name: str, shape: tuple[int, ...], dtypes: tuple[str, ...]) -> None:
        shard = files.get(name)
        if shard is None:
            where = paths[0] if len(paths) == 1 else model_dir
            problems.append(f"{where}: tensor {name!r} is missing")
            return
        info: TensorInfo = shard.tensors[name]
        if info.dtype not in dtypes:
            problems.append(f"{shard.path}: tensor {name!r} has dtype {info.dtype}, expected {'/'.join(dtypes)}")
        elif info.shape != tuple(shape):
            problems.append(f"{shard.path}: tensor {name!r} has shape {list(info.shape)}, config.json implies {list(shape)}")

    quant: dict[str, QuantSpec | None] = {}
    expected: set[str] = set(norm_shapes(config))
    for module, (out_f, in_f) in linear_shapes(config).items():
        spec = config.quant_for(module, has_scales=f"{module}.scales" in files)
        quant[module] = spec
        expected.update(f"{module}.{leaf}" for leaf in (("weight", "scales", "biases") if spec else ("weight",)))
        if spec is None:
            expect(f"{module}.weight", (out_f, in_f), FLOAT_DTYPES)
            continue
        if in_f % spec.group_size:
            problems.append(f"{config.path}: {module} input size {in_f} is not a multiple of group_size {spec.group_size}")
            continue
        expect(f"{module}.weight", (out_f, in_f * spec.bits // 32), ("U32",))
        expect(f"{module}.scales", (out_f, in_f // spec.group_size), FLOAT_DTYPES)
        expect(f"{module}.biases", (out_f, in_f // spec.group_size), FLOAT_DTYPES)
    for name, shape in norm_shapes(config).items():
        expect(name, shape, FLOAT_DTYPES)
    if config.tie_word_embeddings:  # mlx_lm drops a stray lm_head of a tied model; so do we
        for name in [n for n in files if n.startswith("lm_head.")]:
            del files[name]
    return CheckpointPlan(config, files, quant, expected, problems)


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
