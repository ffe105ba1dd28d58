"""torch.nn built-in blocks whose weight layers cannot be part of a pair, and why.

torch.fx keeps every ``torch.nn`` built-in as one opaque call, so the layers inside such a block
are never seen by discovery. For most blocks that is all there is to say; for the ones listed
here, the block also runs its layers in a way that hooks cannot see, so naming the pair by hand
would not help either: the message says what to do instead.
"""

from __future__ import annotations

from torch import nn

__all__ = ["opaque_block_reason"]

_FAST_PATH = (
    "{label} runs its layers through a fused fast path (torch._transformer_encoder_layer_fwd / "
    "F.multi_head_attention_forward) in eval mode without gradients, the mode of the amplitude "
    "search, which calls no Linear module: hooks cannot see or change its units there, and "
    "torch.fx cannot trace the branch that picks the path. To grow its feed-forward layers, write "
    "the block with plain modules, e.g. x = x + attn(ln1(x)); x = x + fc2(act(fc1(ln2(x)))) "
    "(the MLP of timm's ViT blocks is written that way)"
)

#: Block type → why its layers cannot grow (``{label}``: the block's type name).
_REASONS: dict[type[nn.Module], str] = {
    nn.TransformerEncoderLayer: _FAST_PATH,
    nn.TransformerDecoderLayer: _FAST_PATH,
    nn.TransformerEncoder: _FAST_PATH,
    nn.TransformerDecoder: _FAST_PATH,
    nn.Transformer: _FAST_PATH,
    nn.MultiheadAttention: (
        "{label} calls its projections as functions (F.multi_head_attention_forward), never as "
        "modules, so its out_proj is not a layer that runs"
    ),
}


def opaque_block_reason(block: nn.Module) -> str | None:
    """Why the weight layers inside ``block`` cannot be part of a pair (``None``: not known to
    be opaque beyond torch.fx's leaf rule)."""
    for block_type, reason in _REASONS.items():
        if isinstance(block, block_type):
            return reason.format(label=f"nn.{block_type.__name__}")
    return None
