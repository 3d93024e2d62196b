"""Event decoding of a trained events model, refitted and scored: what the grid of median filters and the
minimum duration / gap settings give on the test split (docs/results.md, "Event detection demo").

The train stage fits the decoding once, with `trainer.event_median_frames` / `event_min_duration` /
`event_min_gap`; this script scores every output frame of the val and test splits' strong clips once
(`training.event_postprocessing.clip_frames`), then for each setting fits on val and scores the test
split with `evaluation.event_metrics`, exactly as the train and evaluate stages do. One row per setting.

    python benchmarks/event_decoding.py --model path/to/model.pt -- data=demo_events paths.prepared=...

The overrides after `--` compose the config the model was trained with (its data and feature store).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from audiocnn.config import compose_config
from audiocnn.evaluation.event_metrics import event_metrics
from audiocnn.models.bundle import load_bundle
from audiocnn.experiment import data_module
from audiocnn.training.event_postprocessing import clip_frames, fit_post_processing

SETTINGS = [([1], 0.0, 0.0), ([1, 3, 5, 7], 0.0, 0.0), ([1, 3, 5, 7], 0.0, 0.2), ([1, 3, 5, 7, 9, 11], 0.1, 0.2)]
SHOWN = ("event_macro_f1", "event_micro_f1", "segment_macro_f1", "segment_micro_f1", "psds1", "psds2",
         "frame_macro_f1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="an events model.pt")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the training (after --)")
    args = parser.parse_args()
    model, bundle = load_bundle(args.model)
    stride, seconds = bundle["events"]["time_stride"], bundle["events"]["frame_seconds"]
    data = data_module(compose_config(args.overrides), time_stride=stride)
    started = time.perf_counter()
    splits = {split: {str(row): p for row, p in clip_frames(model, data, split, stride, torch.device("cpu"))}
              for split in ("val", "test")}
    print(f"scored {sum(map(len, splits.values()))} strong clips in {time.perf_counter() - started:.1f} s; "
          f"{seconds * 1000:.0f}-ms frames")
    events = {key: data.clip_events[int(key)] for clips in splits.values() for key in clips}
    durations = {key: float(data.durations[int(key)]) for key in splits["test"]}
    for medians, min_duration, min_gap in SETTINGS:
        post, val_f1 = fit_post_processing(splits["val"], events, seconds, data.classes, medians, min_duration, min_gap)
        metrics, _ = event_metrics(splits["test"], events, durations, seconds, data.classes, post)
        print(json.dumps({"event_median_frames": medians, "event_min_duration": min_duration,
                          "event_min_gap": min_gap, "fitted_medians": list(post.median_frames),
                          "val_event_f1": round(sum(val_f1) / len(val_f1), 4),
                          **{key: metrics[key] for key in SHOWN}}))


if __name__ == "__main__":
    main()
