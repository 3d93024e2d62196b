"""The evaluate stage: trained model + test split -> metrics/, plots, MLflow.

Writes `<paths.metrics>/test.json` (DVC metrics: accuracy and its bootstrap 95% CI,
balanced accuracy, macro-F1, top-k, per-class precision/recall/F1, ECE; the model's
`temperature` and `ece_uncalibrated`, the ECE at T = 1; `tta`, the test-time views),
`predictions.csv` (one row per test clip; also the DVC confusion plot's data),
`confusion_matrix.png`, `reliability_diagram.png`, `curves/precision_recall.{json,png}` and, with
`evaluate.explain`, `explain/{gradcam,saliency,filters}.png` (the `explain/` folder is made
either way: DVC expects it); adds the test metrics and files to the training run in MLflow.
A multi-label model (`task: multilabel` in model.pt) gets `reports.write_multilabel_reports`'
files under the same names: mAP, micro AP, lwlrap, ECE and F1 at the thresholds stored in model.pt
(0.5 for a model without them) in test.json, per class in `per_class.json`.
An events model (`task: events`, docs/events.md) gets the same multi-label reports of its clips (the
probabilities of its event pooling: `model.classify` of a CRNN with `clip_output: event_pool`, through the
same `WindowScorer`) with `task: events`, plus the event metrics of its frame outputs on the strong
test clips (`evaluation.event_report`: event- and segment-based F1, PSDS1/2, frame F1) and
`events/{test_events.tsv,timeline.png}` (the decoded test events; true against detected events of a few
clips); no explanations yet (Grad-CAM explains the clip head, not the event pooling). Another task's
`events/test_events.tsv` holds the header only (DVC declares the folder and keeps no empty one).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import mlflow

from audiocnn import tracking
from audiocnn.data.task import EVENTS, is_multilabel
from audiocnn.errors import InputError, MissingInputError
from audiocnn.evaluation.explain import explain_model
from audiocnn.data.events import write_strong
from audiocnn.evaluation.event_report import EVENTS_DIR, EVENTS_TSV, LOGGED_EVENT_METRICS, score_events
from audiocnn.features.settings import StoreSettings
from audiocnn.features.cqt import pick_device
from audiocnn.evaluation.reports import (log_multilabel_test_metrics, log_test_metrics, write_multilabel_reports,
                                         write_reports)
from audiocnn.evaluation.scoring import score_test_split
from audiocnn.evaluation.settings import EvaluateSettings
from audiocnn.models.bundle import load_bundle
from audiocnn.models.scorer import WindowScorer
from audiocnn.training.datamodule import LoaderSettings, WindowDataModule


@dataclass(frozen=True)
class EvaluateJob:
    """The evaluate stage's inputs, read once from the config (`audiocnn.experiment.evaluate_job`):
    `models` (`paths.models`: model.pt, run.json), `metrics` (`paths.metrics`), the test clips' feature
    store and loaders, the `evaluate` group, the MLflow store, the model's and data's names (titles,
    the ensemble's run) and `ensemble`, the members (`evaluate_ensemble`; empty for one model)."""
    models: Path
    metrics: Path
    store: StoreSettings
    loader: LoaderSettings
    settings: EvaluateSettings
    tracking: tracking.Store
    model_name: str
    data_name: str
    ensemble: tuple[str, ...] = ()

    @property
    def title(self) -> str:
        return f"{self.model_name} on {self.data_name}"


def evaluate(job: EvaluateJob) -> dict:
    """Score the model in `paths.models` on the test split (`evaluate_ensemble` scores several)."""
    if not (job.models / "model.pt").exists():
        raise MissingInputError(f"paths.models={job.models}: no model.pt; run the train stage first "
                                "(`dvc repro train` or `audiocnn train`)")
    model, bundle = load_bundle(job.models)
    data = WindowDataModule(job.store, job.loader,
                            time_stride=(bundle.get("events") or {}).get("time_stride"))  # events: its frames
    if bundle["classes"] != data.classes:
        raise InputError(f"the model in {job.models} was trained on other classes; rerun the train stage")
    settings, device = job.settings, pick_device(job.store.features.device)
    scores = score_test_split(model, bundle, data, settings.views, device)
    out = job.metrics
    events = bundle.get("task") == EVENTS
    if events:  # frame, event and segment F1 and PSDS on the strong test clips, beside the clips' reports
        extra, event_files = score_events(model, bundle, data, out / EVENTS_DIR, device, job.title)
    else:  # DVC declares the folder for every task, and keeps no empty folder: a TSV of no events
        write_strong(out / EVENTS_DIR / EVENTS_TSV, [])
    if is_multilabel(bundle.get("task")):
        metrics, files = write_multilabel_reports(
            scores.probabilities, scores.labels, data, out, job.title,
            bundle.get("thresholds") or [0.5] * len(data.classes),
            extra={"tta": scores.views.describe(), **(extra if events else {})},
            n_bins=settings.calibration_bins)
    else:
        metrics, files = write_reports(scores.probabilities, scores.labels, data, out, job.title, settings,
                                       uncalibrated=scores.uncalibrated,
                                       extra={"temperature": round(scores.temperature, 6),
                                              "tta": scores.views.describe()})
    (out / "explain").mkdir(parents=True, exist_ok=True)
    if events:
        files += event_files
    if settings.explain and bundle["features"].get("on_the_fly"):
        print("evaluate: no explanations for a model trained on the fly (they need stored CQT windows)")
    elif settings.explain:
        files += explain_model(WindowScorer.for_bundle(model, bundle), data, bundle["features"], out / "explain",
                               settings.explain_clips_per_class)
    run = json.loads((job.models / "run.json").read_text())
    with tracking.open_run(job.tracking, run_id=run["run_id"]):
        (log_multilabel_test_metrics if is_multilabel(bundle.get("task")) else log_test_metrics)(metrics, files)
        if events:
            mlflow.log_metrics({f"test_{k}": metrics[k] for k in LOGGED_EVENT_METRICS if metrics[k] is not None})
    print(describe_test(metrics, scores, out / "test.json"))
    return metrics


def describe_test(metrics: dict, scores, path: Path) -> str:
    """The evaluate stage's one-line summary of `metrics` (either task)."""
    if is_multilabel(metrics.get("task")):
        ap = "n/a" if metrics["map"] is None else f"{metrics['map']:.4f}"
        frames = ""
        if metrics.get("task") == EVENTS:
            shown = {k: "n/a" if metrics[k] is None else f"{metrics[k]:.4f}"
                     for k in ("event_macro_f1", "segment_macro_f1", "psds1", "psds2", "frame_macro_f1")}
            frames = (f"; on {metrics['n_strong_clips']} strong clips: event F1 {shown['event_macro_f1']}, segment F1 "
                      f"{shown['segment_macro_f1']} (macro), PSDS1 {shown['psds1']}, PSDS2 {shown['psds2']}, "
                      f"frame F1 {shown['frame_macro_f1']}")
        return (f"evaluate: test mAP {ap} (macro), micro AP {metrics['micro_ap']:.4f}, lwlrap {metrics['lwlrap']:.4f}, "
                f"F1 {metrics['macro_f1']:.4f} macro / {metrics['micro_f1']:.4f} micro at the per-class thresholds, "
                f"ECE {metrics['ece']:.3f} over (clip, class) pairs on {metrics['n_clips']} clips{frames} -> {path}")
    ci = metrics["accuracy_ci95"]
    return (f"evaluate: test accuracy {metrics['accuracy']:.4f} (95% CI {ci['low']:.3f}-{ci['high']:.3f}), "
            f"balanced {metrics['balanced_accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f}, ECE {metrics['ece']:.3f} "
            f"(T={scores.temperature:.3f}; {metrics['ece_uncalibrated']:.3f} at T=1; tta {scores.views.describe()}) "
            f"on {metrics['n_clips']} clips -> {path}")

