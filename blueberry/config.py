"""The run config: one flat dataclass per task, presets, overrides and validation.

A field's name is its YAML key, its CLI option (`--lr=3e-3`), its W&B config key and its sweep
parameter. Resolution order: field defaults < preset < `--config FILE` < explicit CLI options.
This module imports no torch: `blueberry --help` and `sweep validate` read it.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

import yaml

from blueberry.errors import UserError


def option(default: Any, help: str, *, choices: tuple[str, ...] | None = None,
           min: float | None = None, max: float | None = None,
           min_exclusive: bool = False) -> Any:
    """A config field with the help text and bounds the CLI and validation use."""
    return field(default=default, metadata={"help": help, "choices": choices, "min": min,
                                            "max": max, "min_exclusive": min_exclusive})


@dataclass
class RunConfig:
    """Fields every task shares: run identity, optimisation, schedule, evaluation, tracking."""

    task: ClassVar[str] = ""
    default_preset: ClassVar[str] = ""
    # The metric that picks the best checkpoint when best_metric is empty (the task reads it from here).
    default_best_metric: ClassVar[str] = ""
    # The metric names a run logs (metrics.jsonl and W&B history); `*` stands for a class, layer or expert.
    logged_metrics: ClassVar[tuple[str, ...]] = ()
    # Fields that define the model, the data, the split or the tokenizer: a resume may not change them
    # (the checkpoint would not fit, or val data would have been trained on) unless told to.
    defines_run: ClassVar[tuple[str, ...]] = ("optimizer",)
    # What each data fingerprint (data/fingerprint.py) depends on: a resume allowed to change one of
    # these fields may see that fingerprint change (the first field is the one an error suggests).
    fingerprint_fields: ClassVar[dict[str, tuple[str, ...]]] = {}

    # run identity
    preset: str = option("", "Preset the run starts from (YAML in blueberry/presets); applied before every other field.")
    name: str = option("", "Run name; the run dir is OUT_DIR/NAME-YYYYmmdd_HHMMSS. Default: the preset name.")
    out_dir: str = option("runs", "Folder that holds run dirs.")
    seed: int = option(0, "Seed for initialisation, dropout and data order.", min=0)
    resume: str = option("", "Continue a run: a run dir, a checkpoint dir, or 'auto' (this SLURM job's run dir, else the newest unfinished run of this name).")

    # budget
    max_steps: int = option(200, "Length of the run in OPTIMIZER steps; the LR schedule spans exactly this.", min=1)
    epochs: float = option(0.0, "Budget in passes over the train split; when > 0 it sets max_steps (rounded up).", min=0)
    stop_at_step: int = option(0, "Checkpoint and stop at this optimizer step though the schedule spans max_steps (time-sliced jobs); 0 = run to max_steps. Not inherited by --resume.", min=0)
    batch_size: int = option(16, "Micro-batch size per process.", min=1)
    grad_accum: int = option(1, "Micro-batches per optimizer step (per process).", min=1)

    # optimisation
    optimizer: str = option("adamw", "adamw, or muon = Muon on hidden matrices (expert matrices included) + AdamW on the rest.", choices=("adamw", "muon"))
    lr: float = option(1e-3, "Peak AdamW learning rate (embeddings, norms, router and everything when optimizer=adamw).", min=0, min_exclusive=True)
    muon_lr: float = option(0.02, "Peak Muon learning rate (optimizer=muon).", min=0, min_exclusive=True)
    muon_momentum: float = option(0.95, "Muon Nesterov momentum.", min=0, max=1)
    weight_decay: float = option(0.1, "Decoupled weight decay on matrices (AdamW and Muon); vectors are not decayed.", min=0)
    beta1: float = option(0.9, "AdamW beta1.", min=0, max=1)
    beta2: float = option(0.95, "AdamW beta2.", min=0, max=1)
    grad_clip: float = option(1.0, "Clip the global gradient norm to this; 0 = no clipping.", min=0)
    dropout: float = option(0.0, "Dropout probability (lm: on the residual stream, i.e. the embeddings and each attention and FFN output; not on attention weights).", min=0, max=1)

    # schedule (all counted in optimizer steps)
    schedule: str = option("cosine", "LR schedule after warmup; plateau = ReduceLROnPlateau on best_metric at each evaluation.", choices=("cosine", "constant", "linear", "wsd", "plateau"))
    warmup_steps: int = option(20, "Linear warmup length in optimizer steps.", min=0)
    warmup_epochs: float = option(0.0, "Warmup length in epochs; when > 0 it sets warmup_steps.", min=0)
    warmup_init_ratio: float = option(0.0, "LR at the first warmup step as a fraction of the peak (e.g. 0.01 warms up from peak/100).", min=0, max=1)
    min_lr_ratio: float = option(0.1, "Final LR as a fraction of the peak (cosine, linear, wsd).", min=0, max=1)
    wsd_decay_frac: float = option(0.2, "Fraction of max_steps the wsd schedule spends decaying at the end.", min=0, max=1, min_exclusive=True)
    plateau_factor: float = option(0.5, "plateau: multiply the LR by this when best_metric stalls.", min=0, max=1, min_exclusive=True)
    plateau_patience: int = option(3, "plateau: evaluations without improvement before the LR drops.", min=0)

    # precision and speed
    mixed_precision: str = option("no", "Autocast precision (fp16 needs a GPU).", choices=("no", "bf16", "fp16"))
    compile: bool = option(False, "torch.compile the model in place (checkpoints stay interchangeable with uncompiled runs); the first steps pay the compile time.")

    # evaluation, logging, checkpoints
    eval_every: int = option(50, "Evaluate every this many optimizer steps (and at step 0 and the end); 0 = once per epoch.", min=0)
    eval_batches: int = option(10, "Validation micro-batches per process at each evaluation.", min=1)
    log_every: int = option(1, "Log training metrics every this many optimizer steps.", min=1)
    best_metric: str = option("", "Metric that decides the best checkpoint, early stopping and plateau; empty = the task's (lm: val/loss, scanline: val/balanced_accuracy).")
    best_mode: str = option("auto", "Whether best_metric should be low or high; auto = min for names ending in loss/perplexity, else max.", choices=("auto", "min", "max"))
    early_stop_patience: int = option(0, "Stop after this many evaluations without improving the best metric; 0 = never.", min=0)
    early_stop_min_delta: float = option(0.0, "Improvement smaller than this does not count for early stopping.", min=0)
    save_every: int = option(0, "Checkpoint every this many optimizer steps; 0 = only at the end (and at each new best if save_best).", min=0)
    keep_last: int = option(2, "Step checkpoints to keep (the best is always kept).", min=1)
    save_best: bool = option(True, "Keep a checkpoint of the best evaluation (checkpoints/best).")
    async_save: bool = option(False, "Write checkpoints in the background (torch.distributed.checkpoint async_save): training waits only while the state is copied; the folder appears once every rank's files are on disk.")

    # Weights & Biases
    wandb_project: str = option("blueberry", "W&B project.")
    wandb_entity: str = option("", "W&B entity (team or user); empty = your default.")
    wandb_group: str = option("", "W&B group (e.g. the study name).")
    wandb_tags: str = option("", "Comma-separated W&B tags.")
    wandb_mode: str = option("online", "online (falls back to offline with a notice when there is no key or no server), offline, or disabled.", choices=("online", "offline", "disabled"))
    wandb_log_model: str = option("none", "Checkpoints as W&B model Artifacts: none; best = the best (else last) checkpoint once the run ends; all = every checkpoint as it is saved. Aliases best, latest, step-N.", choices=("none", "best", "all"))
    wandb_system_metrics: bool = option(True, "Record W&B system metrics (CPU, GPU utilisation and memory) beside the run.")
    wandb_console: bool = option(True, "Record the console output (stdout/stderr) in the W&B run.")

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, **dataclasses.asdict(self)}

    def validate(self) -> None:
        """Check every field's bounds, then the relations between fields; raise UserError."""
        for f in fields(self):
            check_bounds(f, getattr(self, f.name))
        if self.name in (".", "..") or any(c in self.name for c in "/\\\0"):
            raise UserError(f"name={self.name!r}: must be one folder name (no / or \\); the run dir is "
                            "OUT_DIR/NAME-YYYYmmdd_HHMMSS")
        if not self.epochs:   # with an epoch budget, checked once epochs are steps (budget_in_steps)
            self.check_stop_at_step()
        if self.best_metric:
            self.check_best_metric()

    def check_best_metric(self) -> None:
        """best_metric must be a metric the evaluation of this task reports (checked again, against the
        metrics it really returns, at the first evaluation)."""
        from fnmatch import fnmatchcase

        evaluated = [p for p in self.logged_metrics if p.startswith(EVALUATED_PREFIXES)]
        if not any(fnmatchcase(self.best_metric, p) for p in evaluated):
            close = difflib.get_close_matches(self.best_metric, evaluated, n=1)
            raise UserError(f"best_metric={self.best_metric!r}: not a metric `blueberry train {self.task}` evaluates"
                            + (f" (did you mean {close[0]}?)" if close else "")
                            + f"; it evaluates {', '.join(evaluated)}")

    def check_stop_at_step(self) -> None:
        if self.stop_at_step > self.max_steps:
            raise UserError(f"stop_at_step={self.stop_at_step}: must be <= max_steps ({self.max_steps}) or 0")

    @property
    def tags(self) -> list[str]:
        return [t.strip() for t in self.wandb_tags.split(",") if t.strip()]


@dataclass
class LMConfig(RunConfig):
    """A decoder-only (MoE) language model on a text corpus."""

    task: ClassVar[str] = "lm"
    default_preset: ClassVar[str] = "lm-tiny"
    default_best_metric: ClassVar[str] = "val/loss"
    logged_metrics: ClassVar[tuple[str, ...]] = (
        "val/loss", "val/accuracy", "val/perplexity", "train/loss", "train/aux_loss", "train/lb_loss",
        "train/z_loss", "train/grad_norm", "train/tokens_per_s", "tokens_seen", "lr", "muon_lr", "epochs",
        "time", "moe/max_share", "moe/min_share", "moe/layer*/expert*")
    defines_run: ClassVar[tuple[str, ...]] = RunConfig.defines_run + (
        "data", "data_subset", "data_split", "text_field", "max_docs", "synthetic_docs", "val_fraction",
        "dedup", "dedup_threshold", "group_field", "data_seed", "tokenizer", "seq_len", "d_model", "n_layers", "n_heads", "d_ff", "rope_theta", "attention",
        "mla_kv_rank", "mla_q_rank", "mla_rope_dim", "n_experts", "top_k", "expert_d_ff", "n_shared_experts",
        "router", "router_renorm", "param", "base_d_model", "base_d_ff", "base_expert_d_ff", "base_n_layers",
        "mup_attn_1_over_d", "mup_zero_readout")
    fingerprint_fields: ClassVar[dict[str, tuple[str, ...]]] = {
        "corpus": ("data", "data_subset", "data_split", "text_field", "max_docs", "synthetic_docs", "data_seed"),
        "split": ("val_fraction", "data_seed", "dedup", "dedup_threshold", "group_field"),
        "tokenizer": ("tokenizer",)}

    # data
    data: str = option("synthetic", "'synthetic' (embedded, offline), a local .txt/.jsonl/.json/.parquet file or folder, or hf:NAME for a hub dataset (streamed).")
    data_subset: str = option("", "Hub dataset subset/config name (e.g. cosmopedia-v2).")
    data_split: str = option("train", "Hub dataset split to stream.")
    text_field: str = option("text", "Column holding the text in jsonl/parquet/hub data.")
    max_docs: int = option(0, "Use at most this many documents; 0 = all (required for hub data).", min=0)
    synthetic_docs: int = option(4000, "Documents the synthetic corpus generates.", min=2)
    val_fraction: float = option(0.05, "Fraction of DOCUMENTS held out for validation (split before tokenisation).", min=0, max=1, min_exclusive=True)
    data_seed: int = option(0, "Seed of the train/val document split and of the synthetic corpus; separate from seed so seed repeats share data.", min=0)
    tokenizer: str = option("bpe:2048", "bpe:N = byte-level BPE with N tokens trained on the train split, or a pretrained Hugging Face tokenizer name.")
    cache_dir: str = option("", "Token cache folder; empty = $BLUEBERRY_CACHE or ~/.cache/blueberry.")
    seq_len: int = option(128, "Tokens per training window (windows do not overlap).", min=2)
    leak_ngram: int = option(32, "Span length of the train/val overlap check.", min=4)
    leak_warn: float = option(0.01, "Warn when more than this fraction of val windows share a leak_ngram span with train.", min=0, max=1)
    dedup: str = option("group", "Near-duplicate documents (MinHash+LSH over normalised word 5-grams, found before the split): group = keep each cluster on one side of the train/val split, drop = keep only its first document, off = skip the pass.", choices=("group", "drop", "off"))
    dedup_threshold: float = option(0.3, "Estimated Jaccard similarity of two documents' word 5-gram sets from which they are near-duplicates (editions of one text: 0.4-1; distinct texts of one author: < 0.01).", min=0, max=1, min_exclusive=True)
    dedup_warn: float = option(0.01, "Warn when more than this fraction of documents has a near-duplicate.", min=0, max=1)
    group_field: str = option("", "jsonl/parquet column naming each document's group (e.g. a work or source id); documents of one group stay on one side of the split. Empty = none.")

    # model
    d_model: int = option(128, "Residual stream width.", min=8)
    n_layers: int = option(4, "Transformer blocks.", min=1)
    n_heads: int = option(4, "Attention heads.", min=1)
    d_ff: int = option(512, "Hidden width of the dense SwiGLU FFN (n_experts=0).", min=1)
    rope_theta: float = option(10000.0, "RoPE base.", min=1)
    attention: str = option("mha", "mha = multi-head attention, mla = DeepSeek-V3 multi-head latent attention.", choices=("mha", "mla"))
    mla_kv_rank: int = option(64, "MLA: rank of the compressed key/value latent.", min=1)
    mla_q_rank: int = option(0, "MLA: rank of the compressed query latent; 0 = no query compression.", min=0)
    mla_rope_dim: int = option(16, "MLA: per-head dimension of the decoupled RoPE key/query part (even).", min=2)
    n_experts: int = option(4, "Routed experts per MoE layer; 0 = dense SwiGLU FFN.", min=0)
    top_k: int = option(2, "Experts each token is routed to.", min=1)
    expert_d_ff: int = option(256, "Hidden width of each SwiGLU expert.", min=1)
    n_shared_experts: int = option(0, "Always-on shared experts (DeepSeek style), each expert_d_ff wide.", min=0)
    router: str = option("softmax", "softmax = Mixtral-style top-k of softmax; sigmoid = DeepSeek-V3 sigmoid scores with a score-correction bias.", choices=("softmax", "sigmoid"))
    router_renorm: bool = option(True, "Renormalise the k selected routing weights to sum to 1.")

    # parametrization: how init, forward multipliers and per-parameter optimizer settings follow the size
    param: str = option("sp", "How init, multipliers and learning rates follow the model's size, relative to a base model (docs/transfer.md). sp = as set, at every size (the default model); mup = muP (Tensor Programs V): hidden init variance and hidden AdamW LR x 1/m, logits x 1/m (m = width / base width), so LRs tuned on the base transfer across width; completep = muP plus depth (CompleteP, Dey et al. 2025): residual branches x base_n_layers/n_layers, AdamW eps x (1/m)(base_n_layers/n_layers), hidden AdamW weight decay x m. At the base (m = 1, same depth) all three are the same model.", choices=("sp", "mup", "completep"))
    base_d_model: int = option(0, "mup/completep: d_model of the base (proxy) model the hyperparameters were tuned on; 0 = d_model (m = 1). Ignored under sp.", min=0)
    base_d_ff: int = option(0, "mup/completep: d_ff of the base model (the dense FFN's width); 0 = d_ff.", min=0)
    base_expert_d_ff: int = option(0, "mup/completep: expert_d_ff of the base model (each expert's width); 0 = expert_d_ff. n_experts is not a width: it stays as set.", min=0)
    base_n_layers: int = option(0, "completep: n_layers of the base model; 0 = n_layers (no depth scaling). Ignored under sp and mup.", min=0)
    mup_attn_1_over_d: bool = option(False, "mup/completep: scale attention logits by 1/d_head (written sqrt(base d_head)/d_head, so the base keeps 1/sqrt(d_head)) instead of 1/sqrt(d_head), as Tensor Programs V recommends.")
    mup_zero_readout: bool = option(False, "mup/completep: start the readout at zero. The LM head is tied to the embedding, so the final norm's gain starts at 0 instead (logits start at 0; the embedding keeps its init).")

    lb_weight: float = option(0.03, "Weight of the Switch load-balancing loss E*sum(f_i*P_i); 0 = off. 0.03 (with bias_update_rate 0.001): measured over seeds on lm-tiny and moe-exp3 (docs/training.md).", min=0)
    z_loss_weight: float = option(0.0, "Weight of the router z-loss mean(logsumexp(logits)^2); 0 = off.", min=0)
    bias_update_rate: float = option(0.001, "Aux-loss-free balancing: step of the routing bias toward equal load after each optimizer step; 0 = off. 0.001 (with lb_weight 0.03): measured over seeds on lm-tiny and moe-exp3 (docs/training.md).", min=0)
    expert_parallel: int = option(1, "Expert parallelism degree: each group of this many consecutive processes splits every MoE layer's experts among its ranks and exchanges tokens (all-to-all); must divide n_experts and the number of processes. 1 = off (every rank holds every expert).", min=1)

    def validate(self) -> None:
        super().validate()
        if self.d_model % self.n_heads:
            raise UserError(f"n_heads={self.n_heads}: must divide d_model ({self.d_model})")
        if self.n_experts and self.top_k > self.n_experts:
            raise UserError(f"top_k={self.top_k}: must be <= n_experts ({self.n_experts})")
        if self.expert_parallel > 1 and (not self.n_experts or self.n_experts % self.expert_parallel):
            raise UserError(f"expert_parallel={self.expert_parallel}: must divide n_experts ({self.n_experts}); "
                            "each rank holds n_experts/expert_parallel whole experts")
        if self.attention == "mla" and self.mla_rope_dim % 2:
            raise UserError(f"mla_rope_dim={self.mla_rope_dim}: must be even")
        if (self.d_model // self.n_heads) % 2:
            raise UserError(f"n_heads={self.n_heads}: head dim d_model/n_heads must be even for RoPE")
        if bpe_size(self.tokenizer) is None and (not self.tokenizer or self.tokenizer.startswith("bpe")):
            raise UserError(f"tokenizer={self.tokenizer!r}: use bpe:N (e.g. bpe:8192) or a Hugging Face tokenizer name")
        if (size := bpe_size(self.tokenizer)) is not None and size < 258:   # data.tokenizer.train_bpe's rule, early
            raise UserError(f"tokenizer={self.tokenizer}: needs at least 258 tokens (256 bytes, EOS, one merge); "
                            "e.g. bpe:2048")
        if self.param != "sp" and self.base_d_model:
            base_head = self.base_d_model / self.n_heads
            if base_head != int(base_head) or int(base_head) % 2:
                raise UserError(f"base_d_model={self.base_d_model}: base_d_model / n_heads ({self.n_heads}) must be "
                                "a whole, even head dim (the base model is built with this model's n_heads)")
        if self.data.startswith("hf:") and not self.max_docs:
            raise UserError("max_docs=0: hub datasets are streamed; set max_docs (e.g. --max_docs 20000)")


@dataclass
class ScanlineConfig(RunConfig):
    """An STM tip-state classifier reading windows of consecutive scan lines."""

    task: ClassVar[str] = "scanline"
    default_preset: ClassVar[str] = "scanline-tiny"
    default_best_metric: ClassVar[str] = "val/balanced_accuracy"
    logged_metrics: ClassVar[tuple[str, ...]] = (
        "val/loss", "val/accuracy", "val/balanced_accuracy", "val/auroc", "val/recall/*", "train/loss",
        "train/accuracy", "train/grad_norm", "train/samples_per_s", "samples_seen", "train_eval/loss",
        "train_eval/accuracy", "train_eval/balanced_accuracy", "train_eval/auroc", "train_eval/recall/*",
        "gap/loss", "gap/accuracy", "gap/balanced_accuracy", "lr", "epochs", "time")
    defines_run: ClassVar[tuple[str, ...]] = RunConfig.defines_run + (
        "data", "n_images", "image_size", "class_shares", "noise_level", "lines_per_sample", "line_stride",
        "val_fraction", "test_fraction", "data_seed", "model", "patch_size", "d_model", "n_layers", "n_heads",
        "d_ff", "cnn_channels", "lstm_hidden")
    fingerprint_fields: ClassVar[dict[str, tuple[str, ...]]] = {
        "corpus": ("data", "n_images", "image_size", "class_shares", "noise_level", "data_seed"),
        "split": ("val_fraction", "test_fraction", "data_seed")}

    # data
    data: str = option("synthetic", "'synthetic' (embedded STM generator, offline) or a .npz with images [N,H,W] (or lines [N,W]) and labels [N].")
    n_images: int = option(600, "Images the synthetic generator makes.", min=3)
    image_size: int = option(128, "Synthetic images are image_size x image_size pixels (points per line).", min=16)
    class_shares: str = option("0.088,0.439,0.169,0.304", "Synthetic class shares (atoms, asymmetries/dimers, rows, generic defects), comma-separated.")
    noise_level: float = option(1.0, "Synthetic noise, tip-change and artefact strength (1 = realistic; higher = harder).", min=0)
    lines_per_sample: int = option(1, "Consecutive scan lines per sample (1 = single line, 20 = Gordon et al. window).", min=1)
    line_stride: int = option(4, "Start a window every this many lines of an image.", min=1)
    val_fraction: float = option(0.15, "Fraction of SOURCE IMAGES held out for validation (split before windowing).", min=0, max=1, min_exclusive=True)
    test_fraction: float = option(0.15, "Fraction of source images held out for the test split.", min=0, max=1)
    data_seed: int = option(0, "Seed of the synthetic images and of the image split; separate from seed so seed repeats share data.", min=0)
    cache_dir: str = option("", "Cache folder for generated data; empty = $BLUEBERRY_CACHE or ~/.cache/blueberry.")
    aug_flip: bool = option(True, "Train-time augmentation: flip lines horizontally with probability 0.5.")
    aug_noise: float = option(0.05, "Train-time augmentation: std of added Gaussian noise (lines are normalised to std 1).", min=0)
    aug_line_dropout: float = option(0.1, "Train-time augmentation: probability of zeroing each line of a multi-line window.", min=0, max=1)
    class_weights: str = option("auto", "Cross-entropy class weights: auto = 1/(K*share) from the train split, none, or K comma-separated numbers.")

    # model
    model: str = option("vit", "vit = patches along each line into a bidirectional encoder; sequential = CNN per line then a causal transformer over lines; cnn_lstm = CNN per line then an LSTM.", choices=("vit", "sequential", "cnn_lstm"))
    patch_size: int = option(8, "vit: points per patch along a line.", min=1)
    d_model: int = option(64, "Transformer width (vit, sequential).", min=8)
    n_layers: int = option(2, "Transformer layers (vit, sequential) or LSTM layers (cnn_lstm).", min=1)
    n_heads: int = option(4, "Attention heads (vit, sequential).", min=1)
    d_ff: int = option(256, "Transformer feed-forward width (vit, sequential).", min=1)
    cnn_channels: int = option(32, "Channels of the per-line 1-D CNN (sequential, cnn_lstm).", min=1)
    lstm_hidden: int = option(64, "cnn_lstm: LSTM hidden size.", min=1)

    def validate(self) -> None:
        super().validate()
        # The synthetic generator's classes (imported here, not at the top, so that the CLI's help
        # stays free of numpy): the counts are checked before any work.
        from blueberry.data.stm_synthetic import CLASS_NAMES

        shares = parse_floats(self.class_shares, "class_shares")
        if len(shares) < 2 or any(x < 0 for x in shares) or not sum(shares) > 0:
            raise UserError(f"class_shares={self.class_shares!r}: give at least two non-negative shares, e.g. 0.25,0.25,0.25,0.25")
        if self.data == "synthetic":
            self.synthetic_shares()
        if self.class_weights not in ("auto", "none"):
            weights = parse_floats(self.class_weights, "class_weights")
            k = len(CLASS_NAMES) if self.data == "synthetic" else len(weights)
            if len(weights) != k or not all(math.isfinite(w) and w >= 0 for w in weights):
                raise UserError(f"class_weights={self.class_weights!r}: give {k if self.data == 'synthetic' else 'K'} "
                                "non-negative numbers (one per class), or auto, or none")
        if self.val_fraction + self.test_fraction >= 1:
            raise UserError(f"test_fraction={self.test_fraction}: val_fraction + test_fraction must be < 1")
        if self.lines_per_sample > self.image_size and self.data == "synthetic":
            raise UserError(f"lines_per_sample={self.lines_per_sample}: must be <= image_size ({self.image_size})")
        if self.model != "cnn_lstm" and self.d_model % self.n_heads:
            raise UserError(f"n_heads={self.n_heads}: must divide d_model ({self.d_model})")
        if self.model == "vit" and self.image_size % self.patch_size and self.data == "synthetic":
            raise UserError(f"patch_size={self.patch_size}: must divide the line length image_size ({self.image_size})")

    def synthetic_shares(self) -> list[float]:
        """class_shares as the synthetic generator takes them: one non-negative share per class."""
        from blueberry.data.stm_synthetic import CLASS_NAMES

        shares, k = parse_floats(self.class_shares, "class_shares"), len(CLASS_NAMES)
        if len(shares) != k or min(shares) < 0 or not sum(shares) > 0:
            raise UserError(f"class_shares={self.class_shares!r}: the synthetic data has {k} classes "
                            f"({', '.join(CLASS_NAMES)}); give {k} non-negative shares")
        return shares


# Metrics an evaluation returns (what best_metric may name), as opposed to training rows.
EVALUATED_PREFIXES = ("val/", "train_eval/", "gap/", "moe/")


def parse_floats(text: str, name: str) -> list[float]:
    """Comma-separated numbers of field `name`; UserError naming the field otherwise."""
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise UserError(f"{name}={text!r}: must be comma-separated numbers") from None


TASK_CONFIGS: dict[str, type[RunConfig]] = {"lm": LMConfig, "scanline": ScanlineConfig}
# Options of `blueberry train TASK` besides the fields: a YAML file of fields, and a recipe mapping.
EXTRA_TRAIN_OPTIONS = ("config", "recipe")


def bpe_size(tokenizer: str) -> int | None:
    """N of a `bpe:N` tokenizer spec (a BPE trained on the train split); None for anything else."""
    size = tokenizer[4:] if tokenizer.startswith("bpe:") else ""
    return int(size) if size.isdigit() else None


# --- presets and resolution -------------------------------------------------------------------

def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("blueberry.presets").iterdir()
                  if p.name.endswith(".yaml"))


def load_preset(name: str, cls: type[RunConfig]) -> dict[str, Any]:
    names = preset_names()
    if name not in names:
        raise UserError(f"preset={name!r}: unknown; allowed: {', '.join(names)}")
    values = _read_yaml(resources.files("blueberry.presets").joinpath(f"{name}.yaml"), f"preset {name}")
    task = values.pop("task", cls.task)
    if task != cls.task:
        raise UserError(f"preset={name!r}: is a {task} preset, not {cls.task}; allowed: "
                        f"{', '.join(n for n in names if preset_task(n) == cls.task)}")
    return values


def preset_task(name: str) -> str:
    return _read_yaml(resources.files("blueberry.presets").joinpath(f"{name}.yaml"), name).get("task", "")


def read_config_file(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{path}: config file not found")
    return _read_yaml(p, str(path))


def _read_yaml(src: Any, label: str) -> dict[str, Any]:
    try:
        values = yaml.safe_load(src.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{label}: not valid YAML ({yaml_problem(e)})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{label}: cannot be read ({getattr(e, 'strerror', None) or e})") from None
    if not isinstance(values, dict):
        raise UserError(f"{label}: must be a mapping of field: value")
    return values


def yaml_problem(e: yaml.YAMLError) -> str:
    """What is wrong and where, in one line: 'line 3, column 7: mapping values are not allowed here'."""
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark else problem


def parse_recipe(text: str) -> dict[str, Any]:
    """`--recipe` values: a mapping of field overrides, as YAML/JSON or the Python repr that
    `wandb agent` renders for dict-valued sweep parameters ({'optimizer': 'muon', 'lr': 0.001})."""
    import ast

    try:   # the agent's Python repr first: it keeps None, True and 1e-05 as Python reads them
        values = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        try:
            values = yaml.safe_load(text)
        except yaml.YAMLError:
            values = None
    if not isinstance(values, dict):
        raise UserError(f"recipe={text!r}: must be a mapping of field: value, e.g. {{optimizer: muon, lr: 0.001}}")
    nulls = [str(k) for k, v in values.items() if v is None]
    if nulls:   # a sweep's null would otherwise train as the text "None" (or a default) unnoticed
        raise UserError(f"recipe: {', '.join(nulls)}=null: give a value or leave the key out")
    return values


def resolve(cls: type[RunConfig], *, preset: str | None = None, file_values: dict[str, Any] | None = None,
            recipe: dict[str, Any] | None = None, cli_values: dict[str, Any] | None = None,
            base: dict[str, Any] | None = None, source: str = "config") -> RunConfig:
    """Build and validate a config: defaults < preset (or `base`) < file values < recipe < CLI values.

    `base` replaces the preset layer (a resumed run's saved config). A recipe is a sweep's named
    variant of a study (a dict-valued parameter); it may name its own preset, below an option's.
    """
    file_values = dict(file_values or {})
    recipe = dict(recipe or {})
    cli_values = dict(cli_values or {})
    file_values.pop("task", None)
    if base is None:
        chosen = (cli_values.get("preset") or recipe.get("preset") or preset or file_values.get("preset")
                  or cls.default_preset)
        base = {**load_preset(chosen, cls), "preset": chosen}
    values: dict[str, Any] = {}
    set_by: dict[str, int] = {}
    layers = ((base, "preset"), (file_values, source), (recipe, "recipe"), (cli_values, "option"))
    for level, (layer, label) in enumerate(layers):
        for key, value in layer.items():
            values[key] = coerce(cls, key, value, label)
            set_by[key] = level
        for steps, epochs in EPOCH_BUDGETS:
            if steps in layer and epochs in layer and values[epochs] and layer is cli_values:
                raise UserError(f"{label}: {steps}={values[steps]} and {epochs}={values[epochs]} both set the "
                                f"budget; give one ({epochs}=0 to count in steps)")
    for steps, epochs in EPOCH_BUDGETS:
        # An explicit step count (--max_steps 20) wins over an epoch budget a lower layer set.
        if set_by.get(steps, -1) > set_by.get(epochs, -1) and values.get(epochs):
            values[epochs] = 0.0
    cfg = cls(**values)
    if not cfg.name:
        cfg.name = cfg.preset or cls.task
    cfg.validate()
    return cfg


# (field in optimizer steps, field in epochs that, when > 0, sets it)
EPOCH_BUDGETS = (("max_steps", "epochs"), ("warmup_steps", "warmup_epochs"))

# Names users type for fields that blueberry spells differently; an unknown name gets the hint.
ALIASES = {
    "learning_rate": "lr", "lr_max": "lr", "peak_lr": "lr", "max_lr": "lr",
    "lr_min": "min_lr_ratio", "min_lr": "min_lr_ratio", "final_lr": "min_lr_ratio",
    "steps": "max_steps", "num_steps": "max_steps", "total_steps": "max_steps", "train_steps": "max_steps",
    "max_iters": "max_steps", "iterations": "max_steps",
    "num_epochs": "epochs", "n_epochs": "epochs", "epoch": "epochs",
    "warmup": "warmup_steps", "num_warmup_steps": "warmup_steps", "warmup_iters": "warmup_steps",
    "wd": "weight_decay", "clip_grad": "grad_clip", "max_grad_norm": "grad_clip", "grad_norm_clip": "grad_clip",
    "gradient_clipping": "grad_clip", "bs": "batch_size", "micro_batch_size": "batch_size",
    "gradient_accumulation_steps": "grad_accum", "accumulate_grad_batches": "grad_accum",
    "optim": "optimizer", "scheduler": "schedule", "lr_schedule": "schedule", "lr_scheduler": "schedule",
    "num_experts": "n_experts", "experts": "n_experts", "topk": "top_k", "num_experts_per_tok": "top_k",
    "num_layers": "n_layers", "n_layer": "n_layers", "layers": "n_layers", "depth": "n_layers",
    "num_heads": "n_heads", "n_head": "n_heads", "hidden_size": "d_model", "n_embd": "d_model",
    "dim": "d_model", "width": "d_model", "intermediate_size": "d_ff", "ffn_dim": "d_ff",
    "block_size": "seq_len", "context_length": "seq_len", "max_seq_len": "seq_len", "seq_length": "seq_len",
    "output_dir": "out_dir", "outdir": "out_dir", "run_name": "name", "project": "wandb_project",
    "group": "wandb_group", "tags": "wandb_tags", "entity": "wandb_entity", "patience": "early_stop_patience",
    "precision": "mixed_precision", "amp": "mixed_precision", "vocab_size": "tokenizer",
    "dataset": "data", "data_path": "data", "train_data": "data", "validation_split": "val_fraction",
    "val_split": "val_fraction",
}


def field_hint(cls: type[RunConfig], key: str) -> str:
    """' (blueberry calls it lr)', ' (did you mean ...?)' or a pointer to --help, for an unknown field."""
    fmap = field_map(cls)
    name = key.lstrip("-").replace("-", "_")
    alias = ALIASES.get(name) or ALIASES.get(name.lower())
    if alias in fmap:
        return f" (blueberry calls it {alias})"
    close = difflib.get_close_matches(name, fmap, n=1)
    return f" (did you mean {close[0]}?)" if close else f"; see `blueberry train {cls.task} --help`"


def field_map(cls: type[RunConfig]) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in fields(cls)}


def coerce(cls: type[RunConfig], key: str, value: Any, label: str = "config") -> Any:
    """Convert a YAML/CLI value to the field's type, or raise UserError naming the field."""
    fmap = field_map(cls)
    if key not in fmap:
        raise UserError(f"{label}: unknown field {key!r}{field_hint(cls, key)}")
    kind = fmap[key].type
    try:
        if kind == "bool":
            return _to_bool(value)
        if kind == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if kind == "float":
            if isinstance(value, bool):
                raise ValueError
            out = float(value)
            if not math.isfinite(out):
                raise ValueError
            return out
        if value is None:
            return ""
        if isinstance(value, (dict, list)):
            raise ValueError
        return str(value)
    except (TypeError, ValueError):
        allowed = {"bool": "true or false", "int": "an integer", "float": "a number"}.get(kind, "a string")
        raise UserError(f"{label}: {key}={value!r}: must be {allowed}") from None


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise ValueError(value)


def check_bounds(f: dataclasses.Field, value: Any) -> None:
    meta = f.metadata
    if meta.get("choices") and value not in meta["choices"]:
        raise UserError(f"{f.name}={value!r}: must be one of {', '.join(meta['choices'])}")
    low, high = meta.get("min"), meta.get("max")
    if low is not None and (value < low or (meta.get("min_exclusive") and value == low)):
        op = ">" if meta.get("min_exclusive") else ">="
        raise UserError(f"{f.name}={value!r}: must be {op} {low}")
    if high is not None and value > high:
        raise UserError(f"{f.name}={value!r}: must be <= {high}")


def changed_run_fields(cls: type[RunConfig], saved: dict[str, Any], cfg: RunConfig) -> dict[str, list]:
    """{field: [saved value, new value]} for each field that defines the run and differs from a saved
    config.yaml (fields the saved file lacks are taken as unchanged)."""
    changes = {}
    for name in cls.defines_run:
        if name in saved:
            try:
                old = coerce(cls, name, saved[name])
            except UserError:
                old = saved[name]
            if old != getattr(cfg, name):
                changes[name] = [old, getattr(cfg, name)]
    return changes


def dump_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
