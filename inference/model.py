"""The Qwen3 decoder: embeddings, per-head q/k RMSNorm, RoPE, grouped-query attention, SwiGLU MLP, tied or separate head."""

from __future__ import annotations

import os
from functools import partial

import mlx.core as mx
import mlx.nn as nn

from .backends import cuda
from .backends.cuda import qk_rope
from .cache import KVCache
from .checkpoint import CheckpointPlan
from .config import ModelConfig
from .layers import Linear, Projection

ATTENTION_KEYS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
MLP_IN_KEYS = ("mlp.gate_proj", "mlp.up_proj")
FUSE_PROJECTIONS = True  # q/k/v as one matmul and gate/up as another (see docs/performance.md for what it costs)
# One-token steps run each block as two mx.compile'd halves around the cache write and attention (which stay op by
# op: in-place write, one-query attention kernel). A traced half replays without the Python and graph-building work
# of its ~15 ops, which bounds batch-1 decoding on a GPU (docs/performance.md).
COMPILE_BLOCK_HALVES = True
PROJECTION_GROUPS = {  # projection name -> the checkpoint modules it runs, in output order
    "qkv": ATTENTION_KEYS,
    "o": ("self_attn.o_proj",),
    "gate_up": MLP_IN_KEYS,
    "down": ("mlp.down_proj",),
}


class Block:
    def __init__(self, config: ModelConfig, index: int, weights: dict[str, mx.array], plan: CheckpointPlan,
                 kernel: bool):
        p = f"model.layers.{index}"
        self.index = index
        self.projections = {
            name: Projection([Linear.from_weights(weights, f"{p}.{key}", plan.quant[f"{p}.{key}"]) for key in keys],
                             fuse=FUSE_PROJECTIONS, kernel=kernel)
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
        self.compile_halves = COMPILE_BLOCK_HALVES
        self._compiled: dict[bool, tuple] = {}  # use_lora -> (queries_keys_values, finish), traced on first use

    def forget_traces(self) -> None:
        """Compiled halves hold the weights they traced (LoRA included): call after changing them."""
        self._compiled.clear()

    def queries_keys_values(self, x: mx.array, offset: int | mx.array, use_lora: bool):
        """The block input (B, L, hidden) -> q (B, heads, L, head_dim), k and v (B, kv_heads, L, head_dim)."""
        B, L, _ = x.shape
        qkv_projection, normed = self.projections["qkv"], mx.fast.rms_norm(x, self.input_norm, self.eps)
        if self.kernel and isinstance(offset, mx.array) and qkv_projection.fused and qk_rope.covers(x, self.head_dim):
            (qkv,) = qkv_projection(normed, use_lora, split=False)
            return qk_rope.queries_keys_values(qkv, self.q_norm, self.k_norm, offset, self.n_heads, self.n_kv_heads,
                                               self.head_dim, self.eps, self.rope_theta)
        q, k, v = qkv_projection(normed, use_lora)
        q = mx.fast.rms_norm(q.reshape(B, L, self.n_heads, -1), self.q_norm, self.eps).transpose(0, 2, 1, 3)
        k = mx.fast.rms_norm(k.reshape(B, L, self.n_kv_heads, -1), self.k_norm, self.eps).transpose(0, 2, 1, 3)
        v = v.reshape(B, L, self.n_kv_heads, -1).transpose(0, 2, 1, 3)
        q = mx.fast.rope(q, self.head_dim, traditional=False, base=self.rope_theta, scale=1.0, offset=offset)
        k = mx.fast.rope(k, self.head_dim, traditional=False, base=self.rope_theta, scale=1.0, offset=offset)
        return q, k, v

    def finish(self, attention: mx.array, x: mx.array, use_lora: bool) -> mx.array:
        """Attention output (B, heads, L, head_dim) and the block input x -> the block output (B, L, hidden)."""
        B, L, _ = x.shape
        h = self.projections["o"](attention.transpose(0, 2, 1, 3).reshape(B, L, -1), use_lora, residual=x)[0]
        gate, up = self.projections["gate_up"](mx.fast.rms_norm(h, self.post_attention_norm, self.eps), use_lora)
        return self.projections["down"](nn.silu(gate) * up, use_lora, residual=h)[0]

    def __call__(self, x: mx.array, cache: KVCache, use_lora: bool, offset: mx.array | None = None) -> mx.array:
        """``offset``: the cache offset as an array, for one-token steps (the compiled halves take it as an input)."""
        L = x.shape[1]
        if L == 1 and self.compile_halves and offset is not None:
            if use_lora not in self._compiled:
                self._compiled[use_lora] = (mx.compile(partial(self.queries_keys_values, use_lora=use_lora)),
                                            mx.compile(partial(self.finish, use_lora=use_lora)))
            queries_keys_values, finish = self._compiled[use_lora]
        else:
            queries_keys_values = partial(self.queries_keys_values, use_lora=use_lora)
            finish = partial(self.finish, use_lora=use_lora)
            offset = cache.offset
        q, k, v = queries_keys_values(x, offset)
        k, v = cache.update(self.index, k, v)  # (B, kv_heads, offset + L, head_dim)
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.scale, mask=cache.attention_mask(L))
        return finish(out, x)


class Qwen3Model:
    def __init__(self, config: ModelConfig, weights: dict[str, mx.array], plan: CheckpointPlan, dtype: mx.Dtype):
        self.config, self.dtype = config, dtype
        # Decided once, at load, on the loading (engine) thread's device; BOBBY_CUDA_KERNELS=0 turns them off.
        kernel = cuda.available() and os.environ.get("BOBBY_CUDA_KERNELS", "1") != "0"
        self.embed_tokens = Linear.from_weights(weights, "model.embed_tokens", plan.quant["model.embed_tokens"])
        self.layers = [Block(config, i, weights, plan, kernel) for i in range(config.num_hidden_layers)]
        self.norm = weights["model.norm.weight"]
        head = (
            self.embed_tokens
            if config.tie_word_embeddings
            else Linear.from_weights(weights, "lm_head", plan.quant["lm_head"])
        )
        self.lm_head = Projection([head], kernel=kernel)

    def new_cache(self, batch: int = 1) -> KVCache:
        c = self.config
        return KVCache(c.num_hidden_layers, batch, c.num_key_value_heads, c.head_dim, self.dtype)

    def decode(self, tokens: mx.array, cache: KVCache, use_lora: bool = False) -> mx.array:
        """One token per row, tokens (B, 1) -> logits (B, V); advances the cache by 1."""
        return self(tokens, cache, use_lora)

    def __call__(self, tokens: mx.array, cache: KVCache, use_lora: bool = False, last_only: bool = True) -> mx.array:
        """tokens (B, L) -> logits (B, V) for the last position, or (B, L, V) for all; advances the cache by L."""
        h = self.embed_tokens.embed(tokens)
        offset = mx.array(cache.offset, dtype=mx.int32) if tokens.shape[1] == 1 else None
        for layer in self.layers:
            h = layer(h, cache, use_lora, offset)
        cache.advance(tokens.shape[1])
        if last_only:
            h = h[:, -1, :]
        return self.lm_head(mx.fast.rms_norm(h, self.norm, self.config.rms_norm_eps), False)[0].astype(mx.float32)
