"""A faster CPU forward for open_clip's ViT image tower: oneDNN GEMMs and fused attention.

Stock PyTorch runs `nn.Linear` on CPU through MKL, which on AMD CPUs, and for the 50-800 row
matrices of a ViT at small batch, leaves part of the cores' FMA throughput unused; attention goes
through `nn.MultiheadAttention`'s separate bmm and softmax. `vision_forward` runs the same
arithmetic with

- the linear layers through oneDNN (`torch.ops.mkldnn._linear_pointwise`, the op PyTorch's own
  compiler emits for CPU linears), with exact GELU fused into the first MLP layer where the model
  uses it, and
- attention through `F.scaled_dot_product_attention` (one fused kernel),

while reusing the model's own embedding, layer norms, layer scales, activations and pooling, so its
output equals `visual(pixels)` to fp32 rounding (tests compare it with open_clip). The weights are
read from the module at every call: nothing is copied or packed, so training or `load_state_dict`
never leaves a stale copy behind. It applies to fp32 on x86 CPUs with oneDNN and open_clip's
standard block layout; `supports_fast_forward` says no for anything else and the stock forward runs.
"""

from __future__ import annotations

import platform

import torch
import torch.nn.functional as F
from torch import nn


def _ops_available() -> bool:
    return (
        platform.machine().lower() in {"x86_64", "amd64"}
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    )


def _is_standard_block(block: nn.Module) -> bool:
    from open_clip.transformer import ResidualAttentionBlock

    if type(block) is not ResidualAttentionBlock or hasattr(block, "ln_1_kv"):
        return False
    attn, mlp = block.attn, block.mlp
    return (
        isinstance(attn, nn.MultiheadAttention)
        and attn.batch_first
        and attn._qkv_same_embed_dim
        and attn.in_proj_bias is not None
        and attn.bias_k is None
        and not attn.add_zero_attn
        and isinstance(mlp, nn.Sequential)
        and list(mlp._modules) == ["c_fc", "gelu", "c_proj"]
        and type(mlp.c_fc) is nn.Linear
        and type(mlp.c_proj) is nn.Linear
    )


def supports_fast_forward(visual: nn.Module) -> bool:
    """Whether `vision_forward` can run `visual` (an fp32 open_clip ViT on an x86 CPU)."""
    from open_clip.transformer import VisionTransformer

    if not _ops_available() or type(visual) is not VisionTransformer or visual.output_tokens:
        return False
    if not visual.transformer.batch_first or not all(map(_is_standard_block, visual.transformer.resblocks)):
        return False
    return all(p.dtype == torch.float32 and p.device.type == "cpu" for p in visual.parameters())


def _linear(x: torch.Tensor, layer_weight: torch.Tensor, bias: torch.Tensor | None, gelu: bool = False) -> torch.Tensor:
    if gelu:
        return torch.ops.mkldnn._linear_pointwise(x, layer_weight, bias, "gelu", [], "none")
    return torch.ops.mkldnn._linear_pointwise(x, layer_weight, bias, "none", [], "")


def _block_forward(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    batch, length, width = x.shape
    attn, mlp = block.attn, block.mlp
    heads = attn.num_heads
    qkv = _linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)
    q, k, v = qkv.view(batch, length, 3, heads, width // heads).permute(2, 0, 3, 1, 4).unbind(0)
    attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, length, width)
    x = x + block.ls_1(_linear(attended, attn.out_proj.weight, attn.out_proj.bias))
    fuse_gelu = type(mlp.gelu) is nn.GELU and mlp.gelu.approximate == "none"
    hidden = _linear(block.ln_2(x), mlp.c_fc.weight, mlp.c_fc.bias, gelu=fuse_gelu)
    if not fuse_gelu:
        hidden = mlp.gelu(hidden)
    return x + block.ls_2(_linear(hidden, mlp.c_proj.weight, mlp.c_proj.bias))


def vision_forward(visual: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """`visual(pixels)` computed the fast way; call only where `supports_fast_forward(visual)`."""
    x = visual._embeds(pixels).contiguous()
    for block in visual.transformer.resblocks:
        x = _block_forward(block, x)
    pooled, _ = visual._pool(x)
    if visual.proj is not None:
        pooled = pooled @ visual.proj
    return pooled
