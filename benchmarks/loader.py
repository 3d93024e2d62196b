"""Training DataLoader throughput: windows per second read from the feature store.

    .venv/bin/python benchmarks/loader.py                     # FSDD store, speech front-end
    .venv/bin/python benchmarks/loader.py --workers 0 2 --batch-sizes 32 128 --seconds 10

Featurizes the 3,000 FSDD recordings (`features=speech`: 64-frame windows of 84 bins),
then iterates `WindowDataModule.train_dataloader()` (random windows, shuffled) for
`--seconds` after a warm-up batch, for each `trainer.num_workers` in `--workers` and
`trainer.batch_size` in `--batch-sizes`. For comparison, the same loader with per-item `__getitem__` and
the default collate (how the windows were read before batched extraction). Writes
benchmarks/results/loader.json; the last line is `windows_per_second=<best>`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from common import load_average, machine, save_results
from fsdd_manifest import write_fsdd_manifest
from torch.utils.data import DataLoader

from audiocnn.settings import store_settings
from audiocnn.config import compose_config, validate_config
from audiocnn.features.featurize import featurize
from audiocnn.experiment import data_module
from audiocnn.training.windows import seed_worker

RESULTS = Path(__file__).parent / "results" / "loader.json"


def windows_per_second(loader: DataLoader, seconds: float) -> float:
    batches = iter(loader)
    next(batches)  # workers started, maps opened
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        try:
            x, _ = next(batches)
        except StopIteration:
            batches = iter(loader)
            continue
        count += len(x)
    return count / (time.perf_counter() - started)


def per_item_loader(data, workers: int) -> DataLoader:
    """The same windows, one `__getitem__` per window and the default collate."""
    dataset = data.dataset("train", "random")
    dataset.__class__ = type("PerItem", (dataset.__class__,), {"__getitems__": None})
    return DataLoader(dataset, batch_size=data.loader.batch_size, shuffle=True, num_workers=workers,
                      persistent_workers=workers > 0, worker_init_fn=seed_worker if workers else None, drop_last=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="*", default=[0, 2])
    parser.add_argument("--batch-sizes", type=int, nargs="*", default=[32, 128])
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="loader-bench-"))
    write_fsdd_manifest(work / "prepared")
    base = ["data=fsdd", f"data.root={work}", "features=speech", f"paths.prepared={work / 'prepared'}",
            f"paths.features={work / 'features'}"]
    cfg = compose_config(base)
    validate_config(cfg)
    featurize(store_settings(cfg))
    result = {"machine": machine(), "load_average_before": load_average(),
              "window": [cfg.features.n_bins, cfg.features.window_frames], "runs": []}
    for workers in args.workers:
        for batch_size in args.batch_sizes:
            data = data_module(compose_config([*base, f"trainer.num_workers={workers}",
                                                   f"trainer.batch_size={batch_size}"]))
            run = {"num_workers": workers, "batch_size": batch_size,
                   "batched": round(windows_per_second(data.train_dataloader(), args.seconds)),
                   "per_item": round(windows_per_second(per_item_loader(data, workers), args.seconds))}
            result["runs"].append(run)
            print(json.dumps(run), flush=True)
    save_results(RESULTS, result)
    print("| num_workers | batch size | batched windows/s | per-item windows/s |")
    print("|---|---|---|---|")
    for run in result["runs"]:
        print(f"| {run['num_workers']} | {run['batch_size']} | {run['batched']} | {run['per_item']} |")
    print(f"windows_per_second={max(run['batched'] for run in result['runs'])}")


if __name__ == "__main__":
    main()
