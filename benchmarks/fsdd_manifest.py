"""A manifest of FSDD recordings for the featurize benchmarks (no prepare stage needed).

`write_fsdd_manifest(prepared, n_clips, repeat)` writes `<prepared>/manifest.csv` and
`classes.json` for the first `n_clips` recordings (sorted by name), each listed `repeat`
times (so 10 hours of audio needs no 10 hours of files).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import soundfile as sf

FSDD = Path(os.environ.get("FSDD_ROOT", Path(__file__).resolve().parents[2] / "shared" / "data" / "fsdd"))


def write_fsdd_manifest(prepared: Path, n_clips: int | None = None, repeat: int = 1) -> pd.DataFrame:
    paths = sorted((FSDD / "recordings").glob("*.wav"))[:n_clips]
    rows = []
    for path in paths:
        info = sf.info(str(path))
        digit, speaker, index = path.stem.split("_")
        rows.append({"path": str(path), "label": digit, "split": "test" if int(index) < 5 else "train",
                     "fold": speaker, "group": speaker, "duration": info.frames / info.samplerate,
                     "sr": info.samplerate})
    manifest = pd.DataFrame(rows * repeat)
    prepared.mkdir(parents=True, exist_ok=True)
    manifest.to_csv(prepared / "manifest.csv", index=False)
    (prepared / "classes.json").write_text(json.dumps(sorted(manifest["label"].unique())))
    return manifest
