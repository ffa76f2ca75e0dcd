"""The language-model task: next-token prediction on packed, non-overlapping windows of a corpus."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from blueberry.config import LMConfig
from blueberry.data.checks import data_warnings
from blueberry.data.fingerprint import text_digest
from blueberry.data.packing import ShardedBatchSampler, Windows, eval_batches, train_batch_stream
from blueberry.data.token_cache import build_text_data
from blueberry.errors import UserError
from blueberry.models.lm import Decoder
from blueberry.tasks import media
from blueberry.tasks.base import TaskData
from blueberry.train.tracking import notice


class LMTask:
    name = "lm"
    best_metric = LMConfig.default_best_metric
    splits = ("val",)

    def build_data(self, cfg: LMConfig, accelerator) -> TaskData:
        # leakage is measured on the val windows evaluate() reads: the first eval_batches global batches
        text = build_text_data(cfg, main_process_first=accelerator.main_process_first,
                               eval_windows=cfg.eval_batches * cfg.batch_size * accelerator.num_processes)
        train, val = Windows(text.train, cfg.seq_len), Windows(text.val, cfg.seq_len)
        if len(val) == 0:
            raise UserError(f"val_fraction={cfg.val_fraction}: the val split has fewer than seq_len+1 "
                            f"({cfg.seq_len + 1}) tokens; raise val_fraction or lower seq_len")
        world, rank = accelerator.num_processes, accelerator.process_index
        # Fails early (UserError) when the train split cannot fill one global micro-batch.
        order = ShardedBatchSampler(len(train), cfg.batch_size, rank, world, cfg.seed, seq_len=cfg.seq_len)
        leak = text.stats.get("leak_fraction", 0.0)
        if leak > cfg.leak_warn and accelerator.is_main_process:
            notice(f"WARNING: {leak:.1%} of the evaluated val windows share a {cfg.leak_ngram}-token span with "
                   f"train (leak_warn={cfg.leak_warn}); val loss will flatter the model")
        if accelerator.is_main_process:
            for message in data_warnings(cfg, text.stats):
                notice(f"WARNING: {message}")
        stats = {**text.stats, "train_windows": len(train), "val_windows": len(val), "vocab_size": text.vocab_size}
        return TaskData(train_batches=train_batch_stream(train, cfg.batch_size, cfg.seed, accelerator),
                        items_per_batch=cfg.batch_size * cfg.seq_len,
                        unit="tokens", epochs_at=order.epochs_at, stats=stats,
                        payload={"val": val, "vocab_size": text.vocab_size},
                        fingerprint={**text.fingerprint,
                                     "tokenizer": text_digest(text.tokenizer.tokenizer.to_str())})

    def build_model(self, cfg: LMConfig, data: TaskData) -> Decoder:
        return Decoder(cfg, data.payload["vocab_size"])

    def describe_model(self, model: Decoder) -> dict[str, int]:
        return model.param_counts()

    def train_loss(self, model, batch, cfg: LMConfig):
        x, y = batch
        logits, aux = model(x)
        ce = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
        aux_loss = cfg.lb_weight * aux["lb_loss"] + cfg.z_loss_weight * aux["z_loss"]
        parts = {"loss": ce, "aux_loss": aux_loss}
        if cfg.n_experts:
            parts.update(lb_loss=aux["lb_loss"], z_loss=aux["z_loss"])
        return ce + aux_loss, parts

    @torch.no_grad()
    def evaluate(self, model, data: TaskData, cfg: LMConfig, accelerator, split: str = "val",
                 in_training: bool = False):
        """val/loss, accuracy and perplexity over a fixed set of val windows, summed over ranks."""
        val = data.payload[split]
        core = accelerator.unwrap_model(model)
        was_training = model.training
        model.eval()
        core.take_expert_load()   # drop training counts: the load reported is the val load
        totals = torch.zeros(3, dtype=torch.float64, device=accelerator.device)  # loss sum, correct, tokens
        for indices in eval_batches(len(val), cfg.eval_batches, cfg.batch_size,
                                    accelerator.process_index, accelerator.num_processes):
            # A rank whose share ran out still runs a forward (of window 0, not counted): under
            # FSDP2 every forward all-gathers, so all ranks must make the same number of them.
            x, y = (t.to(accelerator.device) for t in val.batch(indices or [0]))
            logits, _ = model(x)
            if not indices:
                continue
            loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="sum")
            correct = (logits.argmax(-1) == y).sum()
            totals += torch.stack([loss.double(), correct.double(), torch.tensor(y.numel(), dtype=torch.float64,
                                                                                 device=totals.device)])
        load = core.take_expert_load()
        if accelerator.num_processes > 1:
            totals = accelerator.reduce(totals, "sum")
            load = accelerator.reduce(load, "sum") if load.numel() else load
        model.train(was_training)
        loss_sum, correct, tokens = totals.tolist()
        mean = loss_sum / tokens
        metrics = {f"{split}/loss": mean, f"{split}/accuracy": correct / tokens,
                   f"{split}/perplexity": math.exp(min(mean, 50.0))}
        figures = {}
        if load.numel():
            metrics.update(expert_load_metrics(load))
            if accelerator.is_main_process:
                figures["moe/expert_load"] = expert_load_figure(load)
                figures["moe/expert_load_table"] = expert_load_table(load)
        return metrics, figures

    def after_optimizer_step(self, model, cfg: LMConfig, accelerator) -> None:
        """Aux-loss-free balancing: every rank applies the same update from the all-reduced load."""
        if not cfg.n_experts:
            return
        core = accelerator.unwrap_model(model)
        load = core.take_expert_load()
        if cfg.bias_update_rate > 0:
            if accelerator.num_processes > 1:
                load = accelerator.reduce(load, "sum")
            core.update_router_bias(load)


def expert_load_metrics(load: torch.Tensor) -> dict[str, float]:
    """Token share per expert per layer, and balance figures: 1.0 is perfectly even.

    moe/min_share is the smallest expert's share times E over all layers (under 0.25 an expert is
    collapsing: it gets less than a quarter of its fair share).
    """
    share = (load / load.sum(-1, keepdim=True).clamp(min=1)).double()
    n_experts = share.shape[-1]
    metrics = {}
    for layer, row in enumerate(share.tolist()):
        for expert, value in enumerate(row):
            metrics[f"moe/layer{layer}/expert{expert}"] = value
    metrics["moe/min_share"] = float(share.min() * n_experts)
    metrics["moe/max_share"] = float(share.max() * n_experts)
    return metrics


def expert_load_table(load: torch.Tensor) -> media.Table:
    """The expert-load matrix for W&B: one row per layer, the token share of each expert."""
    share = (load / load.sum(-1, keepdim=True).clamp(min=1)).double()
    return media.Table(["layer"] + [f"expert{e}" for e in range(share.shape[-1])],
                       [[layer, *row] for layer, row in enumerate(share.tolist())])


def expert_load_figure(load: torch.Tensor):
    """Heatmap of token share, layers x experts, centred on the fair share 1/E."""
    from matplotlib.figure import Figure   # not pyplot: no backend or global state, ~1 s less at step 0

    share = (load / load.sum(-1, keepdim=True).clamp(min=1)).cpu().numpy()
    n_layers, n_experts = share.shape
    fig = Figure(figsize=(1 + 0.5 * n_experts, 1 + 0.4 * n_layers))
    ax = fig.subplots()
    image = ax.imshow(share, cmap="RdBu_r", vmin=0, vmax=2 / n_experts, aspect="auto")
    ax.set_xlabel("expert")
    ax.set_ylabel("layer")
    ax.set_title(f"token share per expert (fair = 1/{n_experts})")
    fig.colorbar(image, ax=ax)
    return fig
