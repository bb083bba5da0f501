"""Training one run: the LightningModule every placement shares, and `train(RunConfig)`."""

from __future__ import annotations

import json
import math
import signal
import sys
import threading
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from models import ConfigError, build_model
from models.loss import linear_cross_entropy
from suite import fastpath
from suite.config import (
    RunConfig,
    read_yaml,
    run_config_from_dict,
    run_settings,
    setting_changes,
    settings_sha,
)
from suite.cost import resolve_budget, tokens_per_step
from suite.data import TokenData, bits_per_byte
from suite.diagnostics import Diagnostics
from suite.files import atomic_write_text
from suite.outcome import DIVERGED, FAILED_TO_LEARN, FINISHED, INTERRUPTED, USED, failed_to_learn

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


class Interrupted(SystemExit):
    """Training stopped on a signal (after saving interrupted.ckpt at `step`, when a step had
    ended); the same command, or the job's requeue, resumes it. Exits non-zero."""

    def __init__(self, step: int | None) -> None:
        super().__init__(f"stopped at step {step} on a signal; checkpoint saved" if step is not None
                         else "stopped on a signal before a step ended; nothing saved")
        self.step = step


# The checkpoint a signal saves: a name of its own, since ModelCheckpoint(save_last="link") points
# last.ckpt back at its own newest step<N>.ckpt at every validation end, and would hide it there
SIGNAL_CKPT = "interrupted.ckpt"


class SaveOnSignal(Callback):
    """At the first step boundary after SIGTERM (Lightning notes it) or submitit's USR2 (deferred
    here), save `path` (checkpoints/interrupted.ckpt), then stop once that step's metrics are
    logged (the resume takes the newest checkpoint: resume_point): on SIGTERM Lightning
    raises SIGTERMException itself (SLURM already requeues or cancels the job); on USR2 this hands
    over to submitit's handler (checkpoint(), requeue, exit) at the start of the next batch.
    Saving in on_train_batch_end, where ModelCheckpoint saves, keeps the resume exact; under DDP
    every rank agrees on the step through one all-reduce of the flag per step."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.usr_signal: tuple[int, Any] | None = None
        self.submitit_handler: Any = None
        self.training = False
        self.saved_step: int | None = None

    def install(self) -> None:
        sig = signal.SIGUSR2
        previous = signal.getsignal(sig)
        if callable(previous) and threading.current_thread() is threading.main_thread():
            self.submitit_handler = previous
            signal.signal(sig, self._defer)

    def _defer(self, signum: int, frame: Any) -> None:
        if self.training:
            self.usr_signal = (signum, frame)
        else:  # nothing to save: submitit's handler at once
            self.submitit_handler(signum, frame)

    def on_train_start(self, trainer, pl_module) -> None:
        self.training = True

    def on_train_end(self, trainer, pl_module) -> None:
        self.training = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.saved_step is not None:
            return
        flag = self.usr_signal is not None or trainer.received_sigterm
        if trainer.world_size > 1:
            flag = trainer.strategy.reduce_boolean_decision(flag, all=False)
        if flag:
            trainer.save_checkpoint(self.path)
            self.saved_step = trainer.global_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.saved_step is None:
            return
        self.training = False
        if self.usr_signal is not None and self.submitit_handler is not None and trainer.global_rank == 0:
            self.submitit_handler(*self.usr_signal)  # checkpoint(), requeue, sys.exit
        raise Interrupted(self.saved_step)


def save_last(trainer: L.Trainer, last: Path) -> None:
    """Save the trainer's state as last.ckpt. With save_last="link" last.ckpt may be a link to the
    newest step<N>.ckpt: a file replaces the link, since saving through it would overwrite that
    step's checkpoint with this one's state."""
    if trainer.is_global_zero and last.is_symlink():
        last.unlink()
    trainer.save_checkpoint(last)


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
    """The run's result.json when it has ended (finished all its steps, or diverged), else None.
    A run directory trained with other settings is an error (check_same_run), never a result."""
    check_same_run(resolve_budget(cfg))
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


def check_same_run(cfg: RunConfig) -> None:
    """A run directory keeps the settings it was trained with: its result or checkpoint is never
    reused, nor resumed, under a config that differs in anything that changes the run."""
    path = cfg.run_dir / "config.yaml"
    if not path.is_file():
        return
    try:
        recorded = resolve_budget(run_config_from_dict(read_yaml(path, mapping=True), str(path)))
    except ConfigError as err:
        raise ConfigError(f"{path}: the recorded config of run {cfg.key} cannot be read "
                          f"({str(err).splitlines()[0]}); move {cfg.run_dir} aside to start it "
                          "again") from None
    changes = setting_changes(run_settings(recorded), run_settings(cfg))
    if changes:
        more = f" (+{len(changes) - 2} more)" if len(changes) > 2 else ""
        raise ConfigError(f"{cfg.run_dir}: run {cfg.key} was trained with other settings: "
                          f"{'; '.join(changes[:2])}{more}; give this one its own place (a new "
                          "sweep=NAME or out_dir=DIR), or restore the recorded settings")


def checkpoint_step(path: Path) -> tuple[int | None, str | None]:
    """(the training step `path` was saved at, None) when it loads as a checkpoint of tensors and
    plain data, else (None, why not)."""
    try:  # mmap: the check reads the archive's index, not the weights
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return int(data.get("global_step", 0)), None
    except Exception as err:
        text = str(err).strip().splitlines()
        return None, f"{type(err).__name__}: {text[0][:160] if text else ''}"


def _set_aside(path: Path) -> Path:
    """`path` renamed beside itself (<name>.unreadable[.N]): never deleted, out of the resume's way.
    Under DDP every rank looks: one that finds the file already moved by another names the same."""
    target = path.with_name(path.name + ".unreadable")
    n = 1
    while target.exists():
        target = path.with_name(f"{path.name}.unreadable.{n}")
        n += 1
    try:
        path.rename(target)
    except FileNotFoundError:
        return path.with_name(path.name + ".unreadable")
    return target


def resume_point(ckpt_dir: Path) -> tuple[Path | None, list[str]]:
    """The newest readable checkpoint of a run (by the step it holds: last.ckpt, interrupted.ckpt
    or a step<N>.ckpt; ties go to last.ckpt) and one line per unreadable one, which is moved aside
    (a truncated or garbage file would otherwise fail every resubmission)."""
    notes: list[str] = []
    last = ckpt_dir / "last.ckpt"
    steps = sorted(ckpt_dir.glob("step*.ckpt"),
                   key=lambda p: int(p.stem[4:]) if p.stem[4:].isdigit() else -1, reverse=True)
    best: tuple[int, Path | None] = (-1, None)
    seen: set[Path] = set()
    for path in [last, ckpt_dir / SIGNAL_CKPT, *steps]:
        real = path.resolve() if path.is_symlink() else path
        if not real.is_file():
            if path.is_symlink():
                path.unlink(missing_ok=True)  # a link to nothing: not data
            continue
        if real in seen:
            continue
        seen.add(real)
        step, why = checkpoint_step(real)
        if why is not None:
            notes.append(f"{real}: unreadable checkpoint ({why}); moved aside to {_set_aside(real).name}")
            if path.is_symlink():
                path.unlink(missing_ok=True)
            continue
        if step > best[0]:
            best = (step, path)
    return best[1], notes


def train(cfg: RunConfig, callbacks: list[Callback] = (), logger: Any = None,
          plugins: list[Any] = (), data: TokenData | None = None) -> dict[str, Any]:
    """Train (or resume) one run in this process; returns its summary (also in result.json).
    `data`: another data module of the same interface (periln bench: random tokens).
    On SIGTERM (or submitit's USR2) checkpoints/interrupted.ckpt is saved at the next step boundary,
    result.json says `interrupted`, and Interrupted (a non-zero exit) is raised."""
    cfg = resolve_budget(cfg)
    ended = finished_result(cfg)  # checks the settings against the run directory's first
    if ended is not None:  # nothing to do; re-fitting would rewrite result.json without metrics
        return ended
    # bad input fails before anything is written for the run: data and tokenizer, then the model
    data = TokenData(cfg) if data is None else data
    data.prepare_data()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    # the module's own copy of the run carries the device's vocabulary padding (128 on a GPU), so
    # a checkpoint rebuilds the same shapes anywhere; config.yaml keeps the run as given
    lit = LitLM(fastpath.module_run(cfg), data.tokenizer.vocab_size)
    lit.val_text_size = data.val_text_size  # None: data without text (periln bench's random tokens)
    run_dir = cfg.run_dir
    ckpt_dir = run_dir / "checkpoints"
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))

    last = ckpt_dir / "last.ckpt"
    resume, notes = resume_point(ckpt_dir) if ckpt_dir.is_dir() else (None, [])
    for line in notes:
        print(f"periln: {line}; resuming from {resume.name if resume else 'the start'}", file=sys.stderr)
    # save_last="link": last.ckpt is a symbolic link to the newest step<N>.ckpt, so each checkpoint
    # is written once (save_last=True wrote a second full copy every time)
    checkpoint = ModelCheckpoint(dirpath=ckpt_dir, filename="step{step}", auto_insert_metric_name=False,
                                 every_n_train_steps=cfg.train.ckpt_every, save_top_k=1, save_last="link")
    if logger is None:
        logger = L.pytorch.loggers.CSVLogger(run_dir, name="logs")
    # every run gets the diagnostics (spikes, overflow, divergence) and a save on SIGTERM
    diag = next((c for c in callbacks if isinstance(c, Diagnostics)), None)
    if diag is None and cfg.diagnostics.enabled:
        diag = Diagnostics(cfg.diagnostics)
        callbacks = [*callbacks, diag]
    saver = next((c for c in callbacks if isinstance(c, SaveOnSignal)), None)
    if saver is None:
        saver = SaveOnSignal(ckpt_dir / SIGNAL_CKPT)
        callbacks = [*callbacks, saver]
    trainer = L.Trainer(
        default_root_dir=run_dir, logger=logger,
        callbacks=[checkpoint, LearningRateMonitor("step"),
                   Throughput(tokens_per_step(cfg), cfg.train.log_every),
                   *fastpath.progress_callbacks(cfg.train), *callbacks],
        plugins=list(plugins) or None, **trainer_kwargs(cfg))
    start = time.perf_counter()
    # weights_only: a checkpoint is tensors and plain data (LitLM's hyperparameters are a dict), so
    # loading one never unpickles code
    sha = settings_sha(run_settings(cfg))
    try:
        trainer.fit(lit, datamodule=data, ckpt_path=str(resume) if resume else None, weights_only=True)
    except SystemExit as err:  # Lightning's SIGTERMException, ours, or submitit's exit after USR2
        result = dict(key=cfg.key, status=INTERRUPTED, step=saver.saved_step,
                      checkpoint=str(saver.path) if saver.saved_step is not None else None,
                      config_sha=sha)
        if trainer.global_rank == 0:
            atomic_write_text(run_dir / "result.json", json.dumps(result, indent=1))
        if not isinstance(err, SIGTERMException):
            raise
        raise Interrupted(saver.saved_step) from None
    ended_by = diag.result_fields() if diag is not None else {}
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    # a run whose last step is no multiple of val_every has not measured its final val loss
    # (validate() replaces callback_metrics: the fit's are kept above)
    if trainer.global_step % cfg.train.val_every and ended_by.get("status") != DIVERGED:
        trainer.validate(lit, datamodule=data, verbose=False)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
    # the final state, whatever the checkpoint interval, unless the periodic checkpoint that last.ckpt
    # links to is already this step's (decided from the callback's state, the same on every rank)
    this_step = (ckpt_dir / f"step{trainer.global_step}.ckpt").resolve()  # `filename`'s name for it
    if Path(checkpoint.best_model_path or "").resolve() != this_step:
        save_last(trainer, last)
    if trainer.is_global_zero:  # an earlier attempt's: older than the final state, never resumed
        (ckpt_dir / SIGNAL_CKPT).unlink(missing_ok=True)
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
                  tokens_per_s=metrics.get("train/tokens_per_s"),
                  config_sha=sha)
    if notes:
        result["set_aside"] = notes
    if resume is not None:
        result["resumed_from"] = str(resume)
    result.update(ended_by)  # status "diverged" with diverged_step, spike and overflow counts
    if trainer.global_rank == 0:
        atomic_write_text(run_dir / "result.json", json.dumps(result, indent=1))
    return result
