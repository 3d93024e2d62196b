"""Training the events task (docs/events.md): the windows' frame targets for a crop start, the loss on a
known case (strong frames + weak clips), mixup that moves the frame targets with the windows, the refusals
(a CNN, a bad model file), and the whole prepare / featurize / train / evaluate path on a tiny
demo_events (real WAVs and annotations)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf, open_dict

from audiocnn.config import compose_config
from audiocnn.experiment import job_of
from audiocnn.settings import read_settings
from audiocnn.data.events import Event
from audiocnn.data.prepare import read_classes
from audiocnn.errors import ConfigError, InputError
from audiocnn.models.blocks import BlockSpec
from audiocnn.models import build_model
from audiocnn.models.event_pool import capped_time_stride, time_stride
from audiocnn.models.bundle import load_bundle, save_bundle
from audiocnn.training.augment import SpectrogramAugment
from audiocnn.training.events import EventClassifier, check_event_model, event_loss
from audiocnn.training.train import event_transforms
from audiocnn.training.windows import window_frame_targets
from audiocnn.training.optim import optimizer_settings
from tests.test_multilabel_data import config
from tests.test_multilabel_training import assert_refused

HOP = 512 / 16000       # one CQT frame: 32 ms
FRAME = 4 * HOP         # an output frame of the default CRNN (time stride 4): 128 ms
CLASSES = ["bell", "pluck"]
POST = {"thresholds": [0.4, 0.6], "median_frames": [3, 1], "min_duration": 0.1, "min_gap": 0.0}


def test_window_targets_are_the_clips_events_shifted_by_the_crop_start_and_rounded_outwards():
    events = [Event("a.wav", 1.0, 1.5, "bell"), Event("a.wav", 0.0, 0.3, "pluck"), Event("a.wav", 0.2, 0.5, "bell"),
              Event("a.wav", 1.9, 2.5, "pluck")]
    # start 10 frames = 0.32 s: bell 1.0-1.5 s -> 0.68-1.18 s of the window -> frames 5 (0.68 / 0.128 = 5.3) to 9
    # (ceil(9.2) - 1); the pluck 0-0.3 s ended before the window; bell 0.2-0.5 s -> -0.12-0.18 s -> frames 0, 1
    targets = window_frame_targets(events, 10, HOP, 16, FRAME, CLASSES)
    assert targets.shape == (16, 2) and targets.dtype == np.float32
    assert np.flatnonzero(targets[:, 0]).tolist() == [0, 1, 5, 6, 7, 8, 9]
    # pluck 1.9-2.5 s -> 1.58-2.18 s: frames 12 (1.58 / 0.128 = 12.3) to 15, cut at the window's end
    assert np.flatnonzero(targets[:, 1]).tolist() == [12, 13, 14, 15]
    # boundaries: an onset on k·h starts at frame k, an offset on k·h ends at frame k - 1
    on_grid = [Event("a.wav", 2 * FRAME, 3 * FRAME, "bell")]
    assert np.flatnonzero(window_frame_targets(on_grid, 0, HOP, 16, FRAME, CLASSES)[:, 0]).tolist() == [2]
    assert np.flatnonzero(window_frame_targets(on_grid, 4, HOP, 16, FRAME, CLASSES)[:, 0]).tolist() == [1]
    # a start that is not a multiple of the stride: 0.256-0.384 s at start 1 (0.032 s) -> 0.224-0.352 s: frames 1, 2
    assert np.flatnonzero(window_frame_targets(on_grid, 1, HOP, 16, FRAME, CLASSES)[:, 0]).tolist() == [1, 2]
    assert not window_frame_targets(on_grid, 40, HOP, 16, FRAME, CLASSES).any()  # the event is before the window
    assert not window_frame_targets([], 0, HOP, 16, FRAME, CLASSES).any()         # a weak clip: no frame truth


def bce(p: float, y: float) -> float:
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


def test_the_loss_is_frame_bce_over_strong_clips_plus_weighted_clip_bce_over_all():
    frames = torch.tensor([[[0.9], [0.2]], [[0.6], [0.7]]])  # (2 clips, 2 frames, 1 class)
    clips = torch.tensor([[0.8], [0.3]])
    frame_targets = torch.tensor([[[1.0], [0.0]], [[0.0], [0.0]]])
    clip_targets = torch.tensor([[1.0], [1.0]])
    strong = torch.tensor([True, False])
    total, frame, clip = event_loss(frames, clips, frame_targets, clip_targets, strong, frame_weight=0.5)
    expected_frame = (bce(0.9, 1) + bce(0.2, 0)) / 2      # the strong clip's frames only
    expected_clip = (bce(0.8, 1) + bce(0.3, 1)) / 2       # every clip's pooled probability
    assert float(frame) == pytest.approx(expected_frame, rel=1e-5)
    assert float(clip) == pytest.approx(expected_clip, rel=1e-5)
    assert float(total) == pytest.approx(expected_clip + 0.5 * expected_frame, rel=1e-5)
    # the weak clip's frames do not count, whatever the model says there
    changed = frames.clone()
    changed[1] = 0.01
    assert float(event_loss(changed, clips, frame_targets, clip_targets, strong)[1]) == pytest.approx(expected_frame,
                                                                                                      rel=1e-5)
    # no strong clip: no frame term; saturated probabilities stay finite (clamped, not logits)
    _, none, _ = event_loss(frames, clips, frame_targets, clip_targets, torch.tensor([False, False]))
    assert float(none) == 0.0
    saturated = event_loss(torch.tensor([[[1.0], [0.0]]]), torch.tensor([[0.0]]), torch.tensor([[[0.0], [1.0]]]),
                           torch.tensor([[1.0]]), torch.tensor([True]))[0]
    assert math.isfinite(float(saturated))
    with pytest.raises(ValueError, match=r"frame outputs \[2, 2, 1\] and frame targets \[2, 3, 1\] differ"):
        event_loss(frames, clips, torch.zeros(2, 3, 1), clip_targets, strong)


def test_mixup_moves_frame_targets_with_the_windows_and_time_shift_is_off():
    model = build_model(compose_config(["model=crnn_gru"]).model, 2, 84)
    module = EventClassifier(model, optimizer_settings({"_target_": "torch.optim.AdamW", "name": "adamw", "lr": 1e-3}), 2,
                             augment=SpectrogramAugment({"mixup": {"alpha": 0.4, "p": 1.0}}, 2, -9.0, 12))
    module.train()
    torch.manual_seed(0)
    x = torch.randn(4, 1, 84, 16)
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    frames = torch.zeros(4, 4, 2)
    frames[0, 0, 0] = frames[1, 3, 1] = frames[2, 1, 0] = 1.0
    strong = torch.tensor([True, True, False, True])
    torch.manual_seed(1)
    lam, partner = module.augment.draw_mixup(x)
    torch.manual_seed(1)
    mixed_x, mixed_labels, mixed_frames, mixed_strong = module._augment(x, labels, frames, strong)
    for i in range(4):
        j, w = int(partner[i]), float(lam[i])
        torch.testing.assert_close(mixed_x[i], w * x[i] + (1 - w) * x[j])
        torch.testing.assert_close(mixed_labels[i], w * labels[i] + (1 - w) * labels[j])
        torch.testing.assert_close(mixed_frames[i], w * frames[i] + (1 - w) * frames[j])
        assert bool(mixed_strong[i]) == (bool(strong[i]) and (bool(strong[j]) or w == 1.0))
    assert event_transforms({"time_shift": {"p": 0.5}, "freq_mask": {"p": 0.5}}) == {"freq_mask": {"p": 0.5}}


def test_the_event_time_stride_caps_the_blocks_time_pooling_and_refuses_conv_strides_past_it():
    blocks = [{"channels": 8, "pool_size": [2, 2]}, {"channels": 8, "pool": "max", "pool_size": 3, "pool_stride": 2},
              {"channels": 8, "pool": "none"}, {"channels": 8, "pool_size": [2, 1]}]
    assert capped_time_stride(blocks, None) == blocks
    capped = capped_time_stride(blocks, 2)
    assert capped[0] == blocks[0] and capped[2:] == blocks[2:]
    assert capped[1] == {"channels": 8, "pool": "max", "pool_size": [3, 1], "pool_stride": [2, 1]}
    assert time_stride([BlockSpec.from_config(b) for b in capped]) == 2
    assert time_stride([BlockSpec.from_config(b) for b in capped_time_stride(blocks, 1)]) == 1
    assert capped_time_stride(blocks, 8) == blocks  # 2 x 2: under the cap
    with pytest.raises(ValueError, match=r"^model.event_time_stride=2: the blocks' conv strides alone reach 4$"):
        capped_time_stride([{"channels": 8, "stride": [1, 4], "pool": "none"}], 2)


def test_a_model_without_frame_outputs_is_refused_in_one_line():
    cnn = build_model(compose_config(["model=cnn"]).model, 3, 84)
    with pytest.raises(ConfigError, match=r"^model=cnn: the events task needs a CRNN \(model=crnn_gru or "
                                          r"model=crnn_lstm\), a model with frame outputs; this one answers per clip only$"):
        check_event_model(cnn, "cnn")
    check_event_model(build_model(compose_config(["model=crnn_gru"]).model, 3, 84), "crnn_gru")


def test_an_event_crnn_scores_clips_by_its_event_pooling():
    torch.manual_seed(0)
    model = build_model(compose_config(["model=crnn_gru", "+model.clip_output=event_pool"]).model, 3, 84).eval()
    x = torch.randn(2, 1, 84, 32)
    _, clip = model.event_probabilities(x)
    torch.testing.assert_close(model(x).sigmoid(), clip, atol=1e-5, rtol=1e-4)
    # Grad-CAM differentiates these logits: the event pooling's, not the clip head's
    from audiocnn.evaluation.explain import grad_cam

    maps, logits = grad_cam(model, x, torch.tensor([0, 2]))
    torch.testing.assert_close(logits, model(x), atol=1e-5, rtol=1e-4)
    assert maps.shape == (2, 84, 32) and float(maps.amax()) == pytest.approx(1.0)


def test_an_unknown_task_in_classes_json_is_refused_in_one_line(tmp_path):
    (tmp_path / "classes.json").write_text(json.dumps({"task": "regression", "classes": ["a"]}))
    with pytest.raises(InputError, match=r"classes.json: task='regression': allowed: multiclass, multilabel, events; "
                                         r"run the prepare stage again$"):
        read_classes(tmp_path)
    (tmp_path / "classes.json").write_text(json.dumps({"task": "events", "classes": ["a", "b"]}))
    assert read_classes(tmp_path) == (["a", "b"], "events")


def test_an_events_bundle_is_checked_as_untrusted_data(tmp_path):
    cfg = compose_config(["model=crnn_gru", "+model.clip_output=event_pool"])
    torch.manual_seed(0)
    model = build_model(cfg.model, 2, cfg.features.n_bins)
    args = (model, OmegaConf.to_container(cfg.model, resolve=True), OmegaConf.to_container(cfg.features, resolve=True),
            CLASSES)
    events = {"time_stride": 4, "frame_seconds": 0.128}
    events = {**events, "post_processing": POST}
    path = save_bundle(*args, tmp_path / "model.pt", task="events", thresholds=[0.3, 0.6], events=events)
    loaded = load_bundle(path)[1]
    assert loaded["task"] == "events" and loaded["events"] == events and loaded["thresholds"] == [0.3, 0.6]
    plain = OmegaConf.to_container(compose_config(["model=crnn_gru"]).model, resolve=True)
    for bad, message in [({"events": {"time_stride": 0, "frame_seconds": 0.1}}, r"events.time_stride=0: must be an integer"),
                         ({"events": {"time_stride": 4, "frame_seconds": float("nan")}}, r"events.frame_seconds=nan"),
                         ({"events": {"time_stride": 4, "frame_seconds": 0.1, "code": "x"}}, r"events.code: unknown"),
                         ({"events": [4]}, r"events: list; must be a mapping"),
                         ({"events": {**events, "post_processing": {**POST, "thresholds": [0.5]}}},
                          r"events.post_processing.thresholds: must be a list of 2 numbers"),
                         ({"events": {**events, "post_processing": {**POST, "thresholds": [0.5, float("inf")]}}},
                          r"events.post_processing.thresholds\[1\]=inf: must be a number in \[0, 1\]"),
                         ({"events": {**events, "post_processing": {**POST, "median_frames": [2, 1]}}},
                          r"events.post_processing.median_frames\[0\]=2: must be an odd integer"),
                         ({"events": {**events, "post_processing": {**POST, "median_frames": [10**9, 1]}}},
                          r"median_frames\[0\]=1000000000: must be an odd integer in \[1, 1001\]"),
                         ({"events": {**events, "post_processing": {**POST, "min_gap": float("nan")}}},
                          r"events.post_processing.min_gap=nan: must be a finite number"),
                         ({"events": {**events, "post_processing": {**POST, "code": "print(1)"}}},
                          r"events.post_processing.\['code', .*must be a mapping with exactly"),
                         ({"events": {**events, "post_processing": "x" * 10**6}},
                          r"events.post_processing.str: must be a mapping"),
                         ({"task": "multilabel"}, r"events: only an events model has it"),
                         ({"model": plain}, r"task='events': needs a CRNN scoring clips by its event pooling")]:
        assert_refused(path, bad, message, tmp_path)


@pytest.fixture(scope="module")
def trained_events(tmp_path_factory):
    """A tiny demo_events (32 scenes of 4 s, 2-s windows), a CRNN trained on it for 2 epochs and evaluated:
    (cfg, train summary, test metrics)."""
    from audiocnn.experiment import ensure_inputs, evaluate_model, train_model, job_of

    cfg = config(tmp_path_factory.mktemp("events"), "demo_events", "data.clips=32", "data.duration=4.0",
                 "data.max_event_seconds=2.0", "features.window_frames=64", "model=crnn_gru", "model.hidden_size=32",
                 "trainer.max_epochs=2", "tracking.export_onnx=false")
    ensure_inputs(read_settings(cfg))
    summary = train_model(job_of(cfg))
    return cfg, summary, evaluate_model(job_of(cfg))


def test_an_events_training_records_the_task_and_logs_a_finite_frame_loss(trained_events):
    import mlflow

    cfg, summary, _ = trained_events
    assert read_classes(cfg.paths.prepared)[1] == "events"
    model, bundle = load_bundle(Path(cfg.paths.models) / "model.pt")
    assert bundle["task"] == "events" and bundle["model"]["clip_output"] == "event_pool"
    post = bundle["events"].pop("post_processing")  # fitted on the val split's strong clips
    # model.event_time_stride=2 (the default) stops the blocks' time pooling at 2: 64-ms frames at the 32-ms hop
    assert bundle["events"] == {"time_stride": 2, "frame_seconds": pytest.approx(0.064)}
    assert [block.get("pool_size") for block in bundle["model"]["blocks"]] == [[2, 2], [2, 1], [2, 1], None]
    assert len(post["thresholds"]) == len(post["median_frames"]) == len(bundle["classes"])
    assert set(post["median_frames"]) <= {1, 3, 5, 7} and (post["min_duration"], post["min_gap"]) == (0.0, 0.0)
    assert json.loads(client_artifact(summary["run_id"], cfg, "event_decoding.json"))["median_frames"] == \
        post["median_frames"]
    assert len(bundle["thresholds"]) == len(bundle["classes"])
    assert summary["task"] == "events" and 0.0 <= summary["best_val_frame_f1"] <= 1.0 and "best_val_acc" not in summary
    client = mlflow.MlflowClient(cfg.tracking.uri)
    for key in ("train_frame_loss", "val_frame_loss", "train_clip_loss", "val_map", "val_frame_f1"):
        history = [m.value for m in client.get_metric_history(summary["run_id"], key)]
        assert len(history) >= 2 and all(math.isfinite(v) for v in history), key
    frame_losses = [m.value for m in client.get_metric_history(summary["run_id"], "train_frame_loss")]
    assert frame_losses[-1] < frame_losses[0]  # it learns the frames
    run = client.get_run(summary["run_id"])
    assert run.data.metrics["best_val_frame_f1"] == pytest.approx(summary["best_val_frame_f1"])


def test_the_training_windows_carry_frame_targets_of_their_crops(trained_events):
    from audiocnn.experiment import data_module
    cfg, _, _ = trained_events
    data = data_module(cfg, time_stride=4)
    dataset = data.dataset("train", "random")
    state = dataset.rng.bit_generator.state
    items = list(range(min(6, len(dataset))))
    x, labels, frames, strong = dataset.__getitems__(items)
    assert x.shape == (len(items), 1, cfg.features.n_bins, 64) and frames.shape == (len(items), 16, len(data.classes))
    assert labels.shape == (len(items), len(data.classes)) and bool(strong.all())  # demo_events: every clip strong
    dataset.rng.bit_generator.state = state
    starts = dataset.batch_starts(np.asarray(items))
    for row, (item, start) in enumerate(zip(items, starts.tolist())):
        assert np.array_equal(frames[row].numpy(), dataset.window_targets(item, start))
        events = dataset.events[item]
        assert {e.label for e in events} == {data.classes[k] for k in np.flatnonzero(labels[row].numpy())}
    assert frames.sum() > 0


def client_artifact(run_id: str, cfg, name: str) -> str:
    import mlflow

    return Path(mlflow.MlflowClient(cfg.tracking.uri).download_artifacts(run_id, name)).read_text()


def test_events_evaluation_writes_clip_metrics_event_metrics_decoded_events_and_a_timeline(trained_events):
    import mlflow

    from audiocnn.data.events import read_strong

    cfg, summary, metrics = trained_events
    test = json.loads((Path(cfg.paths.metrics) / "test.json").read_text())
    assert test["task"] == "events" and {"map", "micro_ap", "lwlrap", "macro_f1", "ece"} <= set(test)
    for key in ("frame_macro_f1", "frame_micro_f1", "event_macro_f1", "event_micro_f1", "segment_macro_f1",
                "segment_micro_f1", "psds1", "psds2"):
        assert 0.0 <= test[key] <= 1.0, key
        assert metrics[key] == test[key]
    assert test["n_strong_clips"] == test["n_clips"] > 0 and test["n_frames"] >= test["n_clips"] * 31
    assert test["frame_seconds"] == pytest.approx(0.064) and test["post_processing"] == "stored"
    out = Path(cfg.paths.metrics) / "events"
    decoded = read_strong(out / "test_events.tsv")  # a valid strong DCASE TSV of the test clips' events
    assert not decoded.problems and len(decoded.events) == test["n_detected_events"]
    assert (out / "timeline.png").stat().st_size > 10_000
    for name in ("gradcam.png", "saliency.png", "filters.png"):  # Grad-CAM of the event pooling's clip logits
        assert (Path(cfg.paths.metrics) / "explain" / name).stat().st_size > 5_000
    run = mlflow.MlflowClient(cfg.tracking.uri).get_run(summary["run_id"])
    assert run.data.metrics["test_psds1"] == test["psds1"] and "test_event_macro_f1" in run.data.metrics


def test_a_cnn_is_refused_for_event_data_before_any_training(trained_events, tmp_path):
    from audiocnn.experiment import train_job
    from audiocnn.training.train import train

    cfg, _, _ = trained_events
    cnn = cfg.copy()
    with open_dict(cnn):
        cnn.model = compose_config(["model=cnn"]).model
        cnn.paths.models = str(tmp_path / "m")
    with pytest.raises(ConfigError, match=r"^model=cnn: the events task needs a CRNN") as error:
        train(train_job(job_of(cnn)))
    assert "\n" not in str(error.value) and not (tmp_path / "m" / "model.pt").exists()


def test_balanced_class_weights_weigh_each_class_positive_clips_and_frames():
    """negatives / positives per class: over the clips' labels for the clip term, over the strong clips'
    output frames for the frame term; the loss weighs the positive term only."""
    from audiocnn.training.events import binary_cross_entropy, class_pos_weights

    labels = np.array([[1, 0], [1, 1], [0, 0], [1, 0]], dtype=np.float32)  # a: 3 of 4 clips, b: 1 of 4
    events = [[Event("x", 0.0, 1.0, "a")], [Event("y", 0.5, 1.0, "b")]]  # the strong clips: 2 s each, 0.5-s frames
    clip, frame = class_pos_weights(labels, events, np.array([2.0, 2.0]), 0.5, ["a", "b"])
    assert clip.tolist() == pytest.approx([1 / 3, 3.0]) and frame.tolist() == pytest.approx([6 / 2, 7 / 1])
    p, y = torch.tensor([[0.8, 0.3]]), torch.tensor([[1.0, 0.0]])
    weighted = binary_cross_entropy(p, y, torch.tensor([2.0, 5.0]))
    assert weighted[0].tolist() == pytest.approx([-2 * math.log(0.8), -math.log(0.7)], rel=1e-5)
    assert binary_cross_entropy(p, y)[0].tolist() == pytest.approx([-math.log(0.8), -math.log(0.7)], rel=1e-5)


def test_an_events_module_with_balanced_class_weights_carries_both_pos_weights(trained_events):
    from audiocnn.experiment import data_module
    from audiocnn.experiment import train_job
    from audiocnn.training.train import build_module

    cfg, _, _ = trained_events
    weighted = OmegaConf.merge(cfg, {"trainer": {"class_weights": "balanced"}})
    data = data_module(weighted, time_stride=2)
    module = build_module(train_job(job_of(weighted)), load_bundle(Path(cfg.paths.models) / "model.pt")[0], data)
    assert module.clip_pos_weight.shape == module.frame_pos_weight.shape == (len(data.classes),)
    assert bool((module.frame_pos_weight > module.clip_pos_weight).all())  # events are rarer among frames
    assert "frame_pos_weight" not in module.state_dict()  # recomputed, not checkpointed


def test_an_events_model_serves_its_clips_as_multilabel_answers(trained_events):
    from audiocnn import load_model

    cfg, _, _ = trained_events
    bundle_path = Path(cfg.paths.models) / "model.pt"
    thresholds = load_bundle(bundle_path)[1]["thresholds"]
    clips = sorted(Path(cfg.paths.raw).rglob("scene_*.wav"))[:2]
    for record in load_model(bundle_path).predict([str(c) for c in clips]):
        probabilities = list(record["probabilities"].values())
        assert all(0.0 <= p <= 1.0 for p in probabilities)
        over = [n for n, p in sorted(record["probabilities"].items(), key=lambda kv: -kv[1])
                if p >= thresholds[list(record["probabilities"]).index(n)]]
        assert [n for n, _ in record["labels"]] == over


def test_predict_events_gives_the_evaluate_stages_test_events_streamed_or_whole(trained_events, tmp_path):
    """`audiocnn predict --events` on the test clips writes the events the evaluate stage decoded for them
    (same grid, same decoding), and scoring in chunks of a few windows changes nothing."""
    from audiocnn import load_model
    from audiocnn.cli import main as cli
    from audiocnn.data.events import read_strong

    cfg, _, _ = trained_events
    model_path = Path(cfg.paths.models) / "model.pt"
    evaluated = read_strong(Path(cfg.paths.metrics) / "events" / "test_events.tsv").events
    clips = sorted({e.filename for e in evaluated})
    assert clips  # the tiny model finds some events
    output = tmp_path / "events.tsv"
    assert cli(["predict", *clips, "--model", str(model_path), "--events", "--output", str(output)]) == 0
    predicted = read_strong(output).events
    key = lambda events: sorted((e.filename, e.label, round(e.onset, 3), round(e.offset, 3)) for e in events)
    assert key(predicted) == key(evaluated)
    model = load_model(model_path, batch_size=2)
    model.backend.chunk_frames = 40  # chunks of about two windows: events cross the joins
    streamed = [(str(c), d) for c in clips for d in model.stream_events(c)]
    assert key([Event(c, d.onset, d.offset, d.label) for c, d in streamed]) == key(evaluated)
    records = load_model(model_path).events([clips[0], str(tmp_path / "missing.wav")])
    assert records[0]["events"] and all(0 <= e["score"] <= 1 for e in records[0]["events"])
    assert "error" in records[1] and "events" not in records[1]
    jsonl = tmp_path / "events.jsonl"
    assert cli(["predict", clips[0], "--model", str(model_path), "--events", "--output", str(jsonl)]) == 0
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [(r["event_label"], r["onset"]) for r in rows] == [(e["label"], e["onset"]) for e in records[0]["events"]]


def test_predict_events_refusals_are_one_line(trained_events, tmp_path, capsys):
    from audiocnn.cli import main as cli

    cfg, _, _ = trained_events
    model_path = str(Path(cfg.paths.models) / "model.pt")
    clip = str(sorted(Path(cfg.paths.raw).rglob("scene_*.wav"))[0])
    for extra, message in [(["--timeline"], "--timeline: not with --events"),
                           (["--hop-s", "0.5"], "--hop-s: not with --events"),
                           (["--output", str(tmp_path / "e.csv")], "with --events, name a .tsv"),
                           (["--tta-pitch-bins=-1,0"], "not with --events")]:
        assert cli(["predict", clip, "--model", model_path, "--events", *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0]


def test_the_logged_pyfunc_serves_events_and_declares_them(trained_events):
    import base64

    import mlflow

    from audiocnn import load_model
    from audiocnn.inference.pyfunc import EVENTS_OUTPUT_SCHEMA

    from audiocnn.experiment import log_servable_model

    cfg, summary, _ = trained_events
    run = log_servable_model(job_of(cfg), summary)  # what the train stage does after training
    mlflow.set_tracking_uri(cfg.tracking.uri)
    info = mlflow.models.get_model_info(run["model_uri"])
    assert info.signature.outputs == EVENTS_OUTPUT_SCHEMA
    served = mlflow.pyfunc.load_model(run["model_uri"])
    clip = str(sorted(Path(cfg.paths.raw).rglob("scene_*.wav"))[0])
    answer = served.predict({"audio_base64": base64.b64encode(Path(clip).read_bytes()).decode()})[0]
    expected = load_model(Path(cfg.paths.models) / "model.pt").events([clip])[0]["events"]
    assert answer["events"] == expected and "labels" in answer
    with pytest.raises(mlflow.exceptions.MlflowException, match="too short"):  # under one hop: the client's fault
        served.predict({"samples": [0.1] * 10, "sample_rate": 16000})


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_an_exported_events_model_gives_the_same_events_streamed(trained_events, tmp_path, fmt):
    """The export carries the frame outputs (`frame_probabilities`) and the stored decoding: the file's
    events, in chunks of two windows, are model.pt's."""
    from audiocnn import load_model
    from audiocnn.inference.export import export_model

    cfg, _, _ = trained_events
    model_path = Path(cfg.paths.models) / "model.pt"
    exported = export_model(model_path, fmt, tmp_path / f"model.{'onnx' if fmt == 'onnx' else 'ts'}")
    clips = [str(c) for c in sorted(Path(cfg.paths.raw).rglob("scene_*.wav"))[:6]]
    eager = load_model(model_path).events(clips)
    model = load_model(exported, trust_code=True)
    model.backend.features["chunk_seconds"] = 0.5  # chunks of a few windows: events cross the joins
    assert model.backend.post_processing == load_model(model_path).backend.post_processing
    got = model.events(clips)
    assert [[(e["label"], e["onset"], e["offset"]) for e in r["events"]] for r in got] == \
        [[(e["label"], e["onset"], e["offset"]) for e in r["events"]] for r in eager]
    assert [e["score"] for r in got for e in r["events"]] == pytest.approx(
        [e["score"] for r in eager for e in r["events"]], abs=1e-4)


def test_the_events_graph_runs_the_crnn_once_for_the_clip_and_frame_outputs(trained_events):
    """The exported events graph answers both outputs from one pass of the CRNN; its clip probabilities
    are the scorer's (`classify` through the event pooling)."""
    from audiocnn.inference.predictor import Predictor

    cfg, _, _ = trained_events
    graph = Predictor.load(Path(cfg.paths.models) / "model.pt").graph()
    calls = []
    hook = graph.scorer.model.rnn.register_forward_hook(lambda *_: calls.append(1))
    waveform = torch.from_numpy(np.random.default_rng(0).uniform(-0.3, 0.3, (2, 3 * 16000)).astype(np.float32))
    starts = torch.tensor([0, 32, 64])
    with torch.inference_mode():
        clips, frames = graph(waveform, starts)
        assert len(calls) == 1
        hook.remove()
        expected = graph.score(graph.windows(graph.chunk_frames(waveform), starts)).reshape(clips.shape)
    assert clips.shape == (2, 3, 6) and frames.shape == (2, 3, 64 // 2, 6)
    assert torch.allclose(clips, expected, atol=1e-6)


def test_an_events_model_trained_on_the_fly_is_fitted_evaluated_and_predicted_on_its_own_front_end(tmp_path):
    """`features.on_the_fly=true`: waveform windows carry frame targets, and the decoding fit, the evaluate
    stage and `predict --events` all score frames of the model's own front-end: predict's events of the
    test clips are the evaluate stage's."""
    from audiocnn.cli import main as cli
    from audiocnn.data.events import read_strong
    from audiocnn.experiment import ensure_inputs, evaluate_model, train_model
    from audiocnn.experiment import data_module
    cfg = config(tmp_path, "demo_events", "data.clips=32", "data.duration=4.0", "data.max_event_seconds=2.0",
                 "features.window_frames=64", "features.on_the_fly=true", "model=crnn_gru", "model.hidden_size=32",
                 "trainer.max_epochs=2", "tracking.export_onnx=false")
    ensure_inputs(read_settings(cfg))
    data = data_module(cfg, time_stride=2)
    x, labels, frames, strong = data.dataset("train", "random").__getitems__([0, 1, 2])
    assert x.shape == (3, 63 * cfg.features.hop_length) and frames.shape == (3, 32, 6) and bool(strong.all())
    assert frames.sum() > 0 and bool((frames.amax(dim=1) <= labels).all())  # only classes of its clip's events
    summary = train_model(job_of(cfg))
    assert summary["events"]["time_stride"] == 2 and len(summary["events"]["post_processing"]["thresholds"]) == 6
    metrics = evaluate_model(job_of(cfg))
    assert metrics["n_strong_clips"] > 0 and metrics["segment_macro_f1"] is not None
    evaluated = read_strong(Path(cfg.paths.metrics) / "events" / "test_events.tsv").events
    assert evaluated and len(evaluated) == metrics["n_detected_events"]
    output = tmp_path / "events.tsv"
    clips = sorted({e.filename for e in evaluated})
    assert cli(["predict", *clips, "--model", str(Path(cfg.paths.models) / "model.pt"), "--events",
                "--output", str(output)]) == 0
    key = lambda events: sorted((e.filename, e.label, round(e.onset, 3), round(e.offset, 3)) for e in events)
    assert key(read_strong(output).events) == key(evaluated)
