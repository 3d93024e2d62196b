"""The data layer of sound event detection: frame targets from annotations (rounding at onsets and
offsets), hostile strong and weak TSV rows (each skipped in one line, the good rows kept), the
synthetic demo_events (deterministic, annotations where the sources really sound), and the DESED
adapter on a tiny fixture laid out like the real dataset, through the real prepare stage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from audiocnn.settings import prepare_settings, store_settings
from audiocnn.data.events import (CLIPPED, SKIPPED, Event, fit_to_duration, format_time, frame_targets,
                                  output_frame_seconds, read_prepared_events, read_strong, read_weak, write_strong)
from audiocnn.data.prepare import EVENTS, prepare, read_classes, read_manifest
from audiocnn.data.sources.demo_events import ANNOTATION_HOP_S, CLASSES as EVENT_CLASSES
from audiocnn.data.sources.demo_events import generate_scenes, render_scene
from audiocnn.data.sources.desed import CLASSES as DESED_CLASSES
from audiocnn.errors import InputError, MissingInputError
from tests.test_multilabel_data import config, remove_piece, report

RNG = np.random.default_rng(0)


def wav(path: Path, seconds: float = 1.0, sr: int = 16000) -> Path:
    """`seconds` of quiet noise, different in every file (never silent, never a duplicate)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, RNG.uniform(-0.3, 0.3, int(seconds * sr)).astype(np.float32), sr)
    return path


def tsv(path: Path, header: str, rows: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


STRONG = "filename\tonset\toffset\tevent_label"
WEAK = "filename\tevent_labels"


# ---------------------------------------------------------------- frame targets

def marked(events, n_frames=10, frame_seconds=0.1, classes=("a", "b")) -> list[int]:
    """The frames of class `a` an event list marks."""
    events = [Event("x.wav", onset, offset, label) for onset, offset, label in events]
    targets = frame_targets(events, n_frames, frame_seconds, list(classes))
    assert targets.shape == (n_frames, len(classes)) and targets.dtype == np.float32
    assert set(np.unique(targets)) <= {0.0, 1.0}
    return np.flatnonzero(targets[:, 0]).tolist()


@pytest.mark.parametrize("onset, offset, frames", [
    (0.2, 0.5, [2, 3, 4]),          # onset on a boundary starts there; an offset on a boundary ends the frame before
    (0.3, 0.6, [3, 4, 5]),          # 0.3 / 0.1 = 2.9999999999999996 in floats: still on the boundary
    (0.25, 0.51, [2, 3, 4, 5]),     # inside frames: every frame overlapped at all
    (0.0, 0.1, [0]),                # the first frame alone
    (0.22, 0.27, [2]),              # shorter than a frame, inside one: that frame
    (0.28, 0.31, [2, 3]),           # shorter than a frame, across a boundary: both
    (0.3, 0.3000000001, [3]),       # shorter than the boundary tolerance: still its frame
    (0.9, 1.0, [9]),                # ends on the last frame's end: the last frame
    (0.95, 1.7, [9]),               # runs past the last frame: cut there
    (1.0, 1.5, []),                 # starts where the frames end: nothing
])
def test_frame_targets_round_onsets_down_and_offsets_up(onset, offset, frames):
    assert marked([(onset, offset, "a")]) == frames


def test_frame_targets_overlapping_events_of_one_class_mark_their_union_and_classes_are_columns():
    events = [Event("x.wav", 0.1, 0.45, "a"), Event("x.wav", 0.3, 0.62, "a"), Event("x.wav", 0.8, 0.85, "a"),
              {"onset": 0.0, "offset": 0.2, "label": "b"}]
    targets = frame_targets(events, 10, 0.1, ["a", "b"])
    assert np.flatnonzero(targets[:, 0]).tolist() == [1, 2, 3, 4, 5, 6, 8]
    assert np.flatnonzero(targets[:, 1]).tolist() == [0, 1]
    assert frame_targets([], 0, 0.1, ["a"]).shape == (0, 1)
    with pytest.raises(ValueError, match="event label 'c' is not one of the 2 classes"):
        frame_targets([Event("x.wav", 0, 1, "c")], 10, 0.1, ["a", "b"])


def test_frame_seconds_is_the_hop_times_the_networks_time_stride():
    assert output_frame_seconds(512, 16000) == 0.032
    assert output_frame_seconds(512, 16000, time_stride=4) == 0.128
    # the model's frame grid: an event of 1.0-1.2 s at 128 ms frames marks frames 7 (0.896-1.024) .. 9 (1.152-1.28)
    assert np.flatnonzero(frame_targets([Event("x", 1.0, 1.2, "a")], 20, 0.128, ["a"])[:, 0]).tolist() == [7, 8, 9]


# ---------------------------------------------------------------- hostile annotations

def test_every_hostile_strong_row_is_skipped_in_one_line_and_the_good_rows_are_kept(tmp_path):
    audio = tmp_path / "audio"
    for name in ("a.wav", "b.wav", "sub/c.wav"):
        wav(audio / name, seconds=0.1)
    outside = wav(tmp_path / "secret.wav", seconds=0.1)
    rows = ["a.wav\t0.5\t1.5\tDog",                 # 2 good
            "a.wav\t3.0\t2.0\tDog",                 # 3 onset after offset
            "a.wav\t-1\t2.0\tDog",                  # 4 negative time
            "a.wav\tsoon\t2.0\tDog",                # 5 not a number
            "a.wav\t0.5\tnan\tDog",                 # 6 NaN
            "a.wav\t0.5\tinf\tDog",                 # 7 inf
            "missing.wav\t0.5\t1.0\tDog",           # 8 not in the audio folder
            "../secret.wav\t0.5\t1.0\tDog",         # 9 climbs out of it
            f"{outside}\t0.5\t1.0\tDog",            # 10 absolute
            "a.wav\t0.5\t1.0\t",                    # 11 empty label
            "a.wav\t0.5\t1.0\tKazoo",               # 12 unknown label
            "a.wav\t0.5\t1.0",                      # 13 a cell short
            "a.wav\t0.5\t1.5\tDog",                 # 14 the same event as row 2
            "\t0.5\t1.0\tDog",                      # 15 no filename
            "a.wav\t2\t2\tCat",                     # 16 zero length
            "b.wav\t0\t0.25\tCat",                  # 17 good
            "sub/c.wav\t1\t2\tDog",                 # 18 good, in a sub-folder
            "b.wav\t\t\t",                          # 19 a file without events: no problem
            ]
    path = tsv(tmp_path / "strong.tsv", STRONG, rows)
    with path.open("ab") as handle:
        handle.write(b"b.wav\t0\t1\tD\xf6g\n")      # 20 not UTF-8
    result = read_strong(path, classes=["Dog", "Cat"], folder=audio, shown="meta/strong.tsv")
    assert [(e.filename, e.onset, e.offset, e.label, e.row) for e in result.events] == [
        ("a.wav", 0.5, 1.5, "Dog", 2), ("b.wav", 0.0, 0.25, "Cat", 17), ("sub/c.wav", 1.0, 2.0, "Dog", 18)]
    assert result.files == ["a.wav", "b.wav", "sub/c.wav"]
    assert result.labels == {"a.wav": ["Dog"], "b.wav": ["Cat"], "sub/c.wav": ["Dog"]}
    kinds = {p.row: p.kind for p in result.problems}
    assert kinds == {3: "onset after offset", 4: "negative time", 5: "not a number", 6: "not finite",
                     7: "not finite", 8: "missing file", 9: "outside the audio folder", 10: "outside the audio folder",
                     11: "empty label", 12: "unknown label", 13: "wrong number of cells", 14: "duplicate",
                     15: "empty filename", 16: "empty event", 20: "not UTF-8"}
    lines = {p.row: p.line() for p in result.problems}
    for row, line in lines.items():
        assert line.startswith(f"meta/strong.tsv row {row}: ") and line.endswith("; skipped") and "\n" not in line
    assert lines[3] == "meta/strong.tsv row 3: onset after offset: onset 3.0 s is not before offset 2.0 s; skipped"
    assert lines[4] == "meta/strong.tsv row 4: negative time: onset -1 s is before the start of the file; skipped"
    assert lines[5] == "meta/strong.tsv row 5: not a number: onset 'soon' is not a number; skipped"
    assert lines[6] == "meta/strong.tsv row 6: not finite: offset nan is not a finite number; skipped"
    assert lines[8] == f"meta/strong.tsv row 8: missing file: 'missing.wav' is not in {audio}; skipped"
    assert lines[9] == (f"meta/strong.tsv row 9: outside the audio folder: filename '../secret.wav' leaves {audio}; "
                        "skipped")
    assert lines[12] == "meta/strong.tsv row 12: unknown label: event_label 'Kazoo' is not a class; skipped"
    assert len(result.events) + len(result.problems) + 1 == len(rows) + 1  # + the file without events, - nothing


def test_every_hostile_weak_row_is_skipped_in_one_line(tmp_path):
    audio = tmp_path / "weak"
    for name in ("a.wav", "b.wav", "c.wav"):
        wav(audio / name, seconds=0.1)
    rows = ["a.wav\tDog,Cat", "b.wav\t", "c.wav\tDog,Kazoo", "a.wav\tCat", "gone.wav\tDog", "b.wav",
            "../a.wav\tDog", "b.wav\t Cat , Cat ,", "..\\a.wav\tDog", "C:a.wav\tDog", "a.wav\tDog\t\t"]
    result = read_weak(tsv(tmp_path / "weak.tsv", WEAK, rows), classes=["Dog", "Cat"], folder=audio, shown="weak.tsv")
    assert result.files == ["a.wav", "b.wav"] and result.labels == {"a.wav": ["Dog", "Cat"], "b.wav": ["Cat"]}
    assert result.events == []
    assert [p.line() for p in result.problems] == [
        "weak.tsv row 3: empty label: the event_labels cell holds no label; skipped",
        "weak.tsv row 4: unknown label: event_labels holds 'Kazoo', not a class; skipped",
        "weak.tsv row 5: duplicate: the file is already listed in row 2; skipped",
        f"weak.tsv row 6: missing file: 'gone.wav' is not in {audio}; skipped",
        "weak.tsv row 7: wrong number of cells: 1 tab-separated cells, expected 2 (filename, event_labels); skipped",
        f"weak.tsv row 8: outside the audio folder: filename '../a.wav' leaves {audio}; skipped",
        f"weak.tsv row 10: outside the audio folder: filename '..\\\\a.wav' leaves {audio}; skipped",
        f"weak.tsv row 11: outside the audio folder: filename 'C:a.wav' leaves {audio}; skipped",
        "weak.tsv row 12: duplicate: the file is already listed in row 2; skipped",  # trailing tabs are no cells
    ]


def test_a_tsv_that_is_not_of_its_kind_is_refused_in_one_line_naming_it(tmp_path):
    path = tsv(tmp_path / "x.tsv", "filename,onset,offset,event_label", ["a.wav,0,1,Dog"])
    with pytest.raises(InputError, match=r"^x.tsv: header 'filename,onset,offset,event_label'; expected the "
                                         r"tab-separated columns filename, onset, offset, event_label$"):
        read_strong(path, shown="x.tsv")
    with pytest.raises(InputError, match=r"^gone.tsv: no such file$"):
        read_weak(tmp_path / "gone.tsv", shown="gone.tsv")


def test_events_past_the_end_are_cut_or_dropped_and_reported():
    events = [Event("a.wav", 1.0, 2.0, "Dog", "m.tsv", 2), Event("a.wav", 9.5, 10.4, "Dog", "m.tsv", 3),
              Event("a.wav", 10.0, 11.0, "Cat", "m.tsv", 4), Event("a.wav", 12.0, 13.0, "Cat", "m.tsv", 5)]
    kept, problems = fit_to_duration(events, 10.0)
    assert [(e.onset, e.offset, e.row) for e in kept] == [(1.0, 2.0, 2), (9.5, 10.0, 3)]
    assert [(p.row, p.action) for p in problems] == [(3, CLIPPED), (4, SKIPPED), (5, SKIPPED)]
    assert problems[0].line() == ("m.tsv row 3: past the end: offset 10.4 s is after the file's end (10 s); "
                                  "cut to 10 s; clipped")
    assert problems[2].line() == "m.tsv row 5: past the end: onset 12 s is at or after the file's end (10 s); skipped"


def test_written_events_read_back_exactly(tmp_path):
    events = [Event("a b.wav", 0.0, 0.0000625, "Dog"), Event("=x.wav", 1 / 3, 2.5, "Cat")]
    path = write_strong(tmp_path / "events.tsv", events)
    assert path.read_text().splitlines()[:2] == ["filename\tonset\toffset\tevent_label", "a b.wav\t0\t0.0000625\tDog"]
    back = read_strong(path).events
    assert [(e.filename, e.label, e.offset) for e in back] == [("a b.wav", "Dog", 0.0000625), ("=x.wav", "Cat", 2.5)]
    assert abs(back[1].onset - 1 / 3) < 1e-9 and format_time(2.0) == "2"
    with pytest.raises(ValueError, match="holds a tab or a line break"):
        write_strong(tmp_path / "bad.tsv", [Event("a\tb.wav", 0, 1, "Dog")])
    assert not (tmp_path / "bad.tsv").exists()


# ---------------------------------------------------------------- demo_events

def test_demo_events_are_deterministic_and_scene_i_does_not_depend_on_the_count(tmp_path):
    first = generate_scenes(tmp_path / "a", clips=3, progress=False)
    second = generate_scenes(tmp_path / "b", clips=2, progress=False)
    for index in range(2):
        name = f"scene_{index:05d}.wav"
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    rows = pd.read_csv(first, sep="\t")
    assert rows[rows["filename"] != "scene_00002.wav"].equals(pd.read_csv(second, sep="\t"))
    assert set(rows["event_label"]) <= set(EVENT_CLASSES) and (rows["onset"] < rows["offset"]).all()
    generate_scenes(tmp_path / "c", seed=1, clips=1, progress=False)
    assert (tmp_path / "c" / "scene_00000.wav").read_bytes() != (tmp_path / "a" / "scene_00000.wav").read_bytes()
    audio, sr = sf.read(tmp_path / "a" / "scene_00000.wav")
    assert sr == 16000 and len(audio) == 8 * sr and 0.08 < np.abs(audio).max() < 0.9


def sliding_rms(x: np.ndarray, width: int) -> np.ndarray:
    return np.sqrt(np.maximum(np.convolve(x ** 2, np.ones(width) / width, mode="same"), 0.0))


@pytest.mark.parametrize("index", [0, 1, 2, 3])
def test_demo_events_annotations_are_where_the_sources_sound_above_the_noise_within_one_hop(index):
    """Measured independently (a sliding RMS at sample resolution, not the generator's frames): every
    sample where a source is clearly above the noise floor (+6 dB) lies within one hop of an annotated
    event of its class, and each annotated onset and offset has the source sounding (above half the
    floor) within one hop of it; the annotation is not the placement window."""
    sr, hop = 16000, int(ANNOTATION_HOP_S * 16000)
    scene = render_scene(index, seed=0, sr=sr, duration=8.0, max_events=4, min_event_seconds=0.5,
                         max_event_seconds=3.0, gain_range_db=12.0, noise_db=-40.0)
    floor = np.sqrt(np.mean(scene.background ** 2))
    n = len(scene.mixture)
    assert np.allclose(scene.mixture, scene.background + sum(s for _, s in scene.sources))
    for label in {label for label, _ in scene.sources}:
        levels = [sliding_rms(s, hop) for lab, s in scene.sources if lab == label]
        loud = np.any([level > 2 * floor for level in levels], axis=0)
        audible = np.any([level > floor / 2 for level in levels], axis=0)
        annotated = np.zeros(n, bool)
        for onset, offset, _ in [e for e in scene.events if e[2] == label]:
            start, end = int(round(onset * sr)), int(round(offset * sr))
            annotated[max(0, start - hop):end + hop] = True
            assert audible[max(0, start - hop):start + hop].any(), (label, onset)
            assert audible[max(0, end - hop):end + hop].any(), (label, offset)
        assert not (loud & ~annotated).any(), label
    assert scene.events


def test_demo_events_annotations_lie_inside_the_placement_windows_and_are_not_them():
    """A source's rendering holds silence around its notes: the events are inside its window, not the window."""
    inside = 0
    for index in range(6):
        scene = render_scene(index, seed=0, sr=16000, duration=8.0, max_events=4, min_event_seconds=0.5,
                             max_event_seconds=3.0, gain_range_db=12.0, noise_db=-40.0)
        for onset, offset, label in scene.events:
            windows = [w for (lab, _), w in zip(scene.sources, scene.windows) if lab == label]
            assert any(start <= onset and offset <= end + ANNOTATION_HOP_S for start, end in windows)
            inside += any(onset > start + 0.1 for start, _ in windows)
    assert inside >= 3


def test_demo_events_through_prepare(tmp_path):
    cfg = config(tmp_path / "out", "demo_events", "data.clips=24", "data.duration=4.0")
    frame = prepare(prepare_settings(cfg))
    assert read_classes(cfg.paths.prepared) == (list(EVENT_CLASSES), EVENTS)
    manifest = read_manifest(cfg.paths.prepared)
    assert list(manifest.columns) == ["path", "label", "labels", "annotation", "split", "fold", "group", "duration",
                                      "sr"]
    assert len(frame) == 24 and set(manifest["split"]) == {"train", "val", "test"}
    assert set(manifest["annotation"]) == {"strong"} and (manifest["duration"] == 4.0).all()
    events = read_prepared_events(cfg.paths.prepared)
    assert set(events) == set(manifest["path"])
    for path, labels in zip(manifest["path"], manifest["labels"]):
        assert labels.split(";") == [c for c in EVENT_CLASSES if c in {e.label for e in events[path]}]
        assert all(0 <= e.onset < e.offset <= 4.0 for e in events[path])
    summary = report(cfg)["annotations"]
    assert summary["clips"] == {"strong": 24, "weak": 0} and summary["problems"] == 0
    assert summary["events"] == sum(map(len, events.values()))


# ---------------------------------------------------------------- DESED

def desed_fixture(root: Path) -> Path:
    """DESED's dataset/ layout with a few tiny real WAVs (1 s at 16 kHz) and TSVs holding hostile rows."""
    dog, speech, cat, dishes = "Dog", "Speech", "Cat", "Dishes"
    weak = [f"Yweak{i}_0.000_10.000.wav" for i in range(6)]
    for name in weak + ["Ystray.wav"]:  # Ystray.wav: in the folder, named by no TSV
        wav(root / "audio/train/weak" / name)
    tsv(root / "metadata/train/weak.tsv", WEAK,
        [f"{weak[0]}\t{dog},{speech}", f"{weak[1]}\t{cat}", f"{weak[2]}\t{dishes},{dog}", f"{weak[3]}\t{speech}",
         f"{weak[4]}\tDgo", f"{weak[5]}\t", "Ygone.wav\tDog"])
    synth_train = root / "audio/train/synthetic21_train/soundscapes"
    for i in range(6):
        wav(synth_train / f"{i}.wav")
    tsv(root / "metadata/train/synthetic21_train/soundscapes.tsv", STRONG,
        ["0.wav\t0.1\t0.5\tDog", "0.wav\t0.3\t0.9\tSpeech", "1.wav\t0.0\t0.4\tCat", "2.wav\t0.2\t0.7\tDishes",
         "3.wav\t0.5\t1.8\tSpeech",     # past the end: cut at 1 s
         "4.wav\t1.5\t1.9\tDog",        # starts past the end: dropped, and 4.wav has no event left
         "5.wav\t0.6\t0.2\tCat",        # onset after offset: its only event, so 5.wav has none
         "../../weak/x.wav\t0\t1\tDog"])
    synth_val = root / "audio/validation/synthetic21_validation/soundscapes"
    for i in range(3):
        wav(synth_val / f"{i}.wav")     # the same names as the synthetic train soundscapes
    tsv(root / "metadata/validation/synthetic21_validation/soundscapes.tsv", STRONG,
        ["0.wav\t0.0\t1.0\tDog", "1.wav\t0.2\t0.4\tCat", "2.wav\t0.1\t0.9\tSpeech", "2.wav\tNaN\t0.9\tCat"])
    real_val = root / "audio/validation/validation"
    for i in range(4):
        wav(real_val / f"Yval{i}.wav")
    tsv(root / "metadata/validation/validation.tsv", STRONG,
        ["Yval0.wav\t0.0\t0.5\tDog", "Yval0.wav\t0.4\t1.0\tDog", "Yval1.wav\t0.25\t0.75\tDishes",
         "Yval2.wav\t0.1\t0.2\tFrying", "Yval3.wav\t\t\t", "Yval2.wav\t-0.5\t0.2\tFrying"])
    return root


def test_desed_fixture_through_prepare(tmp_path):
    root = desed_fixture(tmp_path / "DESED" / "dataset")
    cfg = config(tmp_path / "out", "desed", f"data.root={root}")
    prepare(prepare_settings(cfg))
    assert read_classes(cfg.paths.prepared) == (list(DESED_CLASSES), EVENTS)
    manifest = read_manifest(cfg.paths.prepared)
    manifest.index = [str(Path(p).relative_to(root)) for p in manifest["path"]]
    expected = {  # clip: (labels, annotation, split)
        "audio/train/weak/Yweak0_0.000_10.000.wav": ("Dog;Speech", "weak", "train"),
        "audio/train/weak/Yweak1_0.000_10.000.wav": ("Cat", "weak", "train"),
        "audio/train/weak/Yweak2_0.000_10.000.wav": ("Dishes;Dog", "weak", "train"),
        "audio/train/weak/Yweak3_0.000_10.000.wav": ("Speech", "weak", "train"),
        "audio/train/synthetic21_train/soundscapes/0.wav": ("Dog;Speech", "strong", "train"),
        "audio/train/synthetic21_train/soundscapes/1.wav": ("Cat", "strong", "train"),
        "audio/train/synthetic21_train/soundscapes/2.wav": ("Dishes", "strong", "train"),
        "audio/train/synthetic21_train/soundscapes/3.wav": ("Speech", "strong", "train"),
        "audio/validation/synthetic21_validation/soundscapes/0.wav": ("Dog", "strong", "val"),
        "audio/validation/synthetic21_validation/soundscapes/1.wav": ("Cat", "strong", "val"),
        "audio/validation/synthetic21_validation/soundscapes/2.wav": ("Speech", "strong", "val"),
        "audio/validation/validation/Yval0.wav": ("Dog", "strong", "test"),
        "audio/validation/validation/Yval1.wav": ("Dishes", "strong", "test"),
        "audio/validation/validation/Yval2.wav": ("Frying", "strong", "test"),
        "audio/validation/validation/Yval3.wav": ("", "strong", "test"),  # no event: a negative of every class
    }
    assert {k: tuple(v) for k, v in manifest[["labels", "annotation", "split"]].iterrows()} == expected
    assert manifest.loc["audio/train/synthetic21_train/soundscapes/0.wav", "group"] == "synthetic_train-0"
    assert manifest.loc["audio/validation/synthetic21_validation/soundscapes/0.wav", "group"] == \
        "synthetic_validation-0"

    events = {str(Path(p).relative_to(root)): [(e.onset, e.offset, e.label) for e in found]
              for p, found in read_prepared_events(cfg.paths.prepared).items()}
    assert events["audio/train/synthetic21_train/soundscapes/0.wav"] == [(0.1, 0.5, "Dog"), (0.3, 0.9, "Speech")]
    assert events["audio/train/synthetic21_train/soundscapes/3.wav"] == [(0.5, 1.0, "Speech")]  # cut at the end
    assert events["audio/validation/validation/Yval0.wav"] == [(0.0, 0.5, "Dog"), (0.4, 1.0, "Dog")]
    assert not any("weak" in name for name in events)  # weak clips have labels, no timed events
    assert len(events) == 10

    summary = report(cfg)
    skipped = {str(Path(s["path"]).relative_to(root)): s["reason"] for s in summary["skipped_files"]}
    assert skipped == {
        "audio/train/weak/Ystray.wav": "no annotation: not named in metadata/train/weak.tsv",
        "audio/train/synthetic21_train/soundscapes/4.wav": "no events: every event starts at or after the file's "
                                                           "end (1 s)",
        "audio/train/synthetic21_train/soundscapes/5.wav": "no usable annotation: every row of metadata/train/"
                                                           "synthetic21_train/soundscapes.tsv naming it was left out "
                                                           "(report.json: annotations)",
        "audio/train/weak/Yweak4_0.000_10.000.wav": "no usable annotation: every row of metadata/train/weak.tsv "
                                                    "naming it was left out (report.json: annotations)",
        "audio/train/weak/Yweak5_0.000_10.000.wav": "no usable annotation: every row of metadata/train/weak.tsv "
                                                    "naming it was left out (report.json: annotations)",
    }
    annotations = summary["annotations"]
    assert annotations["clips"] == {"strong": 11, "weak": 4} and annotations["events"] == 12
    rows = {(p["source"], p["row"], p["kind"], p["action"]) for p in annotations["problem_rows"]}
    assert rows == {
        ("metadata/train/weak.tsv", 6, "unknown label", "skipped"),
        ("metadata/train/weak.tsv", 7, "empty label", "skipped"),
        ("metadata/train/weak.tsv", 8, "missing file", "skipped"),
        ("metadata/train/synthetic21_train/soundscapes.tsv", 6, "past the end", "clipped"),
        ("metadata/train/synthetic21_train/soundscapes.tsv", 7, "past the end", "skipped"),
        ("metadata/train/synthetic21_train/soundscapes.tsv", 8, "onset after offset", "skipped"),
        ("metadata/train/synthetic21_train/soundscapes.tsv", 9, "outside the audio folder", "skipped"),
        ("metadata/validation/synthetic21_validation/soundscapes.tsv", 5, "not finite", "skipped"),
        ("metadata/validation/validation.tsv", 7, "negative time", "skipped"),
    }
    assert annotations["problems"] == 9 and annotations["problems_by_kind"]["past the end"] == 2
    for problem in annotations["problem_rows"]:
        assert problem["reason"].startswith(f"{problem['source']} row {problem['row']}: {problem['kind']}: ")
        assert "\n" not in problem["reason"]
    # nothing lost: every audio file is in the manifest or skipped with its reason
    audio = {str(p.relative_to(root)) for p in (root / "audio").rglob("*.wav")}
    assert audio == set(manifest.index) | set(skipped)


def test_an_event_free_strong_clip_is_a_negative_of_every_class_with_frame_targets(tmp_path):
    from audiocnn.features.featurize import featurize
    from audiocnn.experiment import data_module
    root = desed_fixture(tmp_path / "dataset")
    cfg = config(tmp_path / "out", "desed", f"data.root={root}", "features.window_frames=16")
    prepare(prepare_settings(cfg))
    featurize(store_settings(cfg))
    data = data_module(cfg, time_stride=2)
    paths = read_manifest(cfg.paths.prepared)["path"].to_numpy()[data.store.index["clip_id"].to_numpy()]
    names = [str(Path(p).relative_to(root)) for p in paths]
    row = names.index("audio/validation/validation/Yval3.wav")
    assert data.strong[row] and data.clip_events[row] == [] and not data.labels[row].any()
    assert (data.labels.sum(axis=1) > 0).sum() == len(data.labels) - 1  # every other clip has a label
    item = list(data.rows("test")).index(row)
    _, labels, frames, strong = data.dataset("test", mode="random").__getitems__([item])
    assert bool(strong[0]) and not labels.any() and frames.shape[1] == 16 // 2 and not frames.any()
    dog = list(data.rows("test")).index(names.index("audio/validation/validation/Yval0.wav"))  # Dog all along
    assert data.dataset("test", mode="random").__getitems__([dog])[2][..., DESED_CLASSES.index("Dog")].all()


@pytest.mark.parametrize("piece", ["metadata/validation/validation.tsv", "audio/train/weak"])
def test_desed_names_the_missing_piece_in_one_line(tmp_path, piece):
    root = desed_fixture(tmp_path / "dataset")
    remove_piece(root / piece)
    cfg = config(tmp_path / "out", "desed", f"data.root={root}")
    with pytest.raises(MissingInputError, match=rf"^data.root={root}: no {piece} \(DESED part \w+\); put DESED's "
                                                r"audio/ and metadata/ there") as error:
        prepare(prepare_settings(cfg))
    assert "\n" not in str(error.value)
    assert not (Path(cfg.paths.prepared) / "manifest.csv").exists()


def test_desed_parts_pick_what_is_used(tmp_path):
    root = desed_fixture(tmp_path / "dataset")
    (root / "metadata/train/weak.tsv").unlink()  # not needed when the weak part is left out
    cfg = config(tmp_path / "out", "desed", f"data.root={root}", "data.parts=[synthetic_train,synthetic_validation,"
                                                                 "validation]")
    prepare(prepare_settings(cfg))
    manifest = read_manifest(cfg.paths.prepared)
    assert set(manifest["annotation"]) == {"strong"} and len(manifest) == 11  # Yval3.wav (no event) is in


def test_an_earlier_datasets_events_file_does_not_outlive_it(tmp_path):
    out = tmp_path / "out"
    prepare(prepare_settings(config(out, "demo_events", "data.clips=12", "data.duration=2.0", "data.max_event_seconds=1.5")))
    assert (out / "prepared" / "events.tsv").exists()
    prepare(prepare_settings(config(out, "demo_mix", "data.clips=12")))
    assert not (out / "prepared" / "events.tsv").exists()
    assert read_prepared_events(out / "prepared") == {}
    assert "annotations" not in json.loads((out / "prepared" / "report.json").read_text())
