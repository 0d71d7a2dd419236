"""The published weight-sparse GPT (openai/circuit_sparsity, Gao et al. 2025), written afresh and tiny.

What the tests need of that architecture, nothing more: token and position embeddings
(``wte``, ``wpe``), pre-norm blocks (``nn.RMSNorm``, causal attention, a GELU MLP), a final
RMSNorm, an unembedding ``lm_head`` tied to the token embedding by default
(``tied=True``, the published ``tied_unembed``: ``lm_head.weight is wte.weight``), and
AbsTopK activation sparsity (``sparsekern.AbsTopK``) at the published sites. Every linear
layer is a plain ``nn.Linear``, so a test exercises ``sparsekern.sparsify`` on it. The default
size (vocab 64, d_model 32, 2 layers, context 16) makes a training step take milliseconds.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import nn

import sparsekern

#: Where the published code can apply AbsTopK (its ``afrac_loctypes``, with q, k, v and the
#: MLP neurons): the attention's input, q, k, v (each on its head-concatenated vector) and
#: output, the MLP's input, neurons and output.
SITES = ("attn_in", "attn_q", "attn_k", "attn_v", "attn_out", "mlp_in", "mlp_neuron", "mlp_out")


def abs_topk_site(width: int, afrac: float | None) -> nn.Module:
    """AbsTopK keeping ``int(afrac * width)`` entries per token, as the published code counts;
    the identity when ``afrac`` is None."""
    if afrac is None:
        return nn.Identity()
    return sparsekern.AbsTopK(int(afrac * width))


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, n_head: int, afrac, bias: bool):
        super().__init__()
        if d_model % n_head:
            raise ValueError(f"d_model ({d_model}) must be a multiple of n_head ({n_head})")
        self.n_head = n_head
        self.c_attn = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.c_proj = nn.Linear(d_model, d_model, bias=bias)
        self.act_in, self.act_q, self.act_k, self.act_v, self.act_out = (
            abs_topk_site(d_model, afrac) for _ in range(5))

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.c_attn(self.act_in(x)).split(c, dim=-1)
        q, k, v = (z.reshape(b, t, self.n_head, c // self.n_head).transpose(1, 2)
                   for z in (self.act_q(q), self.act_k(k), self.act_v(v)))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.act_out(self.c_proj(y.transpose(1, 2).reshape(b, t, c)))


class MLP(nn.Module):
    def __init__(self, d_model: int, d_mlp: int, afrac, bias: bool):
        super().__init__()
        self.act_in = abs_topk_site(d_model, afrac)
        self.c_fc = nn.Linear(d_model, d_mlp, bias=bias)
        self.act_neuron = abs_topk_site(d_mlp, afrac)
        self.c_proj = nn.Linear(d_mlp, d_model, bias=bias)
        self.act_out = abs_topk_site(d_model, afrac)

    def forward(self, x):
        return self.act_out(self.c_proj(self.act_neuron(F.gelu(self.c_fc(self.act_in(x))))))


class Block(nn.Module):
    def __init__(self, d_model: int, n_head: int, d_mlp: int, afrac, bias: bool):
        super().__init__()
        self.ln_1 = nn.RMSNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_head, afrac, bias)
        self.ln_2 = nn.RMSNorm(d_model)
        self.mlp = MLP(d_model, d_mlp, afrac, bias)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """The published GPT at test size; ``forward(idx)`` returns the logits ``[B, T, vocab]``."""

    def __init__(self, *, vocab_size: int = 64, d_model: int = 32, n_layer: int = 2, n_head: int = 2,
                 d_mlp: int = 64, ctx: int = 16, afrac: float | None = 0.25, bias: bool = True,
                 tied: bool = True):
        super().__init__()
        self.ctx = ctx
        self.wte = nn.Embedding(vocab_size, d_model)
        self.wpe = nn.Embedding(ctx, d_model)
        self.h = nn.ModuleList(Block(d_model, n_head, d_mlp, afrac, bias) for _ in range(n_layer))
        self.ln_f = nn.RMSNorm(d_model)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        # The published initialisation: N(0, 0.02), the residual projections scaled down by depth.
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.dim() == 2:
                std = 0.02 / math.sqrt(2 * n_layer) if name.endswith("c_proj.weight") else 0.02
                nn.init.normal_(p, std=std)
        if tied:
            self.lm_head.weight = self.wte.weight

    def forward(self, idx):
        t = idx.shape[1]
        if t > self.ctx:
            raise ValueError(f"sequence length {t} exceeds the context {self.ctx}")
        x = self.wte(idx) + self.wpe.weight[:t]
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))
