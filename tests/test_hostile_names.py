"""Names that come from data (classes, folds, groups) are never trusted as paths, metric keys or CSV formulas."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.utils.validation import _validate_metric_name

from audiocnn.experiment import resolve_tracking, job_of
from audiocnn import tracking
from audiocnn.config import validate_config
from audiocnn.data.names import csv_cell, read_csv_cell, slug, slug_map
from audiocnn.errors import InputError
from audiocnn.evaluation.evaluate import evaluate
from audiocnn.experiment import evaluate_job
from audiocnn.experiment import run_repeats
from audiocnn.data.prepare import read_manifest
from tests.conftest import train
from tests.test_sources import source_config, wav

HOSTILE = ["R&B", "=cmd", "/../../../tmp/x", "..", ".", "", "a/b\\c", "CON", "x" * 300, "tab\there", "naïve",
           "日本語", "+1", "@SUM(A1)", "-2", "$5 & $10", "a:b", "  spaced  ", "\u202eevil"]
FAST = ["trainer.max_epochs=1", "model=cnn", "evaluate.explain=false", "evaluate.bootstrap_resamples=10"]


@pytest.mark.parametrize("name", HOSTILE)
def test_a_slug_is_one_safe_path_component_and_a_valid_mlflow_key(name):
    value = slug(name)
    assert value and len(value) <= 64 and value == slug(name)  # deterministic
    assert "/" not in value and "\\" not in value and value not in (".", "..")
    assert not value.startswith((".", "-", "_")) and not value.endswith((".", "-", "_"))
    _validate_metric_name(f"test_f1_{value}")  # MLflow would refuse `test_f1_R&B`
    _validate_metric_name(f"test_accuracy.fold-{value}")


def test_slugs_keep_safe_names_and_disambiguate_collisions_deterministically():
    assert [slug(n) for n in ("george", "1", "fold-3", "R&B", "=cmd", "/../../../tmp/x")] == [
        "george", "1", "fold-3", "R_B", "cmd", "tmp_x"]
    names = slug_map(["R&B", "R_B", "r_b", "jazz"], "class")
    assert names["jazz"] == "jazz" and len({s.casefold() for s in names.values()}) == 4
    assert all(names[n].startswith(slug(n) + "-") for n in ("R&B", "R_B", "r_b"))
    assert slug_map(["jazz", "r_b", "R_B", "R&B"], "class") == names  # independent of order
    with pytest.raises(InputError, match="^class names 'R&B' and 'R_B-.*' both map to 'R_B-.*' in paths and metric keys; rename one of them$"):
        slug_map(["R&B", "R_B", names["R&B"]], "class")  # a name spelled like another's disambiguated slug


def test_figures_draw_dollar_signs_in_class_names_as_text(tmp_path):
    from audiocnn.evaluation.explain import plot_saliency
    from audiocnn.evaluation.plots import plot_confusion_matrix

    names = ["$5 & $10", r"$\frac$", "_hidden"]
    assert plot_confusion_matrix([[1, 0, 0], [0, 1, 0], [0, 0, 1]], names, tmp_path / "cm.png", title=names[0]).exists()
    assert plot_saliency({n: np.ones(4) for n in names}, np.arange(1, 5.0), tmp_path / "s.png").exists()


def test_folds_named_with_any_digits_sort_without_crashing():
    from audiocnn.data.prepare import fold_values

    frame = pd.DataFrame({"fold": ["10", "2", "²", "٣", "a", "", "/../x"]})
    assert fold_values(frame) == ["2", "10", "/../x", "a", "²", "٣"]


@pytest.mark.parametrize("cell", ["=cmd", "+1", "-2", "@SUM(A1)", "\tx", "\rx", "'quoted", "''", "plain", "", "a=b"])
def test_csv_cells_are_escaped_against_formulas_and_read_back_exactly(cell):
    written = csv_cell(cell)
    assert not written.startswith(("=", "+", "-", "@", "\t", "\r"))
    assert read_csv_cell(written) == cell
    assert (written == cell) == (not cell.startswith(("=", "+", "-", "@", "\t", "\r", "'")))


def test_a_fold_named_like_a_path_writes_nothing_outside_the_paths(tmp_path):
    """csv dataset, data.protocol=cv, fold `/../../../<tmp>/x` (and classes `R&B`, `=cmd`): every
    output stays under paths.*, the variant is `fold-<slug>`, repeats.json maps it back."""
    data, out = tmp_path / "data", tmp_path / "out"
    escape = "/" + "../" * 30 + str(tmp_path / "escaped" / "x").lstrip("/")
    rows = []
    for fold in ("1", escape):
        for label in ("R&B", "=cmd"):
            for k in range(4):
                name = f"{label}-{len(rows)}.wav"
                wav(data / "clips" / name, sr=16000)
                rows.append({"path": f"clips/{name}", "label": label, "fold": fold})
    pd.DataFrame(rows).to_csv(data / "list.csv", index=False)
    cfg = source_config(out, "csv", f"data.csv={data / 'list.csv'}", "data.protocol=cv", "data.val_fraction=0.3",
                        *FAST)
    validate_config(cfg)
    resolve_tracking(cfg)
    aggregate = run_repeats(job_of(cfg))

    assert not (tmp_path / "escaped").exists()
    outside = [p for p in tmp_path.rglob("*") if not (p.is_relative_to(out) or p.is_relative_to(data))]
    assert outside == [], outside
    labels = {"fold-1", f"fold-{slug(escape)}"}
    assert set(aggregate["runs"]) == labels and all("/" not in label for label in labels)
    state = json.loads((out / "models" / "repeats.json").read_text())
    assert state["names"]["folds"] == {"1": "1", escape: slug(escape)}
    assert {v["fold"] for v in state["variants"]} == {"1", escape}
    parent = mlflow.MlflowClient(cfg.tracking.uri).get_run(state["parent_run_id"])
    assert f"test_accuracy.fold-{slug(escape)}" in parent.data.metrics
    pooled = pd.read_csv(out / "metrics" / "predictions.csv", dtype=str, keep_default_na=False)
    assert set(pooled["actual"]) <= {"R&B", "'=cmd"} and set(pooled["run"]) == labels


def test_class_names_with_symbols_train_evaluate_and_log_under_slug_keys(tmp_path):
    """folder dataset with classes `R&B`, `=cmd` and `$5 & $10`: MLflow keys are slugs, test.json and
    predictions.csv keep the names (the CSV escaped against formulas), the manifest reads back exactly,
    the figures (explanations included) draw `$` as text."""
    root = tmp_path / "songs"
    classes = {"$5 & $10": "5_10", "=cmd": "cmd", "R&B": "R_B"}
    for label in classes:
        for k in range(8):
            wav(root / label / f"{k}.wav", sr=16000)
    cfg = source_config(tmp_path / "out", "folder", f"data.root={root}", "data.val_fraction=0.25",
                        "data.test_fraction=0.25", *FAST, "evaluate.explain=true")
    validate_config(cfg)
    summary = train(cfg)
    metrics = evaluate(evaluate_job(job_of(cfg)))

    assert set(metrics["per_class_f1"]) == set(classes)
    test = json.loads((Path(cfg.paths.metrics) / "per_class.json").read_text())
    assert set(test["per_class_f1"]) == set(classes)
    worst = json.loads((Path(cfg.paths.metrics) / "test.json").read_text())["worst_class"]["name"]
    assert worst in classes  # the original name, not its slug
    assert (Path(cfg.paths.metrics) / "explain" / "saliency.png").stat().st_size > 0
    logged = mlflow.MlflowClient(cfg.tracking.uri).get_run(summary["run_id"]).data.metrics
    assert {"test_f1_R_B", "test_f1_cmd", "test_f1_5_10", "test_precision_R_B", "test_recall_cmd"} <= set(logged)
    assert not [k for k in logged if set(k) & set("&=$ ")]
    keys = json.loads(Path(mlflow.artifacts.download_artifacts(run_id=summary["run_id"], tracking_uri=cfg.tracking.uri,
                                                               artifact_path="evaluation/metric_keys.json")).read_text())
    assert keys == {"classes": classes}
    report = json.loads((Path(cfg.paths.prepared) / "report.json").read_text())
    assert report["names"]["classes"] == classes

    escaped = {"$5 & $10", "'=cmd", "R&B"}  # a spreadsheet shows =cmd as text, not a formula
    raw = pd.read_csv(Path(cfg.paths.metrics) / "predictions.csv", dtype=str, keep_default_na=False)
    assert set(raw["actual"]) == escaped
    manifest_raw = pd.read_csv(Path(cfg.paths.prepared) / "manifest.csv", dtype=str, keep_default_na=False)
    assert set(manifest_raw["label"]) == escaped
    assert set(read_manifest(cfg.paths.prepared)["label"]) == set(classes)  # the pipeline reads the names back exactly
