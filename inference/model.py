"""The Qwen3 decoder: embeddings, per-head q/k RMSNorm, RoPE, grouped-query attention, SwiGLU MLP, tied or separate head."""

from __future__ import annotations

from functools import partial

import mlx.core as mx
import mlx.nn as nn

from .cache import FixedCapacityView, KVCache
from .checkpoint import CheckpointPlan
from .config import ModelConfig
from .layers import Linear, Projection

ATTENTION_KEYS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
MLP_IN_KEYS = ("mlp.gate_proj", "mlp.up_proj")
FUSE_PROJECTIONS = True  # q/k/v as one matmul and gate/up as another (see docs/performance.md for what it costs)
# The one-token step as one mx.compile'd graph over a fixed-capacity cache. Off: on the H100 it decoded 129 tok/s
# against 163 op by op, interleaved in one run (masked attention over the whole capacity, no in-place cache write).
COMPILE_DECODE = False
PROJECTION_GROUPS = {  # projection name -> the checkpoint modules it runs, in output order
    "qkv": ATTENTION_KEYS,
    "o": ("self_attn.o_proj",),
    "gate_up": MLP_IN_KEYS,
    "down": ("mlp.down_proj",),
}


class Block:
    def __init__(self, config: ModelConfig, index: int, weights: dict[str, mx.array], plan: CheckpointPlan):
        p = f"model.layers.{index}"
        self.index = index
        self.projections = {
            name: Projection([Linear.from_weights(weights, f"{p}.{key}", plan.quant[f"{p}.{key}"]) for key in keys],
                             fuse=FUSE_PROJECTIONS)
            for name, keys in PROJECTION_GROUPS.items()
        }
        self.input_norm = weights[f"{p}.input_layernorm.weight"]
        self.post_attention_norm = weights[f"{p}.post_attention_layernorm.weight"]
        self.q_norm = weights[f"{p}.self_attn.q_norm.weight"]
        self.k_norm = weights[f"{p}.self_attn.k_norm.weight"]
        self.n_heads, self.n_kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim, self.eps, self.rope_theta = config.head_dim, config.rms_norm_eps, config.rope_theta
        self.scale = config.head_dim**-0.5

    def attention(self, x: mx.array, cache: KVCache | FixedCapacityView, use_lora: bool) -> mx.array:
        B, L, _ = x.shape
        q, k, v = self.projections["qkv"](x, use_lora)
        # (B, L, heads * head_dim) -> (B, heads, L, head_dim)
        q = mx.fast.rms_norm(q.reshape(B, L, self.n_heads, -1), self.q_norm, self.eps).transpose(0, 2, 1, 3)
        k = mx.fast.rms_norm(k.reshape(B, L, self.n_kv_heads, -1), self.k_norm, self.eps).transpose(0, 2, 1, 3)
        v = v.reshape(B, L, self.n_kv_heads, -1).transpose(0, 2, 1, 3)
        q = mx.fast.rope(q, self.head_dim, traditional=False, base=self.rope_theta, scale=1.0, offset=cache.offset)
        k = mx.fast.rope(k, self.head_dim, traditional=False, base=self.rope_theta, scale=1.0, offset=cache.offset)
        k, v = cache.update(self.index, k, v)  # (B, kv_heads, offset + L, head_dim)
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.scale, mask=cache.attention_mask(L))
        return self.projections["o"](out.transpose(0, 2, 1, 3).reshape(B, L, -1), use_lora)[0]

    def __call__(self, x: mx.array, cache: KVCache | FixedCapacityView, use_lora: bool) -> mx.array:
        h = x + self.attention(mx.fast.rms_norm(x, self.input_norm, self.eps), cache, use_lora)
        gate, up = self.projections["gate_up"](mx.fast.rms_norm(h, self.post_attention_norm, self.eps), use_lora)
        return h + self.projections["down"](nn.silu(gate) * up, use_lora)[0]


class Qwen3Model:
    def __init__(self, config: ModelConfig, weights: dict[str, mx.array], plan: CheckpointPlan, dtype: mx.Dtype):
        self.config, self.dtype = config, dtype
        self.embed_tokens = Linear.from_weights(weights, "model.embed_tokens", plan.quant["model.embed_tokens"])
        self.layers = [Block(config, i, weights, plan) for i in range(config.num_hidden_layers)]
        self.norm = weights["model.norm.weight"]
        self.lm_head = (
            self.embed_tokens
            if config.tie_word_embeddings
            else Linear.from_weights(weights, "lm_head", plan.quant["lm_head"])
        )
        self.compile_decode = COMPILE_DECODE
        # Weights are constants of the traced graph; one compiled step per adapter switch position.
        self._decode_steps = {flag: mx.compile(partial(self._decode_step, use_lora=flag)) for flag in (False, True)}

    def new_cache(self, batch: int = 1) -> KVCache:
        c = self.config
        return KVCache(c.num_hidden_layers, batch, c.num_key_value_heads, c.head_dim, self.dtype)

    def decode(self, tokens: mx.array, cache: KVCache, use_lora: bool = False) -> mx.array:
        """One token per row, tokens (B, 1) -> logits (B, V); advances the cache by 1.

        Compiled (``compile_decode``), one call replays the whole traced step (no per-op Python work) and fuses its
        elementwise ops.
        """
        if not self.compile_decode:
            return self(tokens, cache, use_lora)
        cache.reserve(cache.offset + 1)
        offset = mx.array(cache.offset, dtype=mx.int32)
        logits, cache.keys, cache.values = self._decode_steps[use_lora](tokens, offset, cache.keys, cache.values)
        cache.advance(1)
        return logits

    def _decode_step(self, tokens: mx.array, offset: mx.array, keys: list[mx.array], values: list[mx.array],
                     use_lora: bool) -> tuple[mx.array, list[mx.array], list[mx.array]]:
        view = FixedCapacityView(offset, keys, values)
        return self(tokens, view, use_lora), view.keys, view.values

    def __call__(self, tokens: mx.array, cache: KVCache | FixedCapacityView, use_lora: bool = False,
                 last_only: bool = True) -> mx.array:
        """tokens (B, L) -> logits (B, V) for the last position, or (B, L, V) for all; advances the cache by L."""
        h = self.embed_tokens.embed(tokens)
        for layer in self.layers:
            h = layer(h, cache, use_lora)
        cache.advance(tokens.shape[1])
        if last_only:
            h = h[:, -1, :]
        return self.lm_head(mx.fast.rms_norm(h, self.norm, self.config.rms_norm_eps)).astype(mx.float32)
