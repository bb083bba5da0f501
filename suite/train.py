"""Training one run: the LightningModule every placement shares, and `train(RunConfig)`."""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint

from models import build_model
from models.loss import linear_cross_entropy
from suite import fastpath
from suite.config import RunConfig, run_config_from_dict
from suite.cost import resolve_budget, tokens_per_step
from suite.data import TokenData, bits_per_byte
from suite.diagnostics import Diagnostics
from suite.files import atomic_write_text
from suite.outcome import DIVERGED, FAILED_TO_LEARN, FINISHED, USED, failed_to_learn

# NOTE: StepSampler resumes mid-epoch from the restored global step (suite/data.py), which
# Lightning cannot see; its warning about non-resumable dataloaders does not apply here.
warnings.filterwarnings("ignore", message=".*your dataloader is not resumable.*")
warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")


def lr_factor(step: int, total: int, warmup: int, floor: float) -> float:
    """Linear warmup over `warmup` steps, then cosine decay from 1 to `floor` at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


class LitLM(L.LightningModule):
    """Next-token language modelling for any placement: the model comes from the run's config."""

    def __init__(self, run: RunConfig | Mapping[str, Any], vocab_size: int) -> None:
        super().__init__()
        # the frozen RunConfig travels here from the sweep file; only a checkpoint's hyperparameters
        # (plain data) are parsed, at that edge
        self.cfg = run if isinstance(run, RunConfig) else run_config_from_dict(
            run, "checkpoint hyperparameters")
        # plain data, so checkpoints load without this code's classes (and hparams are readable)
        self.save_hyperparameters({"run": self.cfg.to_dict(), "vocab_size": vocab_size})
        self.model = build_model(self.cfg.model_config(vocab_size))
        # weight decay on 2-D weights only, decided before any wrapper (FSDP) flattens them
        self._decay = {n for n, p in self.named_parameters() if p.ndim >= 2}
        self._compiled_loss = None  # set by configure_model when train.compile resolves to on
        self.val_text_size: tuple[int, int] | None = None  # (tokens, bytes) of the val text: val/bpb

    def configure_model(self) -> None:
        """The fast path (suite/fastpath.py): activation checkpointing and torch.compile."""
        t, trainer = self.cfg.train, self._trainer
        fsdp = trainer is not None and fastpath.is_fsdp(trainer.strategy)
        device = trainer.strategy.root_device.type if trainer is not None else self.device.type
        # FSDP checkpoints each block through its strategy (inside the FSDP unit)
        self.model.checkpoint_blocks = t.activation_checkpointing and not fsdp
        if device == "cuda":
            torch.set_float32_matmul_precision("high")  # TF32 for what autocast leaves in fp32
        if self._compiled_loss is not None or not fastpath.resolve_compile(t, device):
            return
        fastpath.use_compile_cache(self.cfg.data.cache_dir)
        if fsdp:  # compiled one block at a time, inside its FSDP unit
            for block in self.model.blocks:
                block.compile(dynamic=False)
            self._compiled_loss = self._loss_eager
        else:  # the whole forward and the loss in one graph: model parameters keep their names
            self._compiled_loss = torch.compile(self._loss_eager, dynamic=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model(tokens)

    def _loss_eager(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # the LM head and the loss in chunks: no (B T, V) fp32 logits are held (models/loss.py)
        h = self.model.features(inputs)  # (B, T, d)
        return linear_cross_entropy(h.flatten(0, 1), self.model.lm_head.weight, targets.flatten(),
                                    self.model.cfg.vocab_size)

    def _loss(self, batch: torch.Tensor) -> torch.Tensor:
        inputs, targets = batch[:, :-1], batch[:, 1:]  # (B, T) each
        return (self._compiled_loss or self._loss_eager)(inputs, targets)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        # not prog_bar: Lightning would read it on the host every step (fastpath.LossBar shows it)
        self.log("train/loss", loss)
        self.last_loss = loss.detach()  # read by suite.diagnostics (no host sync)
        return loss

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        loss = self._loss(batch)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True)
        if self.val_text_size is not None:  # linear in the loss: its mean is the mean loss's bpb
            self.log("val/bpb", bits_per_byte(loss, *self.val_text_size), sync_dist=True)

    def configure_optimizers(self):
        t = self.cfg.train
        named = [(fastpath.clean_name(n), p) for n, p in self.named_parameters() if p.requires_grad]
        # weight decay on 2-D weights only: norms' gains (and any bias) are not decayed
        groups = [{"params": [p for n, p in named if n in self._decay], "weight_decay": t.weight_decay},
                  {"params": [p for n, p in named if n not in self._decay], "weight_decay": 0.0}]
        opt = torch.optim.AdamW(groups, lr=self.cfg.lr, betas=(t.beta1, t.beta2), eps=t.adam_eps,
                                fused=self.device.type == "cuda")
        warmup = max(1, round(t.warmup_fraction * t.max_steps))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: lr_factor(s, t.max_steps, warmup, t.min_lr_ratio))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        # Clip here rather than through Trainer(gradient_clip_val) so the pre-clip norm that
        # clip_grad_norm_ returns is logged without a second pass over the gradients.
        max_norm = self.cfg.train.grad_clip or float("inf")
        norm = fastpath.clip_grad_norm(self, max_norm)  # the FSDP-correct global norm under FSDP
        self.log("train/grad_norm", norm)
        self.last_grad_norm = norm  # pre-clip; read by suite.diagnostics (no host sync)


class Throughput(Callback):
    """Tokens per second over each logging interval (host clock: no device sync in the step)."""

    def __init__(self, tokens_per_step: int, every: int) -> None:
        self.tokens_per_step, self.every = tokens_per_step, every
        self._t0: float | None = None
        self._step0 = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self._t0 is None:  # first step includes warm-up (compilation, allocation): not counted
            self._t0, self._step0 = time.perf_counter(), step
            return
        # on the logging steps (step % log_every == 0), so that on a GPU the one host sync that
        # logging costs is shared with Lightning's own logging rather than added in other steps
        if step % self.every == 0 and step > self._step0:
            now = time.perf_counter()
            rate = (step - self._step0) * self.tokens_per_step / (now - self._t0)
            pl_module.log("train/tokens_per_s", rate)
            self._t0, self._step0 = now, step


def trainer_kwargs(cfg: RunConfig) -> dict[str, Any]:
    t = cfg.train
    return dict(
        accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes,
        strategy=fastpath.make_strategy(cfg), precision=fastpath.resolve_precision(t),
        max_steps=t.max_steps, accumulate_grad_batches=t.accumulate,
        val_check_interval=t.val_every * t.accumulate, check_val_every_n_epoch=None,
        num_sanity_val_steps=0, log_every_n_steps=t.log_every, enable_progress_bar=t.progress_bar,
        enable_model_summary=False, use_distributed_sampler=False,  # StepSampler shards by rank
        deterministic=False,
    )


def finished_result(cfg: RunConfig) -> dict[str, Any] | None:
    """The run's result.json when it has ended (finished all its steps, or diverged), else None."""
    try:
        result = json.loads((cfg.run_dir / "result.json").read_text())
    except (OSError, ValueError):
        return None
    if result.get("status") == DIVERGED:
        return result
    steps = resolve_budget(cfg).train.max_steps
    if result.get("status") in USED and (result.get("step") or 0) >= steps:
        return result
    return None


def train(cfg: RunConfig, callbacks: list[Callback] = (), logger: Any = None,
          plugins: list[Any] = (), data: TokenData | None = None) -> dict[str, Any]:
    """Train (or resume) one run in this process; returns its summary (also in result.json).
    `data`: another data module of the same interface (periln bench: random tokens)."""
    cfg = resolve_budget(cfg)
    ended = finished_result(cfg)
    if ended is not None:  # nothing to do; re-fitting would rewrite result.json without metrics
        return ended
    # data and tokenizer first: bad input fails here, before anything is written for the run
    data = TokenData(cfg) if data is None else data
    data.prepare_data()
    run_dir = cfg.run_dir
    ckpt_dir = run_dir / "checkpoints"
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    # the module's own copy of the run carries the device's vocabulary padding (128 on a GPU), so
    # a checkpoint rebuilds the same shapes anywhere; config.yaml keeps the run as given
    lit = LitLM(fastpath.module_run(cfg), data.tokenizer.vocab_size)
    lit.val_text_size = data.val_text_size  # None: data without text (periln bench's random tokens)
    last = ckpt_dir / "last.ckpt"
    # save_last="link": last.ckpt is a symbolic link to the newest step<N>.ckpt, so each checkpoint
    # is written once (save_last=True wrote a second full copy every time)
    checkpoint = ModelCheckpoint(dirpath=ckpt_dir, filename="step{step}", auto_insert_metric_name=False,
                                 every_n_train_steps=cfg.train.ckpt_every, save_top_k=1, save_last="link")
    if logger is None:
        logger = L.pytorch.loggers.CSVLogger(run_dir, name="logs")
    # every run gets the diagnostics (spikes, overflow, divergence) unless switched off
    diag = next((c for c in callbacks if isinstance(c, Diagnostics)), None)
    if diag is None and cfg.diagnostics.enabled:
        diag = Diagnostics(cfg.diagnostics)
        callbacks = [*callbacks, diag]
    trainer = L.Trainer(
        default_root_dir=run_dir, logger=logger,
        callbacks=[checkpoint, LearningRateMonitor("step"),
                   Throughput(tokens_per_step(cfg), cfg.train.log_every),
                   *fastpath.progress_callbacks(cfg.train), *callbacks],
        plugins=list(plugins) or None, **trainer_kwargs(cfg))
    start = time.perf_counter()
    trainer.fit(lit, datamodule=data, ckpt_path=str(last) if last.is_file() else None)
    # the final state, whatever the checkpoint interval, unless the periodic checkpoint that last.ckpt
    # links to is already this step's (decided from the callback's state, the same on every rank)
    this_step = (ckpt_dir / f"step{trainer.global_step}.ckpt").resolve()  # `filename`'s name for it
    if Path(checkpoint.best_model_path or "").resolve() != this_step:
        if trainer.is_global_zero and last.is_symlink():
            last.unlink()  # a file replaces the link: saving through it would overwrite step<N>.ckpt
        trainer.save_checkpoint(last)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    # a run that ends no better than the token frequencies failed to learn (suite/outcome.py);
    # the train loss stands in when the run recorded no validation loss
    unigram = getattr(data, "unigram_ce", None)
    final = metrics.get("val/loss", metrics.get("train/loss"))
    learned = not failed_to_learn(final, unigram, trainer.global_step)
    result = dict(key=cfg.key, status=FINISHED if learned else FAILED_TO_LEARN,
                  step=trainer.global_step, train_loss=metrics.get("train/loss"),
                  val_loss=metrics.get("val/loss"), val_bpb=metrics.get("val/bpb"), unigram_ce=unigram,
                  checkpoint=str(last),
                  seconds=round(time.perf_counter() - start, 2),
                  tokens_per_s=metrics.get("train/tokens_per_s"))
    if diag is not None:  # status "diverged" with diverged_step, spike and overflow counts
        result.update(diag.result_fields())
    if trainer.global_rank == 0:
        atomic_write_text(run_dir / "result.json", json.dumps(result, indent=1))
    return result
