"""Runs that fail to learn (suite/outcome.py) and the unigram cross-entropy they are judged by
(suite/data.py), against numbers worked out by hand."""

import json
import math

import pytest

from suite import outcome
from suite.config import DataConfig
from suite.data import build_token_cache, unigram_ce
from suite.tokenizer import load_tokenizer


def test_unigram_cross_entropy_of_a_known_text(tmp_path):
    # document 0 ("zz") is held out; the training tokens of "aab" and "ba" are a a b <eot> b a <eot>:
    # p(a) = 3/7, p(b) = 2/7, p(eot) = 2/7; H = -(3/7 ln 3/7 + 2 x 2/7 ln 2/7)
    (tmp_path / "docs.jsonl").write_text('{"text": "zz"}\n{"text": "aab"}\n{"text": "ba"}\n')
    cfg = DataConfig(source=str(tmp_path / "docs.jsonl"), val_fraction=0.0001, cache_dir=str(tmp_path / "c"))
    cache = build_token_cache(cfg.source, "train", cfg, load_tokenizer("byte"))
    by_hand = -(3 / 7 * math.log(3 / 7) + 2 * (2 / 7) * math.log(2 / 7))
    assert json.loads((cache / "meta.json").read_text())["unigram_ce"] == pytest.approx(by_hand, rel=1e-12)
    # a cache built before the field existed: computed from its shards and recorded
    meta = json.loads((cache / "meta.json").read_text())
    del meta["unigram_ce"]
    (cache / "meta.json").write_text(json.dumps(meta))
    assert unigram_ce(cache) == pytest.approx(by_hand, rel=1e-12)
    assert "unigram_ce" in json.loads((cache / "meta.json").read_text())


def test_failed_to_learn_rule():
    # a run at the unigram loss did not learn; 5% below it is the edge (ours); far below learned
    assert outcome.failed_to_learn(7.46, 7.40, 1000)
    assert outcome.failed_to_learn(0.95 * 7.4, 7.4, 1000)
    assert not outcome.failed_to_learn(0.94 * 7.4, 7.4, 1000)
    assert not outcome.failed_to_learn(3.3, 7.4, 1000)
    assert not outcome.failed_to_learn(None, 7.4, 1000) and not outcome.failed_to_learn(5.0, None, 1000)
    assert not outcome.failed_to_learn(7.46, 7.40, 99)  # too short to judge (ours: 100 steps)


def test_a_run_that_cannot_learn_ends_as_failed_to_learn(tmp_path, one_thread):
    # LR 1e-9: the model stays at its initial uniform guess, ln(257) = 5.55 nats, above the byte
    # corpus' unigram cross-entropy (~3.0): the run is failed_to_learn, not finished
    from suite.config import load_run_config
    from suite.train import train

    over = [f"data.cache_dir={tmp_path / 'cache'}", f"out_dir={tmp_path / 'runs'}",
            "train.progress_bar=false",
            "train.seq_len=16", "train.batch_size=2", "data.synthetic_docs=300", "train.max_steps=100",
            "train.val_every=100", "train.val_batches=1", "lr=1e-9", "diagnostics.every=100",
            "train.ckpt_every=100"]
    result = train(load_run_config(None, over))
    assert result["status"] == "failed_to_learn"
    assert result["val_loss"] == pytest.approx(math.log(257), abs=0.2)
    assert 2.5 < result["unigram_ce"] < 3.5
    learned = train(load_run_config(None, [o for o in over if not o.startswith("lr=")]
                                    + ["lr=3e-3"]))
    assert learned["status"] == "finished" and learned["val_loss"] < 0.95 * learned["unigram_ce"]
