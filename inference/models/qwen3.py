"""Qwen3, the whole family: config fields, tensor spec, sanitizing, and the decoder (embeddings, per-head q/k
RMSNorm, RoPE, grouped-query attention, SwiGLU MLP, tied or separate head)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn

from ..backends import cuda
from ..backends.cuda import attention, qk_rope
from ..cache import KVCache
from ..errors import ConfigError
from ..options import EngineOptions
from .base import (
    Adapter,
    AdapterChoice,
    BaseModelArgs,
    ConfigFields,
    Linear,
    Projection,
    QuantSpec,
    RowAdapters,
    TensorSpec,
    eos_ids,
    matrix_tensors,
    read_quantization,
)

ATTENTION_KEYS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
MLP_IN_KEYS = ("mlp.gate_proj", "mlp.up_proj")
PROJECTION_GROUPS = {  # projection name -> the checkpoint modules it runs, in output order
    "qkv": ATTENTION_KEYS,
    "o": ("self_attn.o_proj",),
    "gate_up": MLP_IN_KEYS,
    "down": ("mlp.down_proj",),
}
LORA_KEYS = tuple(key for keys in PROJECTION_GROUPS.values() for key in keys)  # a block's adaptable projections
EMBEDDINGS = ("model.embed_tokens",)  # matrix modules that are looked up, not multiplied: no LoRA on them


@dataclass(frozen=True, kw_only=True)
class ModelArgs(BaseModelArgs):
    hidden_size: int
    num_hidden_layers: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    tie_word_embeddings: bool
    max_position_embeddings: int

    @classmethod
    def from_dict(cls, raw: dict, path: Path) -> ModelArgs:
        """config.json's fields with mlx_lm's meaning: the keys mlx_lm requires are required here too."""
        rope = raw.get("rope_scaling") or (raw.get("rope_parameters") or {})
        if not isinstance(rope, dict):
            raise ConfigError(path, f"'rope_scaling' must be an object (got {rope!r})")
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in ("default", None):
            raise ConfigError(path, f"rope scaling {rope_type!r} is not supported")
        read = ConfigFields(raw, path)
        if read.boolean("use_sliding_window", False):
            raise ConfigError(path, "use_sliding_window: true is not supported (attention over the whole context only)")
        rope_theta = raw.get("rope_theta", rope.get("rope_theta"))
        if rope_theta is None:
            raise ConfigError(path, "missing required key 'rope_theta'")
        quantization, overrides = read_quantization(raw, path)
        heads, kv_heads = read.integer("num_attention_heads"), read.integer("num_key_value_heads")
        if heads % kv_heads:
            raise ConfigError(path, f"num_attention_heads ({heads}) must be a multiple of num_key_value_heads "
                                    f"({kv_heads})")
        return cls(
            model_type=raw["model_type"],
            hidden_size=read.integer("hidden_size"),
            num_hidden_layers=read.integer("num_hidden_layers"),
            intermediate_size=read.integer("intermediate_size"),
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            head_dim=read.integer("head_dim"),
            vocab_size=read.integer("vocab_size"),
            rms_norm_eps=read.positive_number("rms_norm_eps"),
            rope_theta=read.positive_number("rope_theta", value=rope_theta),
            tie_word_embeddings=read.boolean("tie_word_embeddings"),
            max_position_embeddings=read.integer("max_position_embeddings"),
            eos_token_ids=eos_ids(raw.get("eos_token_id")),
            quantization=quantization,
            quantization_overrides=overrides,
            path=path,
        )


def matrices(args: ModelArgs) -> dict[str, tuple[int, int]]:
    """Every (possibly quantized) matrix module -> (out_features, in_features)."""
    h, hd = args.hidden_size, args.head_dim
    shapes = {"model.embed_tokens": (args.vocab_size, h)}
    for i in range(args.num_hidden_layers):
        p = f"model.layers.{i}"
        shapes.update({
            f"{p}.self_attn.q_proj": (args.num_attention_heads * hd, h),
            f"{p}.self_attn.k_proj": (args.num_key_value_heads * hd, h),
            f"{p}.self_attn.v_proj": (args.num_key_value_heads * hd, h),
            f"{p}.self_attn.o_proj": (h, args.num_attention_heads * hd),
            f"{p}.mlp.gate_proj": (args.intermediate_size, h),
            f"{p}.mlp.up_proj": (args.intermediate_size, h),
            f"{p}.mlp.down_proj": (h, args.intermediate_size),
        })
    if not args.tie_word_embeddings:
        shapes["lm_head"] = (args.vocab_size, h)
    return shapes


def tensor_spec(args: ModelArgs, quant_of: Callable[[str], QuantSpec | None]) -> dict[str, TensorSpec]:
    """Every tensor the model is built from -> its shape and dtypes; matrix module m quantized as ``quant_of(m)``."""
    spec = matrix_tensors(matrices(args), quant_of)
    spec["model.norm.weight"] = TensorSpec((args.hidden_size,))
    for i in range(args.num_hidden_layers):
        p = f"model.layers.{i}"
        spec.update({
            f"{p}.input_layernorm.weight": TensorSpec((args.hidden_size,)),
            f"{p}.post_attention_layernorm.weight": TensorSpec((args.hidden_size,)),
            f"{p}.self_attn.q_norm.weight": TensorSpec((args.head_dim,)),
            f"{p}.self_attn.k_norm.weight": TensorSpec((args.head_dim,)),
        })
    return spec


def sanitize(args: ModelArgs, names: Iterable[str]) -> set[str]:
    """The checkpoint tensors the model drops on purpose: a tied model's stray ``lm_head`` (as mlx_lm does), and
    the RoPE frequencies some exporters save (``rotary_emb.inv_freq``: the model computes them from rope_theta)."""
    return {n for n in names
            if (args.tie_word_embeddings and n.startswith("lm_head.")) or n.endswith(".rotary_emb.inv_freq")}


class Block:
    def __init__(self, config: ModelArgs, index: int, weights: dict[str, mx.array], quant: dict[str, QuantSpec | None],
                 options: EngineOptions, kernel: bool):
        p = f"model.layers.{index}"
        self.index = index
        self.projections = {
            name: Projection([Linear.from_weights(weights, f"{p}.{key}", quant[f"{p}.{key}"]) for key in keys],
                             fuse=options.fuse_projections, kernel=kernel, dequantized_rows=options.dequantized_rows)
            for name, keys in PROJECTION_GROUPS.items()
        }
        self.input_norm = weights[f"{p}.input_layernorm.weight"]
        self.post_attention_norm = weights[f"{p}.post_attention_layernorm.weight"]
        self.q_norm = weights[f"{p}.self_attn.q_norm.weight"]
        self.k_norm = weights[f"{p}.self_attn.k_norm.weight"]
        self.n_heads, self.n_kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim, self.eps, self.rope_theta = config.head_dim, config.rms_norm_eps, config.rope_theta
        self.scale = config.head_dim**-0.5
        self.kernel = kernel  # our CUDA kernels: q/k norms and RoPE in one (backends/cuda/qk_rope.py)
        self.compile_halves = options.compile_block_halves
        # adapter (or the names of a RowAdapters) -> (queries_keys_values, finish), traced on first use
        self._compiled: dict[str | tuple[str, ...] | None, tuple] = {}

    def forget_traces(self) -> None:
        """Compiled halves hold the weights they traced (LoRA included): call after changing them."""
        self._compiled.clear()

    def queries_keys_values(self, x: mx.array, offset: int | mx.array, adapter: Adapter):
        """The block input (B, L, hidden) -> q (B, heads, L, head_dim), k and v (B, kv_heads, L, head_dim)."""
        B, L, _ = x.shape
        qkv_projection, normed = self.projections["qkv"], mx.fast.rms_norm(x, self.input_norm, self.eps)
        # the kernel reads the offset from the device (one for all rows, or one per row): a Python int, as an
        # uncompiled step passes, goes through MLX's ops
        if self.kernel and isinstance(offset, mx.array) and qkv_projection.fused and qk_rope.covers(x, self.head_dim):
            (qkv,) = qkv_projection(normed, adapter, split=False)
            return qk_rope.queries_keys_values(qkv, self.q_norm, self.k_norm, offset, self.n_heads, self.n_kv_heads,
                                               self.head_dim, self.eps, self.rope_theta)
        q, k, v = qkv_projection(normed, adapter)
        q = mx.fast.rms_norm(q.reshape(B, L, self.n_heads, -1), self.q_norm, self.eps).transpose(0, 2, 1, 3)
        k = mx.fast.rms_norm(k.reshape(B, L, self.n_kv_heads, -1), self.k_norm, self.eps).transpose(0, 2, 1, 3)
        v = v.reshape(B, L, self.n_kv_heads, -1).transpose(0, 2, 1, 3)
        q = mx.fast.rope(q, self.head_dim, traditional=False, base=self.rope_theta, scale=1.0, offset=offset)
        k = mx.fast.rope(k, self.head_dim, traditional=False, base=self.rope_theta, scale=1.0, offset=offset)
        return q, k, v

    def finish(self, attention: mx.array, x: mx.array, adapter: Adapter) -> mx.array:
        """Attention output (B, heads, L, head_dim) and the block input x -> the block output (B, L, hidden)."""
        B, L, _ = x.shape
        h = self.projections["o"](attention.transpose(0, 2, 1, 3).reshape(B, L, -1), adapter, residual=x)[0]
        gate, up = self.projections["gate_up"](mx.fast.rms_norm(h, self.post_attention_norm, self.eps), adapter)
        return self.projections["down"](nn.silu(gate) * up, adapter, residual=h)[0]

    def _row_adapter_halves(self, names: tuple[str, ...]) -> tuple:
        def rows(masks: tuple[mx.array, ...]) -> RowAdapters:
            return RowAdapters(tuple(zip(names, masks, strict=True)))

        return (mx.compile(lambda masks, x, offset: self.queries_keys_values(x, offset, rows(masks))),
                mx.compile(lambda masks, attention, x: self.finish(attention, x, rows(masks))))

    def __call__(self, x: mx.array, cache: KVCache, adapter: Adapter, positions: int | mx.array,
                 step_offset: mx.array | None, mask: str | mx.array | None, starts: mx.array | None = None
                 ) -> mx.array:
        """``positions``: where the new tokens sit (one number, or one per row); ``step_offset``: for one-token
        steps, the positions as an array (the compiled halves take it as an input, so one trace serves every step).
        ``starts``: for a one-token step of left-padded rows, each row's padding, for our attention kernel (then
        ``mask`` is None)."""
        L = x.shape[1]
        if L == 1 and self.compile_halves and step_offset is not None and isinstance(adapter, RowAdapters):
            # rows on different adapters: one trace per set of adapters, the row masks an input like the offset
            if adapter.names not in self._compiled:
                self._compiled[adapter.names] = self._row_adapter_halves(adapter.names)
            masks = tuple(mask for _, mask in adapter.masks)
            queries_keys_values, finish = (partial(half, masks) for half in self._compiled[adapter.names])
            offset = step_offset
        elif L == 1 and self.compile_halves and step_offset is not None:
            if adapter not in self._compiled:
                self._compiled[adapter] = (mx.compile(partial(self.queries_keys_values, adapter=adapter)),
                                            mx.compile(partial(self.finish, adapter=adapter)))
            queries_keys_values, finish = self._compiled[adapter]
            offset = step_offset
        else:
            queries_keys_values = partial(self.queries_keys_values, adapter=adapter)
            finish = partial(self.finish, adapter=adapter)
            offset = positions
        q, k, v = queries_keys_values(x, offset)
        k, v = cache.update_and_fetch(k, v)  # (B, kv_heads, offset + L, head_dim)
        if starts is not None:
            out = attention.decode_attention(q, cache.keys, cache.values, starts, step_offset, self.scale)
        else:
            out = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.scale, mask=mask)
        return finish(out, x)


class Model:
    projection_groups = PROJECTION_GROUPS

    def __init__(self, config: ModelArgs, weights: dict[str, mx.array], quant: dict[str, QuantSpec | None],
                 options: EngineOptions):
        """``weights``: every tensor of ``tensor_spec`` (floating ones in the compute dtype); ``quant``: each matrix
        module's quantization (None: dense)."""
        self.config, self.options, self.dtype = config, options, options.dtype
        kernel = options.cuda_kernels and cuda.available()  # decided once, at load, on the loading (engine) thread
        self.embed_tokens = Linear.from_weights(weights, "model.embed_tokens", quant["model.embed_tokens"])
        self.layers = [Block(config, i, weights, quant, options, kernel) for i in range(config.num_hidden_layers)]
        self.norm = weights["model.norm.weight"]
        head = (
            self.embed_tokens
            if config.tie_word_embeddings
            else Linear.from_weights(weights, "lm_head", quant["lm_head"])
        )
        self.lm_head = Projection([head], kernel=kernel)
        # one-token steps of left-padded rows: our attention kernel instead of MLX's masked fallback
        self.padded_attention_kernel = kernel and attention.covers(self.dtype, config.head_dim,
                                                                   config.num_attention_heads,
                                                                   config.num_key_value_heads)
        self.adapter_names: list[str] = []  # in the order they were loaded (lora.apply_adapter)

    def new_cache(self, batch: int = 1, left_padding: list[int] | None = None) -> list[KVCache]:
        c = self.config
        return [KVCache(batch, c.num_key_value_heads, c.head_dim, self.dtype, left_padding) for _ in self.layers]

    def adapter_for(self, adapter: AdapterChoice, rows: int) -> Adapter:
        """What a forward pass of ``rows`` rows runs with: None or False (the base model), an adapter's name, True
        (the one adapter loaded), or one name-or-None per row."""
        if adapter is True:
            if len(self.adapter_names) != 1:
                raise ValueError(f"adapter=True needs exactly one adapter loaded (loaded: {self.adapter_names})")
            return self.adapter_names[0]
        if adapter is False:
            return None
        if adapter is None or isinstance(adapter, RowAdapters):
            return adapter
        names = (adapter,) if isinstance(adapter, str) else tuple(adapter)
        unknown = [n for n in names if n is not None and n not in self.adapter_names]
        if unknown:
            raise ValueError(f"no adapter named {unknown[0]!r} is loaded")
        if isinstance(adapter, str):
            return adapter
        if len(names) != rows:
            raise ValueError(f"{len(names)} adapters given for {rows} rows")
        return RowAdapters.of(names, self.dtype)

    def decode(self, tokens: mx.array, cache: list[KVCache], adapter: AdapterChoice = None) -> mx.array:
        """One token per row, tokens (B, 1) -> logits (B, V); advances the cache by 1."""
        return self(tokens, cache, adapter)

    def __call__(self, tokens: mx.array, cache: list[KVCache], adapter: AdapterChoice = None, last_only: bool = True
                 ) -> mx.array:
        """tokens (B, L) -> logits (B, V) for the last position, or (B, L, V) for all; advances the cache by L.
        ``adapter``: see ``adapter_for``."""
        adapter = self.adapter_for(adapter, tokens.shape[0])
        h = self.embed_tokens.embed(tokens)
        L = tokens.shape[1]
        positions, starts = cache[0].positions(), None
        if L == 1 and self.padded_attention_kernel and cache[0].padded:
            starts, mask = mx.array(cache[0].left_padding, dtype=mx.int32), None
        else:
            mask = cache[0].make_mask(L)
        step_offset = None
        if L == 1:
            step_offset = positions if isinstance(positions, mx.array) else mx.array(positions, dtype=mx.int32)
        for layer, layer_cache in zip(self.layers, cache, strict=True):
            h = layer(h, layer_cache, adapter, positions, step_offset, mask, starts)
        if last_only:
            h = h[:, -1, :]
        return self.lm_head(mx.fast.rms_norm(h, self.norm, self.config.rms_norm_eps), adapter)[0].astype(mx.float32)
