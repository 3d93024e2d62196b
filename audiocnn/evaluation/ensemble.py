"""Ensembles: average the class probabilities of several trained models on the test split.

`python pipelines/evaluate.py ensemble='[<run id>,<run id>,...]'` (members may also be
`runs:/` / `models:/` URIs or model folders). Every member must have been trained on
the same classes and feature parameters as the current config. Writes into
`<paths.metrics>/ensemble/` (the single model's DVC outputs are left alone):
`ensemble.json` with the ensemble's and every member's metrics side by
side, and records an MLflow run for the ensemble.
"""

from __future__ import annotations


import mlflow
import torch

from audiocnn import atomic, tracking
from audiocnn.errors import ConfigError
from audiocnn.evaluation.reports import NOT_IN_JSON, log_test_metrics, write_reports
from audiocnn.evaluation.scoring import score_test_split
from audiocnn.evaluation.evaluate import EvaluateJob
from audiocnn.evaluation.settings import EvaluateSettings
from audiocnn.features.settings import FeatureSettings
from audiocnn.features.cqt import FEATURE_KEYS, pick_device
from audiocnn.models.bundle import load_bundle
from audiocnn.training.datamodule import WindowDataModule


def member_probabilities(member: str, data: WindowDataModule, features: FeatureSettings, settings: EvaluateSettings
                         ) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """(description, probabilities (clips, n_classes), labels (clips,)) of one member: at its own
    temperature, under `evaluate.tta` (`evaluation.scoring`)."""
    model, bundle = load_bundle(member)
    if bundle["classes"] != data.classes:
        raise ConfigError(f"ensemble: member {member} was trained on classes {bundle['classes']}, not {data.classes}")
    different = [k for k in FEATURE_KEYS if bundle["features"][k] != getattr(features, k)]
    if different:
        raise ConfigError(f"ensemble: member {member} used other features ({', '.join(different)}); "
                         "set features.* to the members' values")
    scores = score_test_split(model, bundle, data, settings.views, pick_device(features.device))
    return ({"member": member, "model": bundle["model"]["name"], "temperature": scores.temperature},
            scores.probabilities, scores.labels)


def evaluate_ensemble(job: EvaluateJob) -> dict:
    """Mean of the members' (`job.ensemble`) probabilities; returns the ensemble's metrics (members in
    `members`)."""
    tracking.configure(job.tracking)  # members given as run ids are fetched from this tracking store
    data = WindowDataModule(job.store, job.loader)
    if data.multilabel:
        raise ConfigError(f"ensemble: not yet for multi-label data (data={job.data_name}); evaluate each model alone")
    members, stacked, settings = [], [], job.settings
    for member in job.ensemble:
        description, probabilities, labels = member_probabilities(member, data, job.store.features, settings)
        accuracy = float((probabilities.argmax(dim=1) == labels).float().mean())
        members.append({**description, "accuracy": round(accuracy, 4)})
        stacked.append(probabilities)
    out = job.metrics / "ensemble"
    metrics, files = write_reports(torch.stack(stacked).mean(dim=0), labels, data, out,
                                   f"ensemble of {len(members)} on {job.data_name}", settings)
    report = {"ensemble": {k: v for k, v in metrics.items() if k not in NOT_IN_JSON}, "members": members}
    atomic.write_json(out / "ensemble.json", report)
    with tracking.open_run(job.tracking, run_name=f"ensemble{len(members)}-{job.data_name}",
                           tags=tracking.run_tags(job.data_name, "ensemble", job.store.prepared)):
        mlflow.log_params({f"member_{i}": m["member"] for i, m in enumerate(members)})
        mlflow.log_metrics({f"member_{i}_test_accuracy": m["accuracy"] for i, m in enumerate(members)})
        log_test_metrics(metrics, [*files, out / "ensemble.json"])
    width = max(len(m["member"]) for m in members)
    for m in members:
        print(f"  {m['member']:<{width}}  {m['model']:<10} test accuracy {m['accuracy']:.4f}")
    print(f"  {'ensemble (mean probability)':<{width + 11}} test accuracy {metrics['accuracy']:.4f}")
    return metrics
