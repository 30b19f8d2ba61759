"""Writing the trained torch model as a Qwen3 checkpoint, then 4-bit in the mlx-community layout; reading a 4-bit
checkpoint back as float weights, to continue training it."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .qwen3 import Qwen3ForCausalLM, Qwen3Shape

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "generation_config.json")
QUANT_BITS = 4
QUANT_GROUP_SIZE = 64


def hf_config(shape: Qwen3Shape, eos_token_id: int, bos_token_id: int) -> dict:
    """config.json with every field a real Qwen3 checkpoint's (Qwen3-0.6B: tied embeddings) has."""
    fields = asdict(shape)
    return {
        "architectures": ["Qwen3ForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "head_dim": fields["head_dim"],
        "hidden_act": "silu",
        "hidden_size": fields["hidden_size"],
        "initializer_range": 0.02,
        "intermediate_size": fields["intermediate_size"],
        "max_position_embeddings": 40960,
        "max_window_layers": fields["num_hidden_layers"],
        "model_type": "qwen3",
        "num_attention_heads": fields["num_attention_heads"],
        "num_hidden_layers": fields["num_hidden_layers"],
        "num_key_value_heads": fields["num_key_value_heads"],
        "rms_norm_eps": fields["rms_norm_eps"],
        "rope_scaling": None,
        "rope_theta": int(fields["rope_theta"]),
        "sliding_window": None,
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
        "transformers_version": "4.51.0",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": fields["vocab_size"],
    }


def save_float_checkpoint(model: Qwen3ForCausalLM, tokenizer_dir: Path, out_dir: Path) -> None:
    """A float32 HF-layout checkpoint (model.safetensors + config + tokenizer files)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {name: p.detach().float().contiguous() for name, p in model.state_dict().items()}
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    generation = json.loads((tokenizer_dir / "generation_config.json").read_text())
    config = hf_config(model.shape, eos_token_id=generation["eos_token_id"][0], bos_token_id=generation["bos_token_id"])
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for name in TOKENIZER_FILES:
        shutil.copy(tokenizer_dir / name, out_dir / name)


def quantize_checkpoint(float_dir: Path, out_dir: Path) -> None:
    """4-bit, group 64, embeddings too, as `mlx_lm.convert -q` writes it (bf16 scales and biases)."""
    from mlx_lm import convert  # the pipeline's dependency, never the package's

    if out_dir.exists():
        shutil.rmtree(out_dir)
    convert(str(float_dir), mlx_path=str(out_dir), quantize=True, q_bits=QUANT_BITS,
            q_group_size=QUANT_GROUP_SIZE, dtype="bfloat16")
    # convert re-saves the tokenizer through transformers, which moves the chat template out of
    # tokenizer_config.json into chat_template.jinja; ship the original files, as a Qwen3 repo has.
    for name in ("chat_template.jinja", "README.md"):
        (out_dir / name).unlink(missing_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copy(float_dir / name, out_dir / name)


def shape_of(config: dict) -> Qwen3Shape:
    """The model shape a config.json (hf_config's fields) describes."""
    return Qwen3Shape(**{name: config[name] for name in Qwen3Shape.__dataclass_fields__})


def dequantize(packed: torch.Tensor, scales: torch.Tensor, biases: torch.Tensor, bits: int, group_size: int
               ) -> torch.Tensor:
    """MLX's affine dequantization: each uint32 packs 32 // bits values, lowest bits first; value * scale + bias,
    one scale and bias per group_size consecutive inputs of a row."""
    shifts = torch.arange(0, 32, bits, dtype=torch.int32)
    # int32 arithmetic (torch's uint32 has no shifts); the mask drops the sign bits a right shift brings in.
    values = (packed.view(torch.int32).unsqueeze(-1) >> shifts) & ((1 << bits) - 1)
    rows = packed.shape[0]
    groups = values.reshape(rows, -1, group_size).float()
    return (groups * scales.float().unsqueeze(-1) + biases.float().unsqueeze(-1)).reshape(rows, -1)


def load_quantized_checkpoint(model_dir: Path) -> tuple[Qwen3Shape, dict[str, torch.Tensor]]:
    """(shape, float32 state dict in the torch model's names) of a checkpoint quantize_checkpoint wrote."""
    config = json.loads((model_dir / "config.json").read_text())
    quantization = config.get("quantization")
    if quantization is None or quantization.get("mode", "affine") != "affine":
        raise SystemExit(f"{model_dir / 'config.json'}: not an affine-quantized MLX checkpoint")
    tensors: dict[str, torch.Tensor] = {}
    for path in sorted(model_dir.glob("model*.safetensors")):
        tensors.update(load_file(str(path)))
    state = {}
    for name, tensor in tensors.items():
        if name.endswith((".scales", ".biases")):
            continue
        if tensor.dtype == torch.uint32:
            stem = name.removesuffix(".weight")
            state[name] = dequantize(tensor, tensors[f"{stem}.scales"], tensors[f"{stem}.biases"],
                                     quantization["bits"], quantization["group_size"])
        else:
            state[name] = tensor.float()
    return shape_of(config), state
