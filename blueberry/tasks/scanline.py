"""The scanline task: classify the STM tip state from a window of consecutive scan lines.

Images are split into train/val/test BEFORE windowing and augmentation (no image in two splits);
each evaluation reports loss, accuracy, balanced accuracy, per-class recall, macro one-vs-rest
AUROC, the confusion matrix, and the gap to the same metrics on (un-augmented) train windows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from accelerate.utils import gather_object
from torchmetrics.functional.classification import (multiclass_accuracy, multiclass_auroc,
                                                    multiclass_confusion_matrix, multiclass_recall)

from blueberry.config import ScanlineConfig
from blueberry.data.fingerprint import arrays_digest
from blueberry.data.packing import ShardedBatchSampler, eval_batches, train_batch_stream
from blueberry.data.scanline import ScanlineWindows, augmentation, class_weights, load_source, split_by_image
from blueberry.errors import UserError
from blueberry.models.scanline import build_scanline_model
from blueberry.tasks import media
from blueberry.tasks.base import TaskData


class ScanlineTask:
    name = "scanline"
    best_metric = ScanlineConfig.default_best_metric
    splits = ("val", "test", "train")

    def build_data(self, cfg: ScanlineConfig, accelerator) -> TaskData:
        with accelerator.main_process_first():
            source = load_source(cfg)
        images = split_by_image(source, cfg.val_fraction, cfg.test_fraction, cfg.data_seed)
        aug = augmentation(cfg)

        def windows(split: str, train: bool) -> ScanlineWindows:
            return ScanlineWindows(source, images[split], cfg.lines_per_sample, cfg.line_stride,
                                   train=train, aug=aug if train else None)

        train = windows("train", train=True)
        evaluation = {split: windows(split, train=False) for split in self.splits if len(images[split])}
        if "val" not in evaluation or len(evaluation["val"]) == 0:
            raise UserError(f"val_fraction={cfg.val_fraction}: the val split has no windows; raise it or add images")
        order = ShardedBatchSampler(len(train), cfg.batch_size, accelerator.process_index,
                                    accelerator.num_processes, cfg.seed)
        weights = class_weights(cfg.class_weights, train.labels, source.n_classes)
        self.loss_weights = weights.to(accelerator.device)   # one task instance per run
        shares = torch.bincount(torch.as_tensor(train.labels), minlength=source.n_classes).float()
        stats = {"n_classes": source.n_classes, "class_names": list(source.class_names),
                 "images": {split: int(len(idx)) for split, idx in images.items()},
                 "windows": {split: len(ds) for split, ds in evaluation.items()},
                 "train_class_shares": (shares / shares.sum()).tolist(), "class_weights": weights.tolist(),
                 "source": source.meta}
        return TaskData(train_batches=train_batch_stream(train, cfg.batch_size, cfg.seed, accelerator),
                        items_per_batch=cfg.batch_size, unit="samples", epochs_at=order.epochs_at, stats=stats,
                        payload={"eval": evaluation, "n_classes": source.n_classes,
                                 "class_names": list(source.class_names), "line_length": source.lines.shape[-1]},
                        fingerprint={"corpus": arrays_digest(source.lines, source.line_labels),
                                     "split": arrays_digest(*(images[s] for s in sorted(images)))})

    def build_model(self, cfg: ScanlineConfig, data: TaskData):
        return build_scanline_model(cfg, data.payload["n_classes"], data.payload["line_length"])

    def describe_model(self, model) -> dict[str, int]:
        n = sum(p.numel() for p in model.parameters())
        return {"total": n, "active": n}

    def train_loss(self, model, batch, cfg: ScanlineConfig):
        x, y = batch
        logits = model(x)
        loss = F.cross_entropy(logits.float(), y, weight=self.loss_weights)
        return loss, {"loss": loss, "accuracy": (logits.argmax(-1) == y).float().mean()}

    @torch.no_grad()
    def evaluate(self, model, data: TaskData, cfg: ScanlineConfig, accelerator, split: str = "val",
                 in_training: bool = False):
        """Metrics of `split`; in training also the un-augmented train windows (train_eval/...)
        and the gap train_eval - val (gap/...)."""
        metrics, figures = self._evaluate_split(model, data, cfg, accelerator, split)
        if in_training and "train" in data.payload["eval"]:
            # prefix train_eval: train/loss is already the running (augmented) training loss
            train_metrics, _ = self._evaluate_split(model, data, cfg, accelerator, "train", figure=False,
                                                    prefix="train_eval")
            metrics.update(train_metrics)
            for name in ("loss", "accuracy", "balanced_accuracy"):
                metrics[f"gap/{name}"] = train_metrics[f"train_eval/{name}"] - metrics[f"val/{name}"]
        return metrics, figures

    def _evaluate_split(self, model, data, cfg, accelerator, split, figure=True, prefix=None):
        dataset = data.payload["eval"].get(split)
        if dataset is None:
            raise UserError(f"split={split}: this run has no {split} images (test_fraction={cfg.test_fraction})")
        was_training = model.training
        model.eval()
        probs, targets = [], []
        for indices in eval_batches(len(dataset), cfg.eval_batches, cfg.batch_size,
                                    accelerator.process_index, accelerator.num_processes):
            # A rank whose share ran out still runs a forward (not counted): FSDP2 all-gathers in each.
            x, y = dataset.batch(indices or [0])
            logits = model(x.to(accelerator.device)).float()
            if not indices:
                continue
            probs.append(logits.softmax(-1))
            targets.append(y)
        model.train(was_training)
        local = (torch.cat(probs).cpu(), torch.cat(targets)) if probs else None   # one device read
        parts = gather_object([local]) if accelerator.num_processes > 1 else [local]
        probs = torch.cat([p for p, _ in filter(None, parts)])
        targets = torch.cat([t for _, t in filter(None, parts)])
        metrics = classification_metrics(probs, targets, data.payload["n_classes"], self.loss_weights.cpu(),
                                         data.payload["class_names"], prefix=prefix or split)
        figures = {}
        if figure and accelerator.is_main_process:
            names = data.payload["class_names"]
            figures[f"{split}/confusion_matrix"] = confusion_figure(probs, targets, names)
            # W&B's own views of the same numbers: an interactive matrix and a per-class table
            predictions = probs.argmax(-1)
            figures[f"{split}/confusion_matrix_chart"] = media.Confusion(targets.tolist(), predictions.tolist(), names)
            figures[f"{split}/per_class"] = per_class_table(predictions, targets, names)
        return metrics, figures

    def after_optimizer_step(self, model, cfg, accelerator) -> None:
        """Nothing beyond gradient descent."""


def classification_metrics(probs: torch.Tensor, targets: torch.Tensor, n_classes: int, weights: torch.Tensor,
                           class_names: list[str], prefix: str) -> dict[str, float]:
    """Weighted CE (as trained), accuracy, balanced accuracy (mean per-class recall), per-class
    recall and macro one-vs-rest AUROC, through torchmetrics."""
    loss = F.nll_loss(probs.clamp_min(1e-12).log(), targets, weight=weights)
    recall = multiclass_recall(probs, targets, n_classes, average=None)
    present = torch.bincount(targets, minlength=n_classes) > 0
    metrics = {
        f"{prefix}/loss": loss.item(),
        f"{prefix}/accuracy": multiclass_accuracy(probs, targets, n_classes, average="micro").item(),
        # mean recall over the classes present: a class absent from the split is not a failure
        f"{prefix}/balanced_accuracy": recall[present].mean().item(),
        f"{prefix}/auroc": multiclass_auroc(probs, targets, n_classes, average="macro").item(),
    }
    for k, name in enumerate(class_names):
        metrics[f"{prefix}/recall/{name}"] = recall[k].item()
    return metrics


def per_class_table(predictions: torch.Tensor, targets: torch.Tensor, class_names: list[str]) -> media.Table:
    """Support, precision, recall and F1 of each class (a class never predicted has precision 0)."""
    k = len(class_names)
    counts = torch.bincount(targets * k + predictions, minlength=k * k).view(k, k).double()
    hits, support, predicted = counts.diag(), counts.sum(1), counts.sum(0)
    precision, recall = hits / predicted.clamp(min=1), hits / support.clamp(min=1)
    f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
    rows = [[name, int(support[i]), precision[i].item(), recall[i].item(), f1[i].item()]
            for i, name in enumerate(class_names)]
    return media.Table(["class", "support", "precision", "recall", "f1"], rows)


def confusion_figure(probs: torch.Tensor, targets: torch.Tensor, class_names: list[str]):
    """Confusion matrix, rows = true class normalised to 1, with the counts written in."""
    from matplotlib.figure import Figure   # not pyplot: no backend or global state

    counts = multiclass_confusion_matrix(probs, targets, len(class_names)).numpy()
    share = counts / counts.sum(1, keepdims=True).clip(min=1)
    fig = Figure(figsize=(1.6 + 0.9 * len(class_names), 1.2 + 0.8 * len(class_names)))
    ax = fig.subplots()
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(class_names)):
        for j in range(len(class_names)):
            ax.text(j, i, f"{counts[i, j]}\n{share[i, j]:.0%}", ha="center", va="center", fontsize=8,
                    color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(class_names)), class_names, rotation=30, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    return fig
