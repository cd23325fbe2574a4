"""A fixed-shape decode step for LLaMA models, so a GPU can replay it as a CUDA graph.

transformers' eager forward launches a few hundred small kernels per token from
Python; on a GPU that launch cost, not the 0.8 GB of weights, sets the pace.
Capturing the step once and replaying it removes the launches, but a graph
needs every tensor at a fixed address and shape. So the keys and values live in
a preallocated cache with one slot per position of the batch's padded layout,
each step writes its column into a slot chosen by a device tensor, and attention
always spans the whole cache, with a boolean mask saying which slots are real.

The layers' own modules (projections, norms, MLP with the model's activation)
do the arithmetic; only attention with the cache and the rotary embedding are
written here, following the LLaMA definition (rotate-half rotary, base
`rope_theta`, scaled dot-product attention over 1/sqrt(head_dim)). Models that
use anything else (scaled rotary, another architecture) are refused with
`StaticDecodeUnsupported`, and the backend keeps transformers' own forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import DtgError


class StaticDecodeUnsupported(DtgError):
    """The model is not a plain LLaMA this module can run (the backend then decodes
    another way; it reaches no client)."""


@dataclass(frozen=True)
class LlamaShape:
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    rope_theta: float


def llama_shape(config: Any) -> LlamaShape:
    if getattr(config, "model_type", None) != "llama":
        raise StaticDecodeUnsupported(f"model type {getattr(config, 'model_type', None)!r}")
    rope = getattr(config, "rope_parameters", None) or {}
    scaling = getattr(config, "rope_scaling", None) or {}
    rope_type = rope.get("rope_type") or scaling.get("rope_type") or scaling.get("type")
    if rope_type not in (None, "default"):
        raise StaticDecodeUnsupported(f"rotary scaling {rope_type!r}")
    theta = getattr(config, "rope_theta", None) or rope.get("rope_theta") or 10000.0
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise StaticDecodeUnsupported("projection biases")
    return LlamaShape(
        layers=config.num_hidden_layers,
        heads=heads,
        kv_heads=getattr(config, "num_key_value_heads", None) or heads,
        head_dim=head_dim,
        rope_theta=float(theta),
    )


class StaticLlama:
    """Runs a transformers LlamaForCausalLM's layers against a preallocated KV cache."""

    def __init__(self, torch: Any, model: Any) -> None:
        self.torch = torch
        self.shape = llama_shape(model.config)
        self.embed = model.model.embed_tokens
        self.blocks = list(model.model.layers)
        self.norm = model.model.norm
        self.lm_head = model.lm_head
        weight = self.lm_head.weight
        self.device, self.dtype = weight.device, weight.dtype
        self.inv_freq = self._inverse_frequencies(model)

    def _inverse_frequencies(self, model: Any) -> Any:
        # The model's own table when it has one: transformers 4.30 ignores a
        # config's rope_theta, and later versions may round it their own way.
        torch = self.torch
        owners = (getattr(model.model, "rotary_emb", None), self.blocks[0].self_attn)
        for owner in owners:
            table = getattr(getattr(owner, "rotary_emb", owner), "inv_freq", None)
            if table is not None and table.numel() == self.shape.head_dim // 2:
                return table.detach().float().to(self.device)
        dim = self.shape.head_dim
        exponents = torch.arange(0, dim, 2, dtype=torch.int64, device=self.device).float() / dim
        return 1.0 / (self.shape.rope_theta**exponents)

    def new_cache(self, batch: int, length: int) -> StaticCache:
        shape = self.shape
        size = (shape.layers, batch, shape.kv_heads, length, shape.head_dim)
        torch = self.torch
        return StaticCache(
            keys=torch.zeros(size, dtype=self.dtype, device=self.device),
            values=torch.zeros(size, dtype=self.dtype, device=self.device),
        )

    def forward(self, cache: StaticCache, ids: Any, positions: Any, slots: Any, attend: Any) -> Any:
        """Next-token logits (fp32) of the last column.

        ids, positions: (batch, T) tokens and their rotary positions; slots: (T,)
        cache slots the columns are written to; attend: (batch, 1, T, cache length)
        booleans, True where a query may look at a slot.
        """
        hidden = self.embed(ids)
        cos, sin = self._rotary(positions)
        for index, block in enumerate(self.blocks):
            hidden = hidden + self._attention(
                block, cache, index, block.input_layernorm(hidden), cos, sin, slots, attend
            )
            hidden = hidden + block.mlp(block.post_attention_layernorm(hidden))
        last = self.norm(hidden[:, -1:, :])
        return self.lm_head(last)[:, -1, :].float()

    def _rotary(self, positions: Any) -> tuple[Any, Any]:
        angles = positions.float()[..., None] * self.inv_freq
        both = self.torch.cat((angles, angles), dim=-1)[:, None, :, :]
        return both.cos().to(self.dtype), both.sin().to(self.dtype)

    def _attention(
        self,
        block: Any,
        cache: StaticCache,
        index: int,
        hidden: Any,
        cos: Any,
        sin: Any,
        slots: Any,
        attend: Any,
    ) -> Any:
        torch, shape = self.torch, self.shape
        attn = block.self_attn
        batch, width, _ = hidden.shape

        def heads(projection: Any, count: int) -> Any:
            return projection(hidden).view(batch, width, count, shape.head_dim).transpose(1, 2)

        query = _rotate(torch, heads(attn.q_proj, shape.heads), cos, sin)
        key = _rotate(torch, heads(attn.k_proj, shape.kv_heads), cos, sin)
        value = heads(attn.v_proj, shape.kv_heads)
        keys, values = cache.keys[index], cache.values[index]
        keys.index_copy_(2, slots, key)
        values.index_copy_(2, slots, value)
        if shape.kv_heads != shape.heads:
            repeat = shape.heads // shape.kv_heads
            keys = keys.repeat_interleave(repeat, dim=1)
            values = values.repeat_interleave(repeat, dim=1)
        mixed = torch.nn.functional.scaled_dot_product_attention(
            query, keys, values, attn_mask=attend
        )
        mixed = mixed.transpose(1, 2).reshape(batch, width, shape.heads * shape.head_dim)
        return attn.o_proj(mixed)


def _rotate(torch: Any, states: Any, cos: Any, sin: Any) -> Any:
    half = states.shape[-1] // 2
    turned = torch.cat((-states[..., half:], states[..., :half]), dim=-1)
    return states * cos + turned * sin


@dataclass
class StaticCache:
    keys: Any  # (layers, batch, kv heads, length, head dim)
    values: Any

    @property
    def length(self) -> int:
        return int(self.keys.shape[3])

    @property
    def batch(self) -> int:
        return int(self.keys.shape[1])

    def first_rows(self, batch: int) -> StaticCache:
        """A view of the first `batch` rows: each layer's slice is still contiguous."""
        return StaticCache(self.keys[:, :batch], self.values[:, :batch])


def prefill_mask(torch: Any, real: Any, length: int) -> Any:
    """(batch, 1, width, length) attention for a left-padded prompt of `width` columns.

    Each real column sees the real columns up to itself. A padding column sees
    only itself: a query with nothing to attend to would make NaN, and the next
    layer's keys at that slot would carry it into every row's matmul.
    """
    width = real.shape[1]
    causal = torch.ones((width, width), dtype=torch.bool, device=real.device).tril()
    seen = causal[None, :, :] & real[:, None, :].bool()
    seen = seen | torch.eye(width, dtype=torch.bool, device=real.device)[None]
    mask = torch.zeros((real.shape[0], width, length), dtype=torch.bool, device=real.device)
    mask[:, :, :width] = seen
    return mask[:, None, :, :]
