"""The claims engine (suite/claims.py) on run records whose truth is constructed by hand.

Every record below is written out so that the right verdict is known before the engine runs: a
block-1 blow-up of Pre-LN at a high LR, a tie within noise, the reverse, one seed, runs that fail to
learn. The numbers in the comments are worked out by hand (t quantiles from printed tables).
"""

from __future__ import annotations

import math

import pytest

from suite import claims as C
from suite.analysis import Analysis
from suite.stats import FAILS, HOLDS, INCONCLUSIVE, UNTESTABLE

L = 16  # layers of the constructed runs (deep enough for every depth precondition)
REAL = "real: ../data/benchmarks"


def record(arm: str, lr: float, seed: int, *, size: str = "mini", n_layers: int = L,
           status: str = "finished", step: int = 1000, maxabs: float = 10.0, median: float = 1.0, var=None,
           grad=None, spikes: float = 0, val_loss: float = 3.0, acc: dict | None = None,
           bench: str = REAL) -> dict:
    """One runs.csv row: the stream's max|x| is `maxabs` in every layer >= 1 (a block-1 blow-up that
    stays), median |x| = `median`; `var` and `grad` are per-layer lists (layers 0..L / blocks 1..L)."""
    placement = arm.split("-")[0]
    row = dict(key=f"{arm}-{size}-lr{lr:g}-s{seed}", sweep="t", arm=arm, placement=placement, size=size,
               lr=lr, seed=seed, status=status, step=step, n_layers=n_layers, val_loss=val_loss,
               train_loss=val_loss, benchmark_data=bench)
    for layer in range(n_layers + 1):
        m = 1.0 if layer == 0 else maxabs
        row[f"diag/maxabs/layer_{layer:02d}"] = m
        row[f"diag/max_over_median/layer_{layer:02d}"] = m / median
        row[f"diag/var/layer_{layer:02d}"] = (var[layer] if var else 1.0 + layer)
    for b in range(1, n_layers + 1):
        row[f"diag/grad_norm/block_{b:02d}"] = grad[b - 1] if grad else 1.0
    row["diag/spikes"] = spikes
    for task, v in (acc or {}).items():
        row[f"eval/{task}/{'acc' if task in ('social_iqa', 'winogrande') else 'acc_norm'}"] = v
    return row


def verdict(rows, claim_id, curves=None):
    res = {r.claim.id: r for r in C.evaluate(Analysis(rows), curves)}[claim_id]
    return res.verdict, res


def test_block1_blow_up_of_pre_ln_at_a_high_lr_holds_for_massive_activations():
    rows = []
    for seed, (pre, peri) in enumerate([(1.0e5, 2.0e2), (1.2e5, 1.9e2)]):
        rows += [record("pre_ln", 2e-2, seed, maxabs=pre), record("peri_ln", 2e-2, seed, maxabs=peri)]
        # at the low LR both arms look alike and nothing is massive: that cell is not provoked
        rows += [record("pre_ln", 1e-3, seed, maxabs=12.0), record("peri_ln", 1e-3, seed, maxabs=12.0)]
    v, res = verdict(rows, "massive_abs")
    assert v == HOLDS
    high = [g for g in res.groups if g.label == "mini LR 0.02"][0]
    # log10(1e5 / 2e2) = 2.699, log10(1.2e5 / 1.9e2) = 2.800: mean 2.750, sd 0.0717, se 0.0507,
    # t(0.975, 1) = 12.706 -> [2.106, 3.394]
    assert high.interval.estimate == pytest.approx(2.7495, abs=1e-3)
    assert high.interval.low == pytest.approx(2.7495 - 12.706 * 0.0507, abs=5e-3)
    low = [g for g in res.groups if g.label == "mini LR 0.001"][0]
    assert low.verdict == UNTESTABLE and "no massive activation" in low.note
    assert verdict(rows, "massive_ratio")[0] == HOLDS


def test_a_tie_within_noise_is_inconclusive():
    rows = []
    for seed, (pre, peri) in enumerate([(1.0e5, 0.9e5), (1.0e5, 1.1e5)]):
        rows += [record("pre_ln", 2e-2, seed, maxabs=pre), record("peri_ln", 2e-2, seed, maxabs=peri)]
    assert verdict(rows, "massive_abs")[0] == INCONCLUSIVE


def test_reversed_records_do_not_hold():
    rows = []
    for seed, (pre, peri) in enumerate([(2.0e2, 1.0e5), (1.9e2, 1.2e5)]):
        rows += [record("pre_ln", 2e-2, seed, maxabs=pre), record("peri_ln", 2e-2, seed, maxabs=peri)]
    assert verdict(rows, "massive_abs")[0] == FAILS


def test_nothing_massive_anywhere_is_not_testable():
    rows = [record(a, 1e-3, s, maxabs=12.0) for a in ("pre_ln", "peri_ln") for s in (0, 1)]
    v, res = verdict(rows, "massive_abs")
    assert v == UNTESTABLE and "no massive activation" in res.reason


def test_fp16_margin_needs_pre_ln_above_65504():
    calm = [record(a, 1e-3, s, maxabs=50.0) for a in ("pre_ln", "peri_ln") for s in (0, 1)]
    v, res = verdict(calm, "fp16_margin")
    assert v == UNTESTABLE and "below 65504" in res.reason  # never vacuously "holds"
    hot = [record("pre_ln", 2e-2, s, maxabs=2e5) for s in (0, 1)]
    hot += [record("peri_ln", 2e-2, 0, maxabs=150.0), record("peri_ln", 2e-2, 1, maxabs=250.0)]
    # margins log10(65504/150) = 2.640, log10(65504/250) = 2.418: mean 2.529, sd 0.157, se 0.111,
    # interval [1.12, 3.94] > 0
    assert verdict(hot, "fp16_margin")[0] == HOLDS


def test_one_seed_makes_spread_claims_not_testable():
    acc = {"arc_easy": 0.5, "hellaswag": 0.4, "piqa": 0.6, "social_iqa": 0.4, "winogrande": 0.5}
    rows = [record("pre_ln", 1e-3, 0, acc=acc), record("peri_ln", 1e-3, 0, acc=acc)]
    for cid in ("std_peri_lt_pre", "std_halved"):
        v, res = verdict(rows, cid)
        assert v == UNTESTABLE, cid
        assert all("needs >= 2" in g.note for g in res.groups)


def test_synthetic_benchmarks_never_give_an_accuracy_verdict():
    acc = {"arc_easy": 0.5, "hellaswag": 0.4, "piqa": 0.6, "social_iqa": 0.4, "winogrande": 0.5}
    rows = [record(a, 1e-3, s, acc=acc, bench="synthetic (suite/synthetic_tasks.py)")
            for a in ("pre_ln", "peri_ln") for s in (0, 1, 2)]
    v, res = verdict(rows, "acc_peri_gt_pre")
    assert v == UNTESTABLE and "synthetic" in res.reason


def test_accuracy_paired_by_seed_each_arm_at_its_chosen_lr():
    def acc(x):
        return {"arc_easy": x, "hellaswag": x, "piqa": x, "social_iqa": x, "winogrande": x}

    rows = []
    for s, (pre, peri) in enumerate([(0.50, 0.53), (0.49, 0.52), (0.51, 0.54)]):
        # chosen LRs: Pre-LN at 1e-3 (its 3e-3 is worse), Peri-LN at 3e-3
        rows += [record("pre_ln", 1e-3, s, val_loss=3.0, acc=acc(pre)),
                 record("pre_ln", 3e-3, s, val_loss=3.5, acc=acc(0.3)),
                 record("peri_ln", 1e-3, s, val_loss=3.2, acc=acc(0.3)),
                 record("peri_ln", 3e-3, s, val_loss=2.9, acc=acc(peri))]
    v, res = verdict(rows, "acc_peri_gt_pre")
    assert v == HOLDS
    g = res.groups[0]
    assert g.interval.estimate == pytest.approx(0.03) and g.interval.n == 3
    assert "LR 0.003 vs 0.001" in g.note


def test_every_pre_ln_run_diverging_is_evidence_not_a_gap():
    rows = [record("pre_ln", 1e-3, s, status="diverged") for s in (0, 1)]
    rows += [record("peri_ln", 1e-3, s, val_loss=3.0) for s in (0, 1)]
    v, res = verdict(rows, "loss_peri_lt_pre")
    assert v == HOLDS and "pre_ln: no usable run" in res.groups[0].note
    assert verdict(rows, "no_divergence")[0] == HOLDS


def test_divergence_counts():
    rows = [record("pre_ln", 2e-2, 0, status="diverged"), record("pre_ln", 2e-2, 1)]
    rows += [record("peri_ln", 2e-2, 0, status="diverged"), record("peri_ln", 2e-2, 1)]
    assert verdict(rows, "no_divergence")[0] == FAILS  # Peri-LN diverged as often
    calm = [record(a, 1e-3, s) for a in ("pre_ln", "peri_ln") for s in (0, 1)]
    v, res = verdict(calm, "no_divergence")
    assert v == UNTESTABLE and "not provoked" in res.reason


def test_shallow_runs_make_depth_claims_not_testable():
    rows = [record(a, 1e-3, s, n_layers=4) for a in ("pre_ln", "peri_ln") for s in (0, 1)]
    v, res = verdict(rows, "var_pre_exponential")
    assert v == UNTESTABLE and "< 8 layers" in res.groups[0].note


def test_exponential_against_linear_variance_profiles():
    expo = [math.exp(0.3 * layer) for layer in range(L + 1)]  # Var grows x1.35 per layer
    lin = [1.0 + 2.0 * layer for layer in range(L + 1)]  # Var(x_l+1) = Var(x_l) + 2
    assert C.exp_preference(record("pre_ln", 1e-3, 0, var=expo)) > 1.0
    assert C.exp_preference(record("peri_ln", 1e-3, 0, var=lin)) < -0.5
    rows = [record("pre_ln", 1e-3, s, var=[v * (1 + 0.01 * s) for v in expo]) for s in (0, 1)]
    rows += [record("peri_ln", 1e-3, s, var=[v + 0.1 * s for v in lin]) for s in (0, 1)]
    assert verdict(rows, "var_pre_exponential")[0] == HOLDS
    assert verdict(rows, "var_peri_linear")[0] == HOLDS


def test_variance_growth_over_training_reads_the_curves():
    rows, curves = [], {}
    for s in (0, 1):
        for arm, end in (("pre_ln", 400.0 * (1 + 0.1 * s)), ("peri_ln", 20.0 * (1 + 0.1 * s))):
            r = record(arm, 6e-3, s, var=[1.0] * L + [end])
            rows.append(r)
            curves[r["key"]] = {f"diag/var/layer_{L:02d}": ([0, 500, 1000], [17.0, end / 2, end])}
    # log10(400/17) - log10(20/17) = log10(20) = 1.301 for both seeds: holds
    v, res = verdict(rows, "var_growth_training", curves)
    assert v == HOLDS and res.groups[0].interval.estimate == pytest.approx(math.log10(20), abs=1e-9)
    assert verdict(rows, "var_growth_training", None)[0] == UNTESTABLE  # no curves: not guessed


def test_vanishing_gradients_are_read_only_on_post_ln_runs_that_learned():
    grad_post = [10 ** (-3 + 3 * b / (L - 1)) for b in range(L)]  # block 1 gets 1e-3 of block L's
    rows = [record("post_ln", 1e-3, s, status="failed_to_learn", grad=grad_post) for s in (0, 1)]
    rows += [record("peri_ln", 1e-3, s) for s in (0, 1)]
    v, res = verdict(rows, "post_vanishing")
    assert v == UNTESTABLE and "learned" in res.reason
    rows = [record("post_ln", 1e-3, s, grad=[g * (1 + 0.1 * s) for g in grad_post]) for s in (0, 1)]
    rows += [record("peri_ln", 1e-3, s) for s in (0, 1)]
    assert verdict(rows, "post_vanishing")[0] == HOLDS


def test_spikes_per_1000_steps_on_matched_pairs():
    rows = [record("pre_ln", 6e-3, s, spikes=n, step=2000) for s, n in ((0, 8), (1, 10))]
    rows += [record("peri_ln", 6e-3, s, spikes=n, step=2000) for s, n in ((0, 0), (1, 1))]
    # per 1000 steps: pre 4, 5; peri 0, 0.5: differences -4, -4.5: mean -4.25, sd 0.354, se 0.25,
    # interval [-7.43, -1.07] < 0
    v, res = verdict(rows, "fewer_spikes")
    assert v == HOLDS and res.groups[0].interval.estimate == pytest.approx(-4.25)
    none = [record(a, 6e-3, s) for a in ("pre_ln", "peri_ln") for s in (0, 1)]
    assert verdict(none, "fewer_spikes")[0] == UNTESTABLE


def test_post_ln_failing_at_depth_but_not_when_shallow():
    rows = [record("post_ln", 1e-3, s, status="failed_to_learn") for s in (0, 1)]
    rows += [record("post_ln-n_layers4", 1e-3, s, n_layers=4) for s in (0, 1)]
    v, res = verdict(rows, "post_fails_deep")
    assert v == HOLDS and "deep 2/2" in res.groups[0].note and "shallow 0/2" in res.groups[0].note


def test_claims_csv_carries_every_number_behind_a_verdict():
    rows = []
    for seed, (pre, peri) in enumerate([(1.0e5, 2.0e2), (1.2e5, 1.9e2)]):
        rows += [record("pre_ln", 2e-2, seed, maxabs=pre), record("peri_ln", 2e-2, seed, maxabs=peri)]
    table = C.csv_rows(C.evaluate(Analysis(rows)))
    by = {(r[0], r[7]): r for r in table}
    overall, group = by[("massive_abs", "overall")], by[("massive_abs", "mini LR 0.02")]
    assert overall[14] == HOLDS and group[14] == HOLDS
    assert group[8] == "2" and float(group[10]) > 0 and "Student-t" in group[6]
    assert {r[0] for r in table} == {c.id for c in C.CLAIMS}


def test_bpb_claim_reads_val_bpb_not_the_loss():
    """Peri-LN lower in bits per byte (1.10, 1.12 vs 1.20, 1.21: differences -0.10, -0.09) while its
    loss in nats per token is higher (another tokenizer's units would do that): each claim reads
    its own column."""
    rows = []
    for seed, (pre, peri) in enumerate([(1.20, 1.10), (1.21, 1.12)]):
        rows.append(record("pre_ln", 1e-3, seed, val_loss=3.0) | {"val_bpb": pre})
        rows.append(record("peri_ln", 1e-3, seed, val_loss=3.2 + 0.01 * seed) | {"val_bpb": peri})
    v, res = verdict(rows, "bpb_peri_lt_pre")
    # mean difference -0.095, sd 0.00707, se 0.005, t(0.975, 1) = 12.706: [-0.159, -0.031] < 0
    assert v == HOLDS and res.groups[0].interval.high == pytest.approx(-0.095 + 12.706 * 0.005, abs=1e-3)
    assert verdict(rows, "loss_peri_lt_pre")[0] == FAILS
    no_bpb = [{k: v for k, v in r.items() if k != "val_bpb"} for r in rows]
    assert verdict(no_bpb, "bpb_peri_lt_pre")[0] == UNTESTABLE
