"""The decoder-only transformer: embedding, blocks from the placement, final norm, LM head."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from models.config import ModelConfig
from models.placements import get_placement


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.placement = get_placement(cfg.placement, **cfg.placement_args)
        p = self.placement
        if cfg.norm_eps is None:  # the placement's default (OLMo 2's is 1e-6)
            cfg = cfg.replace(norm_eps=p.norm_eps)
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.padded_vocab, cfg.d_model)
        self.embed_scale = p.embed_scale(cfg)
        use_embed_norm = p.embed_norm if cfg.embed_norm is None else cfg.embed_norm
        self.embed_norm = p.make_embed_norm(cfg) if use_embed_norm else nn.Identity()
        self.blocks = nn.ModuleList(p.make_block(cfg, layer) for layer in range(1, cfg.n_layers + 1))
        self.final_norm = p.make_norm(cfg, cfg.d_model) if p.final_norm else nn.Identity()
        self.lm_head = nn.Linear(cfg.d_model, cfg.padded_vocab, bias=False)
        p.init_weights(self, cfg)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        # recompute each block's activations in the backward (train.activation_checkpointing)
        self.checkpoint_blocks = False

    def forward(self, tokens: torch.Tensor, return_hidden: bool = False):
        """tokens (B, T) int64 -> logits (B, T, vocab_size) [, hidden: n_layers + 1 x (B, T, d)]."""
        out = self.features(tokens, return_hidden)
        x, hidden = out if return_hidden else (out, None)
        logits = self.lm_head(x)  # (B, T, padded_vocab)
        if self.cfg.padded_vocab != self.cfg.vocab_size:
            logits = logits[..., : self.cfg.vocab_size]  # padding rows are never real tokens
        return (logits, hidden) if return_hidden else logits

    def features(self, tokens: torch.Tensor, return_hidden: bool = False):
        """tokens (B, T) -> the final normalized hidden state (B, T, d) that the LM head reads
        [, hidden as in forward]; the training loss takes it to models.loss.linear_cross_entropy."""
        x = self.embed(tokens)  # (B, T, d)
        if self.embed_scale != 1.0:
            x = x * self.embed_scale
        x = self.embed_norm(x)
        hidden = [x] if return_hidden else None
        recompute = self.checkpoint_blocks and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            x = checkpoint(block, x, use_reentrant=False) if recompute else block(x)
            if hidden is not None:
                hidden.append(x)
        x = self.final_norm(x)
        return (x, hidden) if return_hidden else x

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameters; non_embedding excludes the token embedding and the LM head."""
        seen, total = set(), 0
        for name, p in self.named_parameters(remove_duplicate=False):
            if id(p) in seen or (non_embedding and name.split(".")[0] in ("embed", "lm_head")):
                continue
            seen.add(id(p))
            total += p.numel()
        return total


def build_model(cfg: ModelConfig) -> Transformer:
    return Transformer(cfg)
