"""Multi-label training and evaluation: the loss and the vote on known cases, mAP and lwlrap against
scikit-learn, thresholds fitted on validation and stored in model.pt, and the whole train +
evaluate path on a tiny demo_mix (real WAVs, the real prepare / featurize / train / evaluate)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, label_ranking_average_precision_score, precision_recall_curve

from audiocnn.errors import BundleError, ConfigError, InputError
from audiocnn.experiment import job_of
from audiocnn.settings import read_settings
from audiocnn.evaluation.metrics import label_weighted_lrap, multilabel_metrics
from audiocnn.features import sliding
from audiocnn.models.bundle import load_bundle, save_bundle
from audiocnn.models.scorer import WindowScorer
from audiocnn.training.augment import SpectrogramAugment
from audiocnn.training.module import Classifier
from audiocnn.training.optim import class_weights
from audiocnn.training.thresholds import DEFAULT_THRESHOLD, best_f1_thresholds
from audiocnn.training.optim import optimizer_settings
from tests.conftest import untrained_bundle
from tests.test_multilabel_data import config

# A fixed example: 8 clips, 3 classes, every class with a positive clip.
PROBABILITIES = torch.tensor([[0.3, 0.5, 0.4], [0.8, 0.1, 0.2], [0.3, 0.6, 0.9], [0.2, 0.2, 0.1],
                              [0.6, 0.9, 0.3], [0.1, 0.4, 0.8], [0.7, 0.8, 0.6], [0.4, 0.8, 0.05]])
TARGETS = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 1, 1], [0, 0, 0], [1, 1, 0], [0, 0, 1], [1, 0, 1], [0, 1, 0]])


def lwlrap_by_hand(targets: np.ndarray, scores: np.ndarray) -> float:
    """lwlrap as DCASE 2019 task 2 defines it: for every (clip, true label) pair, the fraction of the
    labels ranked at or above it that are true; the mean over all pairs."""
    precisions = []
    for truth, score in zip(targets, scores):
        for label in np.flatnonzero(truth):
            above = score >= score[label]
            precisions.append(truth[above].sum() / above.sum())
    return float(np.mean(precisions))


def test_map_micro_ap_and_lwlrap_match_scikit_learn_and_the_definition():
    metrics = multilabel_metrics(PROBABILITIES, TARGETS, ["a", "b", "c"], [0.5, 0.5, 0.5])
    assert metrics["map"] == pytest.approx(average_precision_score(TARGETS.numpy(), PROBABILITIES.numpy(),
                                                                   average="macro"), abs=1e-4)
    assert metrics["micro_ap"] == pytest.approx(average_precision_score(TARGETS.numpy(), PROBABILITIES.numpy(),
                                                                        average="micro"), abs=1e-4)
    per_class = average_precision_score(TARGETS.numpy(), PROBABILITIES.numpy(), average=None)
    assert [metrics["per_class_ap"][c] for c in "abc"] == pytest.approx(per_class, abs=1e-4)
    assert metrics["lwlrap"] == pytest.approx(lwlrap_by_hand(TARGETS.numpy(), PROBABILITIES.numpy()), abs=1e-4)
    # each (clip, label) pair weighs the same, not each clip (scikit-learn's plain LRAP)
    plain = label_ranking_average_precision_score(TARGETS.numpy(), PROBABILITIES.numpy())
    assert abs(label_weighted_lrap(PROBABILITIES, TARGETS) - plain) > 0.005


def test_a_class_without_positive_clips_has_no_ap_and_stays_out_of_the_mean():
    targets = TARGETS.clone()
    targets[:, 2] = 0
    metrics = multilabel_metrics(PROBABILITIES, targets, ["a", "b", "c"], [0.5, 0.5, 0.5])
    assert metrics["per_class_ap"]["c"] is None and metrics["classes_without_positives"] == 1
    both = average_precision_score(targets[:, :2].numpy(), PROBABILITIES[:, :2].numpy(), average="macro")
    assert metrics["map"] == pytest.approx(both, abs=1e-4)


def test_f1_uses_each_class_threshold():
    low = multilabel_metrics(PROBABILITIES, TARGETS, ["a", "b", "c"], [0.05, 0.05, 0.05])
    fitted = multilabel_metrics(PROBABILITIES, TARGETS, ["a", "b", "c"], best_f1_thresholds(PROBABILITIES, TARGETS))
    assert fitted["macro_f1"] > low["macro_f1"]
    assert fitted["per_class_threshold"]["a"] == pytest.approx(0.6)


def test_thresholds_are_each_class_best_f1_as_scikit_learn_finds_it():
    generator = torch.Generator().manual_seed(0)
    probabilities = torch.rand(60, 4, generator=generator)
    targets = (torch.rand(60, 4, generator=generator) < 0.4).int()
    targets[:, 3] = 0
    thresholds = best_f1_thresholds(probabilities, targets)
    for k in range(3):
        precision, recall, cutoffs = precision_recall_curve(targets[:, k].numpy(), probabilities[:, k].numpy())
        f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
        assert thresholds[k] == pytest.approx(float(cutoffs[np.argmax(f1[:-1])]), abs=1e-6)
    assert thresholds[3] == DEFAULT_THRESHOLD


def test_the_loss_is_binary_cross_entropy_per_class_and_label_smoothing_moves_targets_to_a_half():
    model = torch.nn.Linear(4, 3)
    logits = torch.tensor([[2.0, -1.0, 0.5]])
    targets = torch.tensor([[1.0, 0.0, 1.0]])
    plain = Classifier(model, optimizer_settings({"_target_": "torch.optim.AdamW", "name": "adamw", "lr": 1e-3}), 3, multilabel=True)
    expected = -(targets * logits.sigmoid().log() + (1 - targets) * (1 - logits.sigmoid()).log()).mean()
    assert float(plain.loss(logits, targets)) == pytest.approx(float(expected), abs=1e-6)
    weights = class_weights(np.array([[1, 0, 1], [1, 0, 0], [1, 1, 0], [1, 0, 0]], dtype=np.float32), 3, "balanced")
    assert weights.tolist() == pytest.approx([0.0, 3.0, 3.0])  # negatives / positives per class
    assert class_weights(np.zeros((4, 2), np.float32), 2, "balanced").tolist() == [1.0, 1.0]


def test_mixup_mixes_multi_hot_targets_as_probabilities():
    torch.manual_seed(0)
    augment = SpectrogramAugment({"mixup": {"alpha": 0.4, "p": 1.0}}, n_classes=3, floor=-9.0, bins_per_octave=12)
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    _, targets = augment.train()(torch.zeros(2, 1, 4, 5), labels)
    assert targets.shape == (2, 3) and bool(((targets >= 0) & (targets <= 1)).all())
    lam = float(targets[0, 0])  # clip 0 mixed with clip 1 (or itself): each label's probability is lam / (1 - lam)
    assert targets[0].tolist() == pytest.approx([lam, 1 - lam, lam]) or targets[0].tolist() == pytest.approx([1, 0, 1])


def test_the_vote_of_a_multilabel_scorer_is_the_mean_of_window_sigmoids():
    logits = torch.tensor([[[2.0, -2.0], [0.0, 0.0], [-1.0, 3.0]]])  # (views, windows, classes)
    scorer = WindowScorer(torch.nn.Identity(), multilabel=True)
    clips = sliding.vote(scorer.probabilities(logits), [2, 1])
    sigmoid = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    expected = [[(sigmoid(2) + 0.5) / 2, (sigmoid(-2) + 0.5) / 2], [sigmoid(-1), sigmoid(3)]]
    assert clips.flatten().tolist() == pytest.approx(np.ravel(expected).tolist())
    # the probabilities are each class's own: they need not sum to 1
    assert float(clips[1].sum()) > 1.2


def assert_refused(path: Path, bad: dict, message: str, tmp_path: Path) -> None:
    """`path`'s model.pt with `bad`'s entries written over it is refused by `load_bundle`, matching `message`."""
    torch.save({**torch.load(path, weights_only=True), **bad}, tmp_path / "hostile.pt")
    with pytest.raises(BundleError, match=message):
        load_bundle(tmp_path / "hostile.pt")


def test_bundle_task_and_thresholds_are_checked_as_untrusted_data(tmp_path):
    model, bundle = load_bundle(untrained_bundle(tmp_path / "plain"))
    args = (model, bundle["model"], bundle["features"], bundle["classes"])
    path = save_bundle(*args, tmp_path / "model.pt", task="multilabel", thresholds=[0.2, 0.5, 0.9])
    loaded = load_bundle(path)[1]
    assert loaded["task"] == "multilabel" and loaded["thresholds"] == [0.2, 0.5, 0.9]
    for bad, message in [({"task": "regression"}, r"task='regression': allowed: multiclass, multilabel"),
                         ({"thresholds": [0.5, 0.5]}, r"thresholds: 2; must be a list of 3 numbers"),
                         ({"thresholds": [0.5, 0.5, 1.5]}, r"thresholds\[2\]=1.5: must be a number in \[0, 1\]"),
                         ({"thresholds": [0.5, "x", 0.5]}, r"thresholds\[1\]='x'"),
                         ({"task": "multiclass", "thresholds": [0.5] * 3}, r"only a multi-label model"),
                         ({"thresholds": [0.5] * 10_000}, r"thresholds: 10000; must be a list of 3")]:
        assert_refused(path, bad, message, tmp_path)


@pytest.fixture(scope="module")
def trained_mix(tmp_path_factory):
    """A tiny demo_mix (36 mixtures), trained for 2 epochs with the rare-label sampler and evaluated:
    (cfg, train summary, test metrics)."""
    from audiocnn.experiment import ensure_inputs, evaluate_model, train_model, job_of

    cfg = config(tmp_path_factory.mktemp("mix"), "demo_mix", "data.clips=36", "trainer.max_epochs=2", "model=cnn",
                 "tracking.export_onnx=false", "trainer.sampler=balanced")
    ensure_inputs(read_settings(cfg))
    summary = train_model(job_of(cfg))
    return cfg, summary, evaluate_model(job_of(cfg))


def test_a_multilabel_training_stores_thresholds_fitted_on_validation(trained_mix):
    from audiocnn.experiment import data_module
    from audiocnn.training.thresholds import fit_thresholds

    cfg, summary, _ = trained_mix
    model, bundle = load_bundle(Path(cfg.paths.models) / "model.pt")
    assert bundle["task"] == "multilabel" and len(bundle["thresholds"]) == len(bundle["classes"])
    data = data_module(cfg)
    again, _, targets = fit_thresholds(WindowScorer.for_bundle(model, bundle), data.sliding_dataloader("val"),
                                       torch.device("cpu"))
    assert bundle["thresholds"] == pytest.approx(again, abs=1e-6)
    assert targets.shape == (len(data.rows("val")), len(bundle["classes"]))
    assert summary["task"] == "multilabel" and 0.0 <= summary["best_val_map"] <= 1.0 and "best_val_acc" not in summary


def test_the_balanced_sampler_draws_clips_of_rare_labels_more_often(trained_mix):
    from audiocnn.experiment import data_module
    from audiocnn.training.sampling import BalancedSampler

    cfg, summary, _ = trained_mix
    data = data_module(cfg)
    loader = data.train_dataloader()
    assert isinstance(loader.sampler, BalancedSampler) and summary["run_id"]
    targets = data.labels[data.rows("train")]
    draws = []
    for epoch in range(200):
        loader.sampler.set_epoch(epoch)
        draws += list(loader.sampler)
    shuffled = targets.mean(axis=0)  # each label's share of clips in a shuffled epoch
    drawn = targets[draws].mean(axis=0)
    rare, common = shuffled.argmin(), shuffled.argmax()
    assert drawn[rare] > shuffled[rare] and drawn[rare] / drawn[common] > shuffled[rare] / shuffled[common]


def test_multilabel_evaluation_writes_map_per_class_table_and_label_sets(trained_mix):
    import mlflow
    import pandas as pd

    cfg, summary, metrics = trained_mix
    out = Path(cfg.paths.metrics)
    test = json.loads((out / "test.json").read_text())
    assert test["task"] == "multilabel" and {"map", "micro_ap", "lwlrap", "macro_f1", "micro_f1"} <= set(test)
    assert "accuracy" not in test
    per_class = json.loads((out / "per_class.json").read_text())
    model_thresholds = load_bundle(Path(cfg.paths.models) / "model.pt")[1]["thresholds"]
    assert list(per_class["per_class_threshold"].values()) == pytest.approx(model_thresholds)
    assert set(per_class["per_class_ap"]) == set(json.loads((Path(cfg.paths.prepared) / "classes.json")
                                                             .read_text())["classes"])
    predictions = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    assert list(predictions.columns) == ["path", "actual", "predicted", "top", "confidence"]
    assert (predictions["actual"].str.len() > 0).all()  # every test clip has its label set
    # The same files as a single-label evaluation (DVC declares them): the curves, and the matrix and
    # reliability diagram in their multi-label sense; the ECE over every (clip, class) pair.
    curves = json.loads((out / "curves/precision_recall.json").read_text())
    assert curves["micro"][0].keys() == {"recall", "precision"} and set(curves["per_class"]) <= set(per_class["per_class_ap"])
    for png in ("curves/precision_recall.png", "confusion_matrix.png", "reliability_diagram.png", "explain/gradcam.png",
                "explain/saliency.png"):
        assert (out / png).stat().st_size > 0, png
    assert 0.0 <= test["ece"] <= 1.0
    run = mlflow.MlflowClient(cfg.tracking.uri).get_run(summary["run_id"])
    assert run.data.metrics["test_map"] == pytest.approx(metrics["map"]) and "best_val_map" in run.data.metrics
    assert run.data.metrics["test_ece"] == pytest.approx(test["ece"])


def test_temperature_calibration_on_multilabel_data_is_refused_naming_the_setting(trained_mix):
    from audiocnn.experiment import train_job
    from audiocnn.training.train import train

    cfg, _, _ = trained_mix
    cfg = cfg.copy()
    cfg.trainer.calibrate = "temperature"
    with pytest.raises(ConfigError, match=r"^trainer.calibrate=temperature: not for multi-label data"):
        train(train_job(job_of(cfg)))


def test_repeats_and_ensembles_of_multilabel_models_are_refused_in_one_line_before_work(trained_mix):
    from audiocnn.evaluation.ensemble import evaluate_ensemble
    from audiocnn.experiment import evaluate_job
    from audiocnn.experiment import run_repeats

    cfg, _, _ = trained_mix
    seeds = cfg.copy()
    seeds.trainer.seeds = [0, 1]
    with pytest.raises(ConfigError, match=r"^trainer.seeds=\[0, 1\]: repeats are not yet for multi-label data"):
        run_repeats(job_of(seeds), make_inputs=False)
    assert not (Path(cfg.paths.models) / "repeats.json").exists() and not (Path(cfg.paths.models) / "seed-0").exists()
    ensemble = cfg.copy()
    ensemble.ensemble = [cfg.paths.models, cfg.paths.models]
    with pytest.raises(ConfigError, match=r"^ensemble: not yet for multi-label data"):
        evaluate_ensemble(evaluate_job(job_of(ensemble)))


def test_predict_pyfunc_and_exports_give_the_same_label_sets(trained_mix, tmp_path, capsys):
    """model.pt through the Python API and `audiocnn predict`, the pyfunc, and the ONNX and TorchScript
    exports: the same probabilities (within 1e-4) and the same classes over the stored thresholds."""
    from types import SimpleNamespace

    import pandas as pd

    from audiocnn import load_model
    from audiocnn.cli import main
    from audiocnn.inference.export import export_model
    from audiocnn.inference.pyfunc import AudioClassifier

    cfg, _, _ = trained_mix
    bundle_path = Path(cfg.paths.models) / "model.pt"
    thresholds = load_bundle(bundle_path)[1]["thresholds"]
    manifest = pd.read_csv(Path(cfg.paths.prepared) / "manifest.csv")
    clips = [str(Path(cfg.paths.raw).parent / p) if not Path(p).is_absolute() else p
             for p in manifest.loc[manifest["split"] == "test", "path"]][:4]
    clips = [c if Path(c).exists() else str(Path(cfg.paths.raw) / Path(c).relative_to("raw")) for c in clips]
    eager = load_model(bundle_path).predict(clips, timeline=True)
    for record in eager:
        over = [name for name, p in sorted(record["probabilities"].items(), key=lambda kv: -kv[1])
                if p >= thresholds[list(record["probabilities"]).index(name)]]
        assert [name for name, _ in record["labels"]] == over
        assert all("labels" in window for window in record["timeline"])
    onnx = export_model(bundle_path, "onnx", tmp_path / "model.onnx")
    script = export_model(bundle_path, "torchscript", tmp_path / "model.ts")
    for exported in (load_model(onnx), load_model(script, trust_code=True)):
        assert exported.thresholds == pytest.approx(thresholds)
        for mine, theirs in zip(eager, exported.predict(clips)):
            assert [n for n, _ in theirs["labels"]] == [n for n, _ in mine["labels"]]
            assert list(theirs["probabilities"].values()) == pytest.approx(list(mine["probabilities"].values()),
                                                                           abs=1e-4)
    classifier = AudioClassifier()
    classifier.load_context(SimpleNamespace(artifacts={"model.pt": str(bundle_path)}, model_config={}))
    served = classifier.predict(None, [{"audio_base64": __import__("base64").b64encode(Path(c).read_bytes()).decode()}
                                       for c in clips])
    assert [answer["labels"] for answer in served] == [[n for n, _ in r["labels"]] for r in eager]
    assert main(["predict", *clips, "--model", str(bundle_path), "--output", str(tmp_path / "preds.csv")]) == 0
    written = pd.read_csv(tmp_path / "preds.csv", keep_default_na=False)
    assert written["labels"].tolist() == [";".join(n for n, _ in r["labels"]) for r in eager]
