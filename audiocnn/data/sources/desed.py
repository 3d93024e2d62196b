"""DESED (`data=desed`): Domestic Environment Sound Event Detection, the data of DCASE task 4
(Turpault et al. 2019; Serizel et al. 2020): 10-s clips, 10 domestic classes, strong (timed) labels
for the synthetic soundscapes and the real validation set, weak (clip-level) labels for the real
weakly labelled training set: a dataset that mixes both.

Layout (`data.root` is DESED's `dataset/` folder, as the DCASE 2021-2023 task 4 baselines use it):

| part (`data.parts`) | audio | metadata | labels | split |
|---|---|---|---|---|
| `weak` | `audio/train/weak/` | `metadata/train/weak.tsv` | weak | train |
| `synthetic_train` | `audio/train/synthetic21_train/soundscapes/` | `metadata/train/synthetic21_train/soundscapes.tsv` | strong | train |
| `synthetic_validation` | `audio/validation/synthetic21_validation/soundscapes/` | `metadata/validation/synthetic21_validation/soundscapes.tsv` | strong | val |
| `validation` | `audio/validation/validation/` | `metadata/validation/validation.tsv` | strong | test |

Strong TSVs are `filename, onset, offset, event_label`; the weak one is `filename, event_labels`
(comma-separated). `audio/train/unlabel_in_domain/` (no labels) is not used yet. The real clips
come from YouTube (each user downloads them; some are always missing) and the soundscapes are
generated with Scaper, so there is no single archive to download: `data.root` must point at a
copy (docs/events.md, DESED). A missing piece of a selected part stops prepare in one line naming
it. A bad row is skipped and reported (`data.events`); an audio file no TSV names is reported as
skipped, `no annotation`. Synthetic soundscapes of train and validation share names (`0.wav`), so
a clip's group is `<part>-<stem>`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import PlainValidator

from audiocnn.errors import MissingInputError
from audiocnn.data.download import dataset_root
from audiocnn.data.events import read_strong, read_weak
from audiocnn.data.sources._common import audio_files
from audiocnn.data.settings import DatasetCopy

# The 10 DESED classes, as the TSVs spell them, in the DCASE baseline's order.
CLASSES: tuple[str, ...] = ("Alarm_bell_ringing", "Blender", "Cat", "Dishes", "Dog", "Electric_shaver_toothbrush",
                            "Frying", "Running_water", "Speech", "Vacuum_cleaner")


@dataclass(frozen=True)
class Part:
    audio: Path
    metadata: Path
    strong: bool
    split: str


PARTS: dict[str, Part] = {
    "weak": Part(Path("audio/train/weak"), Path("metadata/train/weak.tsv"), False, "train"),
    "synthetic_train": Part(Path("audio/train/synthetic21_train/soundscapes"),
                            Path("metadata/train/synthetic21_train/soundscapes.tsv"), True, "train"),
    "synthetic_validation": Part(Path("audio/validation/synthetic21_validation/soundscapes"),
                                 Path("metadata/validation/synthetic21_validation/soundscapes.tsv"), True, "val"),
    "validation": Part(Path("audio/validation/validation"), Path("metadata/validation/validation.tsv"), True, "test"),
}


def _parts(value):
    if isinstance(value, list) and value and all(isinstance(v, str) and v in PARTS for v in value) \
            and len(set(value)) == len(value):
        return value
    raise ValueError(f"must be a list of distinct DESED parts: {', '.join(PARTS)}")


class Settings(DatasetCopy):
    """`data=desed`: a DESED copy (`root`), the parts of it to read."""
    name: Literal["desed"] = "desed"
    parts: Annotated[list[str], PlainValidator(_parts)] = list(PARTS)


def collect(data: Settings, raw_root: Path) -> tuple[list[dict], list[str], list]:
    root = dataset_root(data, raw_root)
    parts = list(data.parts)
    for name in parts:
        for piece in (PARTS[name].metadata, PARTS[name].audio):
            if not (root / piece).exists():
                raise MissingInputError(f"data.root={root}: no {piece.as_posix()} (DESED part {name}); put DESED's "
                                        "audio/ and metadata/ there, or leave the part out of data.parts "
                                        "(docs/events.md, DESED)")
    clips, problems = [], []
    for name in parts:
        part = PARTS[name]
        folder = root / part.audio
        read = read_strong if part.strong else read_weak
        annotations = read(root / part.metadata, classes=CLASSES, folder=folder, shown=part.metadata.as_posix())
        problems += annotations.problems
        events = annotations.events_by_file()
        for filename in annotations.files:
            path = folder / filename
            clips.append({"path": str(path), "group": f"{name}-{path.stem}", "fold": "", "split": part.split,
                          "annotation": "strong" if part.strong else "weak", "events": events.get(filename, []),
                          "labels": annotations.labels[filename]})
        listed, refused = set(annotations.files), {p.filename for p in annotations.problems}
        for path, reason in audio_files(folder):  # nothing lost: the files no usable row names are reported
            relative = path.relative_to(folder).as_posix() if path.is_relative_to(folder) else str(path)
            if relative in listed:
                continue
            why = (f"no usable annotation: every row of {part.metadata.as_posix()} naming it was left out "
                   "(report.json: annotations)" if relative in refused
                   else f"no annotation: not named in {part.metadata.as_posix()}")
            clips.append({"path": str(path), "group": f"{name}-{path.stem}", "fold": "", "split": part.split,
                          "labels": [], "skip": reason or why})
    return clips, list(CLASSES), problems
