"""The run cache: keys that track what is learned, reuse, and re-evaluation without retraining."""

from __future__ import annotations

import json

import ucdir_lite.evaluation as evaluation
import ucdir_lite.runcache as runcache
import ucdir_lite.train as train_mod
from ucdir_lite.config import get_preset
from ucdir_lite.runs import MARKER

PAIR = ("clipart", "sketch")


def test_code_digest_ignores_docstrings_and_comments():
    src = 'def f(x):\n    """Doc."""\n    return x + 1  # one\n\nclass C:\n    a: int = 1\n'
    same = ('def f(x):\n    """Another doc,\n    on two lines."""\n    # a comment\n'
            '    return x + 1\n\nclass C:\n    """C."""\n    a: int = 1\n    """Doc of a."""\n')
    digest = runcache._code_digest
    assert digest(src) == digest(same)
    assert digest(src) != digest(src.replace("x + 1", "x + 2"))
    assert digest(src) != digest(src.replace("a: int = 1", "a: int = 2"))


def test_run_key_tracks_what_changes_the_result(env):
    cfg = get_preset("smoke", domains=PAIR)
    key = runcache.run_key(cfg)
    assert key == runcache.run_key(get_preset("smoke", domains=PAIR))
    assert runcache.run_key(cfg.replace(ks=(1, 2), device="cpu", log_every=1)) == key
    for change in (dict(seed=1), dict(lr=2e-3), dict(epochs=4), dict(domains=("photo", "sketch"))):
        assert runcache.run_key(cfg.replace(**change)) != key, change
    assert runcache.run_key(cfg.replace(threads=1)) != runcache.run_key(cfg.replace(threads=2))
    assert runcache.run_key(cfg, parent_key="abc") != key
    assert runcache.run_key(cfg, data="glyphs:other") != key
    assert runcache.run_key(cfg, code="0.0.0+x") != key


def test_evaluation_code_is_not_in_the_key():
    assert not set(runcache.EVAL_MODULES) & set(runcache.TRAINING_MODULES)
    assert runcache.eval_version() != runcache.code_version()


def test_a_new_evaluation_version_re_evaluates_instead_of_retraining(env, monkeypatch):
    cfg = get_preset("smoke", domains=PAIR, epochs=1, warmup_epochs=1, threads=1)
    cache = env / "cache-eval"
    first = runcache.train_cached(cfg, cache, progress=False)
    assert runcache.cached_run(cfg, cache) is not None
    epochs, evaluations = [], []
    real_epoch, real_evaluate = train_mod.train_epoch, train_mod.evaluate

    def counted_epoch(*args, **kwargs):
        epochs.append(1)
        return real_epoch(*args, **kwargs)

    def counted_evaluate(*args, **kwargs):
        evaluations.append(1)
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(train_mod, "train_epoch", counted_epoch)
    monkeypatch.setattr(train_mod, "evaluate", counted_evaluate)
    # the same evaluation code: reused as it is, nothing trained or evaluated
    _, summary = runcache.train_cached_summary(cfg, cache, None, progress=False)
    assert summary["reused"] and not summary["reevaluated"] and not epochs and not evaluations
    # an edit of the evaluation code: the run is looked up as stale, then re-evaluated from its
    # checkpoint (not retrained) and recorded with the new version
    monkeypatch.setattr(runcache, "eval_version", lambda: "0.0.0+neweval")
    assert runcache.cached_run(cfg, cache) is None
    result, summary = runcache.train_cached_summary(cfg, cache, None, progress=False)
    assert summary["reused"] and summary["reevaluated"]
    assert not epochs and len(evaluations) == 1
    assert result.metrics == first.metrics  # the same weights, the same evaluation
    marker = json.loads((runcache.Path(summary["run_dir"]) / MARKER).read_text())
    assert marker["eval"] == "0.0.0+neweval" and marker["key"] == summary["key"]
    assert runcache.cached_run(cfg, cache) is not None
    assert evaluation.evaluate is real_evaluate


def test_every_module_the_trainer_runs_is_in_the_key():
    """A module train() imports (directly or through others) is keyed, unless it only
    reports (EVAL_MODULES), draws progress or locks folders, or generates the data (keyed by
    the data's own checksum instead)."""
    import ast
    from pathlib import Path

    import ucdir_lite

    package = Path(ucdir_lite.__file__).parent

    def imports(module: str) -> set[str]:
        tree = ast.parse((package / f"{module}.py").read_text())
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "ucdir_lite":
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                    "ucdir_lite."):
                found.add(node.module.split(".")[1])
        return {m for m in found if (package / f"{m}.py").exists()}

    seen, todo = set(), ["train"]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += imports(module) - set(runcache.EVAL_MODULES)
    exempt = {"_lock", "_progress", "glyphs"}
    assert seen - set(runcache.EVAL_MODULES) - exempt == set(runcache.TRAINING_MODULES)
