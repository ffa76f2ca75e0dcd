"""STM tip-state classifiers on windows of scan lines (Gordon, Junqueira, Moriarty 2020, MLST 1 015001).

Every model maps x [B, L, W] (L consecutive lines of W points, each normalised to mean 0 / std 1)
to logits [B, K]. `cfg.model` picks one:
  vit        patches along each line, one bidirectional encoder over all patches (scanline_vit.py)
  sequential a 1-D CNN turns each line into one token; a causal transformer reads them in scan order
  cnn_lstm   the same CNN per line; an LSTM reads the lines in scan order (Gordon et al.)
"""

import torch
from torch import nn

from blueberry.models.scanline_vit import ScanlineViT, init_vit_, transformer_encoder


class LineCNN(nn.Module):
    """Each line on its own through conv blocks, then a mean over positions: [B, L, W] -> [B, L, C].

    A line is short (128 points), so three blocks that halve the length see most of it.
    """

    muon_exclude = True  # Muon reads [..., out, in]; a conv weight is [out, in, kernel]

    def __init__(self, channels: int, n_blocks: int = 3, kernel_size: int = 5):
        super().__init__()
        blocks, c_in = [], 1
        for _ in range(n_blocks):
            blocks += [nn.Conv1d(c_in, channels, kernel_size, padding=kernel_size // 2),
                       # GroupNorm(1, C) normalises one line at a time. BatchNorm would mix the
                       # lines of a window in training and leak later lines into earlier tokens.
                       nn.GroupNorm(1, channels), nn.GELU(), nn.MaxPool1d(2, ceil_mode=True)]
            c_in = channels
        self.net = nn.Sequential(*blocks)
        self.out_features = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, W = x.shape
        return self.net(x.reshape(B * L, 1, W)).mean(dim=-1).view(B, L, -1)


class LineTransformer(nn.Module):
    """One CNN token per line, a line-position embedding, a causal pre-norm encoder over lines.

    Causal so that the token of line t has read lines <= t, as a tip monitor reading the scan as
    it arrives would; the class comes from the last line's token, which has read the whole window.
    """

    _no_split_modules = ("TransformerEncoderLayer",)   # one FSDP unit per encoder layer

    def __init__(self, cfg, n_classes: int):
        super().__init__()
        self.cnn = LineCNN(cfg.cnn_channels)
        self.proj = nn.Linear(self.cnn.out_features, cfg.d_model)
        self.line_pos = nn.Embedding(cfg.lines_per_sample, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.encoder = transformer_encoder(cfg)
        self.head = nn.Linear(cfg.d_model, n_classes)
        self.head.muon_exclude = True  # Muon's recipe keeps the output layer on AdamW
        for m in (self.proj, self.line_pos, self.encoder, self.head):  # the CNN keeps torch's conv init
            init_vit_(m)

    def line_states(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, L, W] -> [B, L, d_model]; state t depends on lines <= t only."""
        L = x.shape[1]
        if L > self.line_pos.num_embeddings:
            raise ValueError(f"window of {L} lines: this model was built for lines_per_sample="
                             f"{self.line_pos.num_embeddings}")
        h = self.drop(self.proj(self.cnn(x)) + self.line_pos.weight[:L])
        mask = torch.ones(L, L, dtype=torch.bool, device=x.device).triu(1)  # True = may not attend
        return self.encoder(h, mask=mask, is_causal=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.line_states(x)[:, -1])


class CNNLSTM(nn.Module):
    """CNN features per line, an LSTM over the lines in scan order, the class from its last state."""

    def __init__(self, cfg, n_classes: int):
        super().__init__()
        self.cnn = LineCNN(cfg.cnn_channels)
        # torch applies LSTM dropout between layers only, and warns when there is no "between".
        self.lstm = nn.LSTM(self.cnn.out_features, cfg.lstm_hidden, cfg.n_layers, batch_first=True,
                            dropout=cfg.dropout if cfg.n_layers > 1 else 0.0)
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.lstm_hidden, n_classes)
        self.head.muon_exclude = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, (h_n, _) = self.lstm(self.cnn(x))
        return self.head(self.drop(h_n[-1]))  # top layer, after the last line


MODELS = {"vit": ScanlineViT, "sequential": LineTransformer, "cnn_lstm": CNNLSTM}


def build_scanline_model(cfg, n_classes: int, line_length: int) -> nn.Module:
    """The classifier `cfg.model` names, for lines of `line_length` points and windows of up to
    `cfg.lines_per_sample` lines (the ViT and the line transformer size position tables by it)."""
    if cfg.model not in MODELS:
        raise ValueError(f"model={cfg.model!r}: must be one of {', '.join(MODELS)}")
    if cfg.model == "vit":
        return ScanlineViT(cfg, n_classes, line_length)
    return MODELS[cfg.model](cfg, n_classes)
