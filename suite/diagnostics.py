"""Diagnostics behind the paper's claims: a Lightning callback that every run gets by default.

Configured by `RunConfig.diagnostics` (`DiagnosticsConfig` in suite/config.py). The definitions are
OURS (the paper does not state its own; docs/paper.md section 3):

At step 0 (before the first update: the model at initialization) and every `every` (K) steps,
after the optimizer step, a probe on a FIXED batch (the first
`probe_batch` sequences of the first training batch, kept in the callback's checkpointed state):
one forward (in the run's precision) and one backward of the next-token loss, which touches
neither the parameters' `.grad` nor any random state, so resumed runs stay bit-identical.

    diag/var/layer_{l:02d}            variance of the residual stream after block l over all
                                      B x T x d elements (l = 00 is the embedding output, after any
                                      embedding norm; the stream before the final norm)
    diag/maxabs/layer_{l:02d}         max |x| of that stream
    diag/max_over_median/layer_{l:02d} max |x| / median |x| (massive activations: Sun et al. 2024
                                      call a value massive at ~1000x the median and above 100)
    diag/grad_norm/block_{l:02d}      L2 norm of the probe loss's gradient over block l's
                                      parameters (l = 01..L)
    diag/out_norm_gain_mean, diag/out_norm_gain_max
                                      mean and max of the gains of every output norm (what
                                      each block's output_norms() lists: Peri-LN, Gemma, OLMo 2; the
                                      norm's `gain` when it defines one, e.g. Gemma's 1 + w, else
                                      its `weight`); absent for placements without output norms
    diag/probe_loss                   the probe batch's loss

Every step (read on the host every `check_every` steps, logged with each probe and at the end):

    train/grad_norm                   the global gradient norm BEFORE clipping, logged by LitLM
                                      (suite/train.py); the callback reuses the same value
    diag/spikes                       cumulative count of gradient spikes: steps whose pre-clip
                                      global norm exceeds `spike_ratio` (r) x the median of the
                                      previous `spike_window` steps' finite norms and
                                      `spike_floor` (an absolute norm: near-zero early gradients,
                                      as behind ReZero's zero-init gates, are no spike however
                                      large their ratio); none is counted before the window is full
    diag/sublayer_maxabs              max |F(x)| over every sub-layer's own output (attention and
                                      MLP, before any output norm)
    diag/fp16_overflow                cumulative count of probes whose FORWARD activations (stream
                                      or sub-layer outputs) have a finite value above 65504 (the
                                      FP16 maximum: measured in any precision, so a bf16 or fp32 run
                                      shows whether FP16 would have overflowed), or, under
                                      "16-mixed", a non-finite stream value
    diag/fp16_first_step              the step of the first such probe (absent if none)
    diag/peak_maxabs                  the largest forward activation over every probe of the run
    diag/scaler_skips                 under "16-mixed": steps whose gradient norm is non-finite,
                                      which the GradScaler skips by design (calibration, after each
                                      scale growth); counted apart, never called an overflow
    diag/diverged                     0, or 1 once the run diverged

Divergence: a non-finite loss, or a loss above `diverge_loss` (default 1.2 x ln(vocab): 20% worse
than a uniform guess) for `diverge_patience` (N) consecutive steps. The callback then sets
`trainer.should_stop` (agreed across ranks), records `diverged = {"step", "reason"}`, and
`suite.train.train` writes status "diverged" and `diverged_step` into result.json and returns
normally, so a sweep goes on. The step is the one where the rule fired; the run stops at the next
host read, at most `check_every` steps later.

Cost: per step, a few tiny tensor ops on the device and no host sync; every `check_every` steps
one device-to-host copy of 2 x check_every numbers (on a GPU, one sync per check_every steps);
every K steps the probe (one forward and backward on `probe_batch` sequences, a median per layer)
and one logger call. benchmarks/diagnostics_overhead.py measures the step-time overhead.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from models.loss import linear_cross_entropy
from suite.config import DiagnosticsConfig

FP16_MAX = 65504.0  # largest finite float16
UNIFORM_FACTOR = 1.2  # default divergence threshold: 1.2 x ln(vocab) (ours)


def output_norms(model: nn.Module) -> list[nn.Module]:
    """The output norms of the model's blocks, as each block declares them (models.block)."""
    return [m for block in model.blocks for m in block.output_norms()]


def norm_gain(m: nn.Module) -> torch.Tensor:
    return m.gain if hasattr(m, "gain") else m.weight


@torch.no_grad()
def _stream_stats(hidden: list[torch.Tensor]) -> torch.Tensor:
    """(L + 1, 4): variance, max |x|, median |x|, any non-finite, per stream tensor (float32)."""
    rows = []
    for h in hidden:
        h = h.detach().float()
        a = h.abs()
        rows.append(torch.stack((h.var(unbiased=False), a.max(), a.flatten().median(),
                                 (~torch.isfinite(h)).any().float())))
    return torch.stack(rows)


def probe(model: nn.Module, tokens: torch.Tensor, autocast: Any = None) -> dict[str, float]:
    """The probe metrics (names as in the module docstring) for `tokens` (B, T + 1): inputs are
    tokens[:, :-1], targets tokens[:, 1:]. One host transfer. Keys `_nonfinite/layer_{l:02d}`
    (1.0 when that stream holds a non-finite value) are internal and never logged."""
    import contextlib

    blocks = list(model.blocks)
    params = [[p for p in b.parameters() if p.requires_grad] for b in blocks]
    flat = [p for ps in params for p in ps]
    # the sub-layers' own outputs F(x) (before any output norm): an FP16 overflow can happen there
    # even where the normalized stream stays small (every block has `attn` and `mlp`: models.block)
    sub_max: list[torch.Tensor] = []

    def grab(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        sub_max.append(output.detach().float().abs().amax())

    hooks = [m.register_forward_hook(grab) for b in blocks for m in (b.attn, b.mlp)]
    try:
        with torch.enable_grad(), (autocast or contextlib.nullcontext()):
            h, hidden = model.features(tokens[:, :-1], return_hidden=True)  # (B, T, d), L + 1 x (B, T, d)
            loss = linear_cross_entropy(h.flatten(0, 1), model.lm_head.weight, tokens[:, 1:].flatten(),
                                        model.cfg.vocab_size)
    finally:
        for hook in hooks:
            hook.remove()
    grads = torch.autograd.grad(loss, flat, allow_unused=True)
    stats = _stream_stats(hidden)
    norms, i = [], 0
    for ps in params:
        sq = [g.float().pow(2).sum() for g in grads[i:i + len(ps)] if g is not None]
        norms.append(torch.stack(sq).sum().sqrt() if sq else loss.new_zeros(()))
        i += len(ps)
    gains = [norm_gain(m).detach().float().flatten() for m in output_norms(model)]
    gain = torch.cat(gains) if gains else None
    sub = torch.stack(sub_max).max() if sub_max else loss.new_zeros(())
    extra = [loss.detach().float(), sub.float()] + ([gain.mean(), gain.max()] if gain is not None else [])
    values = torch.cat((stats.flatten(), torch.stack(norms).float(), torch.stack(extra))).tolist()

    out: dict[str, float] = {}
    n = len(hidden)
    for l in range(n):
        var, maxabs, median, nonfinite = values[4 * l: 4 * l + 4]
        out[f"diag/var/layer_{l:02d}"] = var
        out[f"diag/maxabs/layer_{l:02d}"] = maxabs
        out[f"diag/max_over_median/layer_{l:02d}"] = maxabs / median if median > 0 else math.inf
        out[f"_nonfinite/layer_{l:02d}"] = nonfinite
    rest = values[4 * n:]
    for l, g in enumerate(rest[: len(blocks)], start=1):
        out[f"diag/grad_norm/block_{l:02d}"] = g
    rest = rest[len(blocks):]
    out["diag/probe_loss"], out["diag/sublayer_maxabs"] = rest[0], rest[1]
    if gain is not None:
        out["diag/out_norm_gain_mean"], out["diag/out_norm_gain_max"] = rest[2], rest[3]
    return out


def activation_peak(metrics: dict[str, float]) -> float:
    """The largest finite forward activation a probe saw: stream (every layer) and sub-layer outputs."""
    vals = [v for k, v in metrics.items()
            if (k.startswith("diag/maxabs/") or k == "diag/sublayer_maxabs") and math.isfinite(v)]
    return max(vals, default=0.0)


def overflows(metrics: dict[str, float], fp16: bool) -> bool:
    """Whether a probe's forward activations went past the FP16 maximum: a finite stream or sub-layer
    output value above 65504, or, when the run is in FP16 (`fp16`), a non-finite stream value (what
    an overflowed FP16 forward produces). Gradients never count: under fp16 the GradScaler makes
    non-finite gradients on purpose (Diagnostics.scaler_skips)."""
    return activation_peak(metrics) > FP16_MAX or any(
        fp16 and k.startswith("_nonfinite/") and v > 0 for k, v in metrics.items())


class Diagnostics(Callback):
    """See the module docstring. After fit, `diverged` is None or {"step", "reason"};
    `result_fields()` is what train() adds to result.json."""

    def __init__(self, cfg: DiagnosticsConfig | None = None) -> None:
        self.cfg = cfg or DiagnosticsConfig()
        self.spikes = 0
        self.fp16_overflow = 0  # probes whose forward activations passed 65504
        self.fp16_first_step: int | None = None  # the first such probe's step
        self.peak_maxabs = 0.0  # the largest forward activation over every probe
        self.scaler_skips = 0  # fp16 steps with a non-finite gradient norm: the GradScaler skips them
        self.above = 0  # consecutive steps above the loss threshold
        self.history: deque[float] = deque(maxlen=self.cfg.spike_window)
        self.diverged: dict[str, Any] | None = None
        self.probe_tokens: torch.Tensor | None = None
        self.threshold: float | None = self.cfg.diverge_loss
        self.last_probe: dict[str, float] = {}
        self._fp16 = False
        self._pending: list[torch.Tensor] = []  # (2,) loss, grad norm per optimizer step
        self._pending_steps: list[int] = []
        self._loss_sum: torch.Tensor | None = None
        self._micro = 0
        self._step = -1
        self._trainer = None

    # ------------------------------------------------------------------------- the step rules
    def observe(self, step: int, loss: float, grad_norm: float) -> None:
        """Apply the spike, overflow and divergence rules to one optimizer step (host values)."""
        if self.diverged is None:
            if not math.isfinite(loss):
                self.diverged = {"step": step, "reason": f"non-finite loss ({loss})"}
            elif self.threshold is not None and loss > self.threshold:
                self.above += 1
                if self.above >= self.cfg.diverge_patience:
                    self.diverged = {"step": step, "reason": f"loss above {self.threshold:.4g} for "
                                                            f"{self.cfg.diverge_patience} steps"}
            else:
                self.above = 0
        if math.isfinite(grad_norm):
            window = self.history
            if (len(window) == window.maxlen and grad_norm > self.cfg.spike_floor
                    and grad_norm > self.cfg.spike_ratio * statistics.median(window)):
                self.spikes += 1
            window.append(grad_norm)
        elif self._fp16:  # the GradScaler's calibration and post-growth steps: by design, not overflow
            self.scaler_skips += 1

    def _flush(self) -> None:
        if not self._pending:
            return
        values = torch.stack(self._pending).cpu().tolist()  # the one host sync
        for step, (loss, gnorm) in zip(self._pending_steps, values):
            self.observe(step, loss, gnorm)
        self._pending.clear()
        self._pending_steps.clear()

    def _log(self, trainer, metrics: dict[str, float]) -> None:
        metrics = {k: float(v) for k, v in metrics.items() if k.startswith("diag/")}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    def _counters(self) -> dict[str, float]:
        out = {"diag/spikes": self.spikes, "diag/fp16_overflow": self.fp16_overflow,
               "diag/scaler_skips": self.scaler_skips, "diag/peak_maxabs": self.peak_maxabs,
               "diag/diverged": float(self.diverged is not None)}
        if self.fp16_first_step is not None:
            out["diag/fp16_first_step"] = self.fp16_first_step
        return out

    # ---------------------------------------------------------------------------- Lightning hooks
    def setup(self, trainer, pl_module, stage: str) -> None:
        self._trainer = trainer
        self._fp16 = str(trainer.precision).startswith("16")
        if self.threshold is None:
            vocab = getattr(getattr(getattr(pl_module, "model", None), "cfg", None), "vocab_size", None)
            if vocab:
                self.threshold = UNIFORM_FACTOR * math.log(vocab)

    def on_train_start(self, trainer, pl_module) -> None:
        self._step = trainer.global_step
        if self.diverged is not None:  # resumed after a divergence: stay diverged
            trainer.should_stop = True

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        # the probe at initialization (step 0): gradient steadiness at init and growth over training
        # are read against it. It touches no parameter, gradient or random state (see `probe`).
        if self.probe_tokens is None and trainer.global_step == 0:
            self.probe_tokens = batch[: self.cfg.probe_batch].detach().clone()
            self._probe_and_log(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        cfg = self.cfg
        if self.probe_tokens is None:
            self.probe_tokens = batch[: cfg.probe_batch].detach().clone()
        loss = getattr(pl_module, "last_loss", None)
        if loss is None:  # a module without LitLM's stash: Lightning's loss is divided by accumulate
            loss = outputs["loss"].detach() * trainer.accumulate_grad_batches
        self._loss_sum = loss.float() if self._loss_sum is None else self._loss_sum + loss.float()
        self._micro += 1
        step = trainer.global_step
        if step == self._step:  # gradient accumulation: no optimizer step yet
            return
        self._step = step
        gnorm = getattr(pl_module, "last_grad_norm", None)
        gnorm = gnorm.detach().float() if torch.is_tensor(gnorm) else loss.new_full((), math.nan).float()
        self._pending.append(torch.stack((self._loss_sum / self._micro, gnorm.to(loss.device))))
        self._pending_steps.append(step)
        self._loss_sum, self._micro = None, 0

        if step % cfg.check_every == 0:
            self._flush()
            stop = trainer.strategy.reduce_boolean_decision(self.diverged is not None, all=False)
            if stop:
                trainer.should_stop = True
                if self.diverged is None:  # another rank diverged
                    self.diverged = {"step": step, "reason": "diverged on another rank"}
        if trainer.should_stop and self.diverged is not None:
            self._log(trainer, self._counters())  # no probe of a diverged model
        elif step % cfg.every == 0:
            self._probe_and_log(trainer, pl_module)

    def _probe_and_log(self, trainer, pl_module) -> None:
        model = getattr(pl_module, "model", pl_module)
        tokens = self.probe_tokens.to(pl_module.device)
        metrics = probe(model, tokens, trainer.precision_plugin.forward_context())
        self.peak_maxabs = max(self.peak_maxabs, activation_peak(metrics))
        if overflows(metrics, self._fp16):
            self.fp16_overflow += 1
            if self.fp16_first_step is None:
                self.fp16_first_step = trainer.global_step
        self.last_probe = metrics
        self._log(trainer, {**metrics, **self._counters()})

    def on_train_end(self, trainer, pl_module) -> None:
        self._flush()
        self._log(trainer, self._counters())

    # ---------------------------------------------------------------------- checkpointed state
    def state_dict(self) -> dict[str, Any]:
        self._flush()
        return {"spikes": self.spikes, "fp16_overflow": self.fp16_overflow, "above": self.above,
                "fp16_first_step": self.fp16_first_step, "peak_maxabs": self.peak_maxabs,
                "scaler_skips": self.scaler_skips,
                "history": list(self.history), "diverged": self.diverged,
                "probe_tokens": None if self.probe_tokens is None else self.probe_tokens.cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.spikes, self.fp16_overflow = state["spikes"], state["fp16_overflow"]
        # checkpoints written before these counters existed resume with them unset
        self.fp16_first_step = state.get("fp16_first_step")
        self.peak_maxabs, self.scaler_skips = state.get("peak_maxabs", 0.0), state.get("scaler_skips", 0)
        self.above, self.diverged = state["above"], state["diverged"]
        self.history = deque(state["history"], maxlen=self.cfg.spike_window)
        self.probe_tokens = state["probe_tokens"]

    # --------------------------------------------------------------------------------- summary
    def result_fields(self) -> dict[str, Any]:
        """Fields for result.json: status "diverged" with the step when the run diverged."""
        out: dict[str, Any] = {"spikes": self.spikes, "fp16_overflow": self.fp16_overflow,
                               "fp16_first_step": self.fp16_first_step, "peak_maxabs": self.peak_maxabs,
                               "scaler_skips": self.scaler_skips}
        if self.diverged is not None:
            out.update(status="diverged", diverged_step=self.diverged["step"],
                       diverged_reason=self.diverged["reason"])
        return out
