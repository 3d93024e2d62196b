"""The evaluate stage's event report of an events model (docs/events.md, "Metrics"): its frame outputs on the
test split's strong clips scored by `evaluation.event_metrics` with the decoding stored in model.pt, and
written under `<paths.metrics>/events/`:

- `test_events.tsv`: every decoded event of those clips, a strong DCASE TSV (`filename onset offset
  event_label`; the filename is the clip's manifest path);
- `timeline.png`: true against detected events, and the frame probabilities, of the first
  `TIMELINE_CLIPS` strong test clips.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from audiocnn.data.events import Event, write_strong
from audiocnn.data.task import EVENTS, post_processing_of
from audiocnn.evaluation.event_metrics import PSDS_SCENARIOS, event_metrics
from audiocnn.evaluation.plots import plot_event_timeline
from audiocnn.training.datamodule import WindowDataModule
from audiocnn.training.event_postprocessing import clip_frames

EVENTS_DIR = "events"
EVENTS_TSV = "test_events.tsv"
TIMELINE_CLIPS = 4
LOGGED_EVENT_METRICS = ("event_macro_f1", "event_micro_f1", "segment_macro_f1", "segment_micro_f1",
                        *PSDS_SCENARIOS, "frame_macro_f1", "frame_micro_f1")


def score_events(model: nn.Module, bundle: dict, data: WindowDataModule, out: Path, device: torch.device,
                 title: str) -> tuple[dict, list[Path]]:
    """(test.json's event figures with `task: events`, the files written in `out`) for the events model
    `model` (`bundle` its model.pt record) on `data`'s test split (module docstring)."""
    record = bundle["events"]
    frame_seconds, classes = float(record["frame_seconds"]), data.classes
    post = post_processing_of(bundle, len(classes))
    clips = {str(row): p for row, p in clip_frames(model, data, "test", int(record["time_stride"]), device)}
    events = {key: data.clip_events[int(key)] for key in clips}
    durations = {key: float(data.durations[int(key)]) for key in clips}
    metrics, detections = event_metrics(clips, events, durations, frame_seconds, classes, post)
    names = {key: str(data.store.index["path"].iloc[int(key)]) for key in clips}
    decoded = [Event(names[key], d.onset, d.offset, d.label) for key in clips for d in detections[key]]
    files = [write_strong(out / EVENTS_TSV, decoded)]
    shown = list(clips)[:TIMELINE_CLIPS]
    files.append(plot_event_timeline([(Path(names[k]).name, clips[k], events[k], detections[k]) for k in shown],
                                     frame_seconds, classes, out / "timeline.png", title))
    return {"task": EVENTS, "post_processing": "stored" if "post_processing" in record else "default (0.5, no filter)",
            **metrics}, files
