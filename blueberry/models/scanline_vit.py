"""Scan-line ViT: patches along each line of a window, a [CLS] token, a bidirectional encoder.

Also home of the pieces the line-sequence transformer in scanline.py reuses: the encoder stack
and the ViT initialisation.
"""

import torch
from torch import nn


def transformer_encoder(cfg) -> nn.TransformerEncoder:
    """Pre-norm encoder (torch's maintained layer) of cfg.n_layers, with a final LayerNorm.

    Pre-norm leaves the residual stream unnormalised, hence the norm after the last layer.
    """
    layer = nn.TransformerEncoderLayer(cfg.d_model, cfg.n_heads, cfg.d_ff, cfg.dropout, activation="gelu",
                                       batch_first=True, norm_first=True)
    # No dropout on the attention weights (timm's ViT default, attn_drop=0): with it SDPA falls back
    # to its unfused math kernel and draws a [B, heads, T, T] mask (15 s vs 4 s per 20-line ViT step
    # on CPU). Dropout stays on the residual branches and the feed-forward.
    layer.self_attn.dropout = 0.0
    # Nested tensors only serve padding masks, and torch refuses them for norm_first layers anyway
    # (with a warning); asking for none keeps the log quiet.
    return nn.TransformerEncoder(layer, cfg.n_layers, norm=nn.LayerNorm(cfg.d_model), enable_nested_tensor=False)


def trunc_normal_(t: torch.Tensor) -> torch.Tensor:
    """N(0, 0.02) cut at 2 sigma, the ViT/BERT init (timm's trunc_normal_(std=.02) cuts at +-2, i.e. never)."""
    return nn.init.trunc_normal_(t, std=0.02, a=-0.04, b=0.04)


def init_vit_(module: nn.Module) -> None:
    """timm's ViT init for linears, attention projections, embeddings and norms under `module`.

    Required, not cosmetic, for the encoder: nn.TransformerEncoder deep-copies one layer, so
    without it every layer would start with the same weights.
    """
    for m in module.modules():
        if isinstance(m, nn.Linear):  # includes attention's out_proj
            trunc_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.MultiheadAttention):
            trunc_normal_(m.in_proj_weight)
            nn.init.zeros_(m.in_proj_bias)
        elif isinstance(m, nn.Embedding):
            trunc_normal_(m.weight)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class ScanlineViT(nn.Module):
    """ViT (Dosovitskiy et al. 2021, arXiv 2010.11929) on 1-D patches of scan lines.

    Token (l, n) is patch n of line l; it gets a patch-position embedding and, in a multi-line
    window, a line-index embedding, so attention sees where a patch sits along and across lines.
    """

    _no_split_modules = ("TransformerEncoderLayer",)   # one FSDP unit per encoder layer

    def __init__(self, cfg, n_classes: int, line_length: int):
        super().__init__()
        if line_length % cfg.patch_size:
            raise ValueError(f"patch_size={cfg.patch_size}: must divide the line length ({line_length})")
        self.patch_size, self.n_patches = cfg.patch_size, line_length // cfg.patch_size
        self.patch_embed = nn.Linear(cfg.patch_size, cfg.d_model)
        # nn.Embedding tables rather than bare parameters: the optimizer keeps embeddings off Muon.
        self.patch_pos = nn.Embedding(self.n_patches, cfg.d_model)
        # A single-line model has no line index to learn; no table also means no unused parameter.
        self.line_pos = nn.Embedding(cfg.lines_per_sample, cfg.d_model) if cfg.lines_per_sample > 1 else None
        self.cls = nn.Parameter(torch.zeros(cfg.d_model))  # a vector: no weight decay, no Muon
        self.drop = nn.Dropout(cfg.dropout)
        self.encoder = transformer_encoder(cfg)
        self.head = nn.Linear(cfg.d_model, n_classes)
        # Muon's recipe keeps the input and output layers on AdamW.
        self.patch_embed.muon_exclude = self.head.muon_exclude = True
        init_vit_(self)
        trunc_normal_(self.cls)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, L, W] normalised scan lines -> logits [B, K]."""
        B, L, W = x.shape
        if W != self.n_patches * self.patch_size:
            raise ValueError(f"lines of {W} points: this model reads {self.n_patches * self.patch_size}")
        tokens = self.patch_embed(x.unflatten(-1, (self.n_patches, self.patch_size)))  # [B, L, N, D]
        tokens = tokens + self.patch_pos.weight
        if L > 1:
            if self.line_pos is None or L > self.line_pos.num_embeddings:
                raise ValueError(f"window of {L} lines: this model was built for lines_per_sample="
                                 f"{1 if self.line_pos is None else self.line_pos.num_embeddings}")
            tokens = tokens + self.line_pos.weight[:L, None]
        tokens = torch.cat([self.cls.expand(B, 1, -1), tokens.flatten(1, 2)], dim=1)  # [B, 1 + L*N, D]
        h = self.encoder(self.drop(tokens))
        return self.head(h[:, 0])
