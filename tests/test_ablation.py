"""The ablation runner: arms as configs, the run cache (reuse, re-run, resume), the outputs."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

import ucdir_lite.ablation as ab
import ucdir_lite.runcache as runcache
import ucdir_lite.train as train_mod
from ucdir_lite.cli import main
from ucdir_lite.config import get_preset

PAIR = ("clipart", "sketch")
# Every run of this module trains on one thread, as each worker of the two-job run does: float
# sums depend on the thread count, so runs are compared bit for bit only at the same count.
THREADS = 1


@pytest.fixture(scope="module")
def first(env):
    """One smoke ablation (1 pair, 1 seed, every arm), trained in this process."""
    return ab.run_ablation([PAIR], [0], preset="smoke", out=env / "out", jobs=1, threads=THREADS,
                           cache_dir=env / "cache", progress=False)


class CountingTrain:
    """A stand-in for ``train`` that counts calls and epochs actually trained."""

    def __init__(self, monkeypatch):
        self.calls = 0
        self.epochs = 0
        real_epoch = train_mod.train_epoch

        def counted_epoch(*args, **kwargs):
            self.epochs += 1
            return real_epoch(*args, **kwargs)

        def counted_train(*args, **kwargs):
            self.calls += 1
            return train_mod.train(*args, **kwargs)

        monkeypatch.setattr(train_mod, "train_epoch", counted_epoch)
        monkeypatch.setattr(runcache, "train", counted_train)


# ------------------------------------------------------------------------------- configs


def test_arms_are_cumulative_overrides_of_the_preset():
    base = get_preset("cpu")
    cfgs = {arm: ab.arm_config(base, arm) for arm in ab.ARMS}
    on = [tuple(w > 0 for w in (c.cw_weight, c.se_weight, c.dd_weight)) for c in cfgs.values()]
    assert on == [(False, False, False), (True, False, False), (True, True, False),
                  (True, True, True), (True, True, True)]
    assert cfgs["Full"].dd_variant == "ot" and cfgs["Full (official DoD)"].dd_variant == "sample"
    for cfg in cfgs.values():  # same budget, data and everything else
        assert (cfg.epochs, cfg.warmup_epochs, cfg.domains, cfg.seed, cfg.lr) == (
            base.epochs, base.warmup_epochs, base.domains, base.seed, base.lr)
    with pytest.raises(ValueError, match="unknown arm"):
        ab.arm_config(base, "DoD")


def test_warmup_config_is_shared_by_every_arm():
    base = get_preset("cpu")
    warm = {ab.warmup_config(ab.arm_config(base, arm)).to_dict() == ab.warmup_config(
        base).to_dict() for arm in ab.ARMS}
    assert warm == {True}
    w = ab.warmup_config(base.replace(se_weight=0.3, num_clusters=12))
    assert w.epochs == base.warmup_epochs and w.to_dict() == ab.warmup_config(base).to_dict()
    assert ab.warmup_config(base.replace(lr=2e-3)).lr == 2e-3  # warm-up fields are kept
    assert ab.warmup_config(base).loss_weights(base.warmup_epochs - 1) == {
        "iw": 1.0, "cw": 0.0, "se": 0.0, "dd": 0.0}


def test_dd_stem_is_shared_by_the_arms_that_add_dd_late():
    base = get_preset("cpu")  # warm-up 40 epochs, L_DD from epoch 50, 60 epochs
    stem = ab.dd_stem(base, "Full")
    assert stem == ab.dd_stem(base, "Full (official DoD)") == ab.dd_stem(base, "CW+SE")
    assert (stem.epochs, stem.cw_weight, stem.se_weight, stem.dd_weight) == (
        50, base.cw_weight, base.se_weight, 0.0)
    assert stem.dd_variant == base.dd_variant
    assert ab.dd_stem(base, "IW") is None and ab.dd_stem(base, "CW") is None  # nobody shares
    assert [c.epochs for c in ab.fork_chain(base, "Full")] == [40, 50, 60]
    assert [c.epochs for c in ab.fork_chain(base, "CW")] == [40, 60]
    assert [c.epochs for c in ab.fork_chain(base, ab.WARMUP)] == [40]
    # no stem where forking would not be exact or would save nothing
    assert ab.dd_stem(base.replace(dd_start=40), "Full") is None  # L_DD starts with the rest
    assert ab.dd_stem(base.replace(cosine=True), "Full") is None  # lr depends on the length


# ------------------------------------------------------------------------------- end to end


def test_smoke_ablation_writes_table_csv_json_and_chart(env, first):
    out = env / "out"
    arms = list(ab.ARMS)
    assert [r["arm"] for r in first["rows"]] == [ab.WARMUP, *arms]
    assert not any(r["reused"] for r in first["rows"])
    for row in first["rows"]:
        assert set(row["metrics"]) == {"A->B", "B->A", "A->A", "B->B"}
        assert set(row["metrics"]["A->B"]) == {"P@5", "P@10", "mAP"}
    table = (out / "table.md").read_text()
    for arm in arms:
        assert f"| {arm} |" in table
    assert "clipart→sketch P@5" in table and "sketch→sketch P@10" in table  # in-domain too
    assert "Gain in P@5 over IW, paired by seed" in table
    with open(out / "rows.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["arm"] for r in rows] == [ab.WARMUP, *arms]
    # rows.csv holds the metrics rounded to 4 decimals: the same value, rounded the same way
    assert float(rows[1]["A->B P@5"]) == round(first["rows"][1]["metrics"]["A->B"]["P@5"], 4)
    record = json.loads((out / "runs" / "clipart-sketch" / "seed0" / "CW+SE.json").read_text())
    assert record["arm"] == "CW+SE" and record["metrics"] == first["rows"][3]["metrics"]
    assert (out / "ablation.png").stat().st_size > 1000
    assert ab.load_results(out)["rows"][2]["metrics"] == first["rows"][2]["metrics"]


def test_table_title_names_the_thread_count(env, first):
    assert first["threads"] == THREADS
    title = (env / "out" / "table.md").read_text().splitlines()[0]
    assert title.endswith(", 1 CPU thread per run")


@pytest.mark.slow
def test_arms_with_late_dd_fork_one_stem_and_match_a_direct_fork(env):
    """Training CW+SE to dd_start once and forking the L_DD arms from it gives the weights of
    forking each from the warm-up: the fork is the same computation (bit for bit, one thread,
    one process)."""
    cache = env / "stem-cache"
    results = ab.run_ablation([PAIR], [0], preset="smoke", out=None, jobs=1, threads=THREADS,
                              cache_dir=cache, progress=False,
                              overrides=dict(epochs=4, warmup_epochs=1, dd_start=2))
    assert [r["arm"] for r in results["rows"]] == [ab.WARMUP, *ab.ARMS]  # the stem is no row
    assert results["timing"]["runs_trained"] == 1 + 1 + len(ab.ARMS)  # warm-up, stem, arms
    rows = {r["arm"]: r for r in results["rows"]}
    stem_key = json.loads((ab.Path(rows["Full"]["run_dir"]) / ab.MARKER).read_text())["parent"]
    for arm in ("CW+SE", "Full", "Full (official DoD)"):
        marker = json.loads((ab.Path(rows[arm]["run_dir"]) / ab.MARKER).read_text())
        assert marker["parent"] == stem_key != rows[ab.WARMUP]["key"]
    for arm in ("IW", "CW"):
        marker = json.loads((ab.Path(rows[arm]["run_dir"]) / ab.MARKER).read_text())
        assert marker["parent"] == rows[ab.WARMUP]["key"]
    base = get_preset("smoke", domains=PAIR, seed=0, threads=THREADS, epochs=4,
                      warmup_epochs=1, dd_start=2)
    warm_ckpt = ab.Path(rows[ab.WARMUP]["run_dir"]) / "checkpoint.pt"
    direct = train_mod.train(ab.arm_config(base, "Full"), env / "direct-full",
                             init_from=warm_ckpt, progress=False)
    via_stem = train_mod.load_checkpoint(
        ab.Path(rows["Full"]["run_dir"]) / "checkpoint.pt")["encoder_k"]
    assert via_stem.keys() == direct.encoder.state_dict().keys()
    for name, value in direct.encoder.state_dict().items():
        assert torch.equal(value, via_stem[name]), name
    assert direct.metrics == rows["Full"]["metrics"]


def test_arms_fork_the_one_warmup(first):
    cfg = get_preset("smoke")
    warm_dir = first["rows"][0]["run_dir"]
    warm_history = json.loads((ab.Path(warm_dir) / "history.json").read_text())
    assert len(warm_history) == cfg.warmup_epochs
    for row in first["rows"][1:]:
        marker = json.loads((ab.Path(row["run_dir"]) / ab.MARKER).read_text())
        assert marker["parent"] == first["rows"][0]["key"]
        history = json.loads((ab.Path(row["run_dir"]) / "history.json").read_text())
        assert len(history) == cfg.epochs
        # the warm-up epochs are inherited, not retrained
        assert history[0]["losses"] == warm_history[0]["losses"]
        assert "inherited_from" in history[0] and "inherited_from" not in history[-1]
    # different losses after warm-up give different encoders
    p5 = {r["arm"]: r["metrics"]["A->B"]["mAP"] for r in first["rows"]}
    assert len(set(p5.values())) > 2


def test_rerun_reuses_every_run_and_gives_the_same_table(env, first, monkeypatch):
    counter = CountingTrain(monkeypatch)
    again = ab.run_ablation([PAIR], [0], preset="smoke", out=env / "out2", jobs=1,
                            threads=THREADS, cache_dir=env / "cache", progress=False)
    assert counter.calls == 0 and counter.epochs == 0
    assert all(r["reused"] for r in again["rows"])
    assert again["timing"]["runs_trained"] == 0
    assert (env / "out2" / "table.md").read_text() == (env / "out" / "table.md").read_text()
    assert (env / "out2" / "rows.csv").read_text() == (env / "out" / "rows.csv").read_text()


def test_train_cached_reuses_a_finished_run_without_training(env, first, monkeypatch):
    counter = CountingTrain(monkeypatch)
    base = get_preset("smoke", domains=PAIR, seed=0, threads=THREADS)  # the key holds it
    result = ab.train_arm(base, "CW", env / "cache", progress=False)
    assert counter.epochs == 0
    assert result.metrics["A->B"] == first["rows"][2]["metrics"]["A->B"]
    assert isinstance(result.encoder, torch.nn.Module)
    # other K: re-evaluated from the checkpoint, not retrained
    result = ab.train_arm(base.replace(ks=(1, 3)), "CW", env / "cache", progress=False)
    assert counter.epochs == 0 and "P@3" in result.metrics["A->B"]


def test_changed_config_reruns_only_what_it_changes(env, first, monkeypatch):
    counter = CountingTrain(monkeypatch)
    res = ab.run_ablation([PAIR], [0], preset="smoke", out=None, jobs=1, threads=THREADS,
                          overrides={"se_weight": 0.5}, cache_dir=env / "cache", progress=False)
    reused = {r["arm"]: r["reused"] for r in res["rows"]}
    # the warm-up, IW and CW never read se_weight: same canonical config, same runs
    assert reused == {ab.WARMUP: True, "IW": True, "CW": True, "CW+SE": False, "Full": False,
                      "Full (official DoD)": False}
    assert counter.epochs == 3 * (get_preset("smoke").epochs - get_preset("smoke").warmup_epochs)


@pytest.mark.slow
def test_interrupted_run_continues_where_it_stopped(env, first, monkeypatch):
    cache = env / "cache-interrupted"
    cfg = get_preset("smoke")
    real_epoch = train_mod.train_epoch

    def failing_epoch(run_cfg, state, *args, **kwargs):
        if run_cfg.cw_weight and not run_cfg.se_weight and state.epoch == cfg.epochs - 1:
            raise KeyboardInterrupt  # the CW arm, after its first epoch past the warm-up
        return real_epoch(run_cfg, state, *args, **kwargs)

    monkeypatch.setattr(train_mod, "train_epoch", failing_epoch)
    with pytest.raises(KeyboardInterrupt):
        ab.run_ablation([PAIR], [0], preset="smoke", out=None, jobs=1, threads=THREADS,
                        cache_dir=cache, progress=False)
    monkeypatch.undo()

    counter = CountingTrain(monkeypatch)
    res = ab.run_ablation([PAIR], [0], preset="smoke", out=None, jobs=1, threads=THREADS,
                          cache_dir=cache, progress=False)
    reused = {r["arm"]: r["reused"] for r in res["rows"]}
    assert reused[ab.WARMUP] and reused["IW"] and not reused["CW"]
    after_warmup = cfg.epochs - cfg.warmup_epochs
    assert after_warmup >= 2  # so that the CW arm had saved an epoch past the warm-up
    assert counter.epochs == 1 + 3 * after_warmup  # CW's last epoch, then the 3 other arms
    # the continued run ends where the uninterrupted one did, bit for bit: the same
    # computation, in this process, on the same thread count (THREADS)
    for got, want in zip(res["rows"], first["rows"], strict=True):
        assert got["key"] == want["key"]
        for direction in ("A->B", "B->A"):
            assert got["metrics"][direction] == want["metrics"][direction], got["arm"]


@pytest.mark.slow
def test_two_worker_processes_give_the_same_results(env, first):
    res = ab.run_ablation([PAIR], [0], preset="smoke", out=None, jobs=2, threads=THREADS,
                          arms=["IW", "CW"], cache_dir=env / "cache-jobs2", progress=False)
    assert res["timing"]["jobs"] == 2 and res["timing"]["runs_trained"] == 3
    # the same computation on the same machine and thread count (THREADS in each worker and
    # in ``first``): bit-identical, although in other processes
    for got, want in zip(res["rows"], first["rows"][:3], strict=True):
        assert got["key"] == want["key"]
        assert got["metrics"]["A->B"] == want["metrics"]["A->B"]


def test_cli_ablate_reuses_the_cache(env, first, capsys, monkeypatch):
    counter = CountingTrain(monkeypatch)
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)  # --jobs 1 runs on this process's count, part of the key
    try:
        code = main(["ablate", "--preset", "smoke", "--pairs", "clipart:sketch", "--seeds", "0",
                     "--jobs", "1", "--out", str(env / "out-cli"), "--cache-dir",
                     str(env / "cache"), "--no-progress"])
    finally:
        torch.set_num_threads(before)
    assert code == 0 and counter.epochs == 0
    text = capsys.readouterr().out
    assert "| Full (official DoD) |" in text and "6 reused" in text
    assert (env / "out-cli" / "table.md").read_text() == (env / "out" / "table.md").read_text()


# ------------------------------------------------------------------------------- outputs


def _fake_results(values):
    """Results of 1 pair, 2 seeds, 2 arms with A->B P@50 from ``values[arm]`` (one per seed)."""
    rows = []
    for arm, per_seed in values.items():
        for seed, v in enumerate(per_seed):
            metrics = {d: {"P@50": v + i, "mAP": 1.0} for i, d in enumerate(ab.DIRECTIONS)}
            rows.append({"pair": "clipart->sketch", "seed": seed, "arm": arm, "metrics": metrics})
    return {"preset": "cpu", "overrides": {}, "pairs": ["clipart->sketch"], "seeds": [0, 1],
            "arms": [a for a in values if a != ab.WARMUP], "rows": rows}


def test_table_shows_mean_and_sample_sd_over_seeds():
    results = _fake_results({ab.WARMUP: [10.0, 10.0], "IW": [40.0, 44.0], "Full": [50.0, 50.0]})
    stats = ab.summarize(results)["clipart->sketch"]
    assert stats["IW"]["A->B P@50"] == pytest.approx((42.0, math.sqrt(8.0)))
    assert stats["IW"]["B->B P@50"][0] == pytest.approx(45.0)
    table = ab.ablation_table(results)
    assert "| IW | 42.0 ± 2.8 | 43.0 ± 2.8 | 44.0 ± 2.8 | 45.0 ± 2.8 |" in table
    assert "| Full | 50.0 ± 0.0 |" in table and ab.WARMUP not in table
    assert ab.WARMUP in ab.ablation_table(results, include_warmup=True)
    one_seed = _fake_results({"IW": [40.0]})
    assert "| IW | 40.0 | 41.0 |" in ab.ablation_table(one_seed)  # no sd from one seed
    gains = ab.gain_table(results)
    # paired gains 10 and 6: mean 8 > 2 se (2 x 2.0), up in both seeds
    assert "| Full | 8.0 ± 2.8 (gain) | 8.0 ± 2.8 (gain) |" in gains and "| IW |" not in gains
    fig = ab.plot_ablation(results)
    assert len(fig.axes) == 1 and len(fig.axes[0].patches) == 2 * len(ab.DIRECTIONS)


def test_bad_arguments_are_clear_errors(env):
    with pytest.raises(ValueError, match="A:B"):
        ab.run_ablation(["clipart-sketch"], [0], preset="smoke", out=None)
    with pytest.raises(ValueError, match="unknown arm"):
        ab.run_ablation([PAIR], [0], preset="smoke", arms=["DD"], out=None)
    with pytest.raises(ValueError, match="seeds="):
        ab.run_ablation([PAIR], [0], preset="smoke", overrides={"seed": 3}, out=None)
    with pytest.raises(ValueError, match="jobs"):
        ab.run_ablation([PAIR], [0], preset="smoke", jobs=0, out=None)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        ab.train_cached(get_preset("smoke"), env / "cache", init_from=env / "nowhere")
    with pytest.raises(FileNotFoundError, match="ablate"):
        ab.load_results(env / "nowhere")


def test_paired_verdict_follows_the_stated_rule():
    assert ab.paired_verdict([1.0, 2.0, 3.0]) == "gain"  # mean 2, se 0.58
    assert ab.paired_verdict([-0.5, -0.4, -0.6]) == "loss"
    assert ab.paired_verdict([3.0, 2.0, -0.1]) == "no measurable effect"  # one seed down
    # up in every seed, but one seed carries the mean: 1.07 < 2 x se (2 x 0.97)
    assert ab.paired_verdict([0.1, 0.1, 3.0]) == "no measurable effect"
    assert ab.paired_verdict([-0.1, -0.1, -3.0]) == "no measurable effect"
    assert ab.paired_verdict([5.0]) == "no measurable effect"  # one seed: no spread
    assert "every seed" in ab.RULE and "twice its standard error" in ab.RULE


def _synthetic_results(values):
    """Results of one pair and three seeds with P@5 per (arm, seed) for every direction."""
    rows = [{"pair": "Big->Box", "seed": seed, "arm": arm,
             "metrics": {d: {"P@5": value} for d in ab.DIRECTIONS}}
            for arm, per_seed in values.items() for seed, value in enumerate(per_seed)]
    return {"pairs": ["Big->Box"], "seeds": [0, 1, 2], "arms": list(values), "rows": rows}


def test_direction_labels_use_the_domain_names_whatever_their_letters():
    # a domain named with a capital A or B: the label maps the sides, it does not replace text
    assert ab.direction_label("A->B", ("Big", "Box")) == "Big→Box"
    assert ab.direction_label("B->A", "Big->Box") == "Box→Big"
    assert ab.direction_label("B->B", ("Art", "Clipart")) == "Clipart→Clipart"
    assert ab.split_pair(ab.pair_name(("Real World", "Art"))) == ("Real World", "Art")
    with pytest.raises(ValueError, match="expected A->B"):
        ab.split_pair("clipart:sketch")


def test_paired_step_and_gain_table_agree():
    results = _synthetic_results({"IW": [10.0, 20.0, 30.0], "CW": [12.0, 23.0, 31.0],
                                  "CW+SE": [12.0, 22.0, 32.0]})
    step = ab.paired_step(results, "Big->Box", "IW", "CW", "A->B")
    assert (step.up, step.down, step.n) == (3, 0, 3)
    assert step.mean == pytest.approx(2.0) and step.sd == pytest.approx(1.0)
    assert step.verdict == ab.paired_verdict([2.0, 3.0, 1.0]) == "gain"
    assert step.cell() == "+2.0 ± 1.0 (3/3 ↑, gain)"
    assert ab.per_seed(results, "Big->Box", "CW", "B->A") == {0: 12.0, 1: 23.0, 2: 31.0}
    table = ab.gain_table(results)
    assert "| Big→Box | Box→Big |" in table
    assert "| CW | 2.0 ± 1.0 (gain) | 2.0 ± 1.0 (gain) |" in table
