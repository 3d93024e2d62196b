"""Tests for the embedded synthetic demo dataset (audiocnn.data.sources.demo)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audiocnn.data.sources import demo

SR = 16000


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo3")
    return root, demo.generate_demo(root, seed=0, clips_per_class=3, progress=False)


def _note_pitches(x: np.ndarray, sr: int = SR) -> list[float]:
    """Split a clip into notes at its low-energy gaps and return each note's dominant frequency."""
    hop, win = int(0.01 * sr), int(0.03 * sr)
    frames = np.lib.stride_tricks.sliding_window_view(x, win)[::hop]
    energy_db = 10 * np.log10(np.mean(frames ** 2, axis=1) + 1e-20)
    floor = np.percentile(energy_db, 10)
    active = energy_db > floor + 12.0
    # runs of active frames, merging holes shorter than 50 ms
    runs, start, hole = [], None, 0
    for i, a in enumerate(active):
        if a:
            start = i if start is None else start
            hole = 0
        elif start is not None:
            hole += 1
            if hole > 5:
                runs.append((start, i - hole + 1))
                start, hole = None, 0
    if start is not None:
        runs.append((start, len(active) - hole))
    pitches = []
    for s, e in runs:
        if e - s < 5:  # shorter than 50 ms: not a note
            continue
        seg = x[s * hop: e * hop + win]
        spec = np.abs(np.fft.rfft(seg * np.hanning(seg.size), n=1 << 17))
        freqs = np.fft.rfftfreq(1 << 17, 1 / sr)
        band = (freqs > 60) & (freqs < 1300)
        pitches.append(float(freqs[band][np.argmax(spec[band])]))
    return pitches


def test_class_list():
    assert len(demo.CLASSES) >= 8
    assert len(set(demo.CLASSES)) == len(demo.CLASSES)
    for name in demo.CLASSES:
        assert name == name.lower() and name.replace("_", "").isalnum()
    assert len(demo.ORDER_ONLY_CLASSES) == 2
    assert set(demo.ORDER_ONLY_CLASSES) <= set(demo.CLASSES)


def test_layout_and_records(generated):
    root, records = generated
    assert len(records) == 3 * len(demo.CLASSES)
    assert sorted(p.name for p in root.iterdir()) == sorted(demo.CLASSES)
    for label in demo.CLASSES:
        names = sorted(p.name for p in (root / label).iterdir())
        assert names == [f"{label}_{i:04d}.wav" for i in range(3)]  # no temp files left behind
    for rec in records:
        assert set(rec) == {"path", "label", "group"}
        path = Path(rec["path"])
        assert path.is_absolute() and path.is_file()
        assert path.parent == root.resolve() / rec["label"]
        assert rec["group"] == path.stem and path.stem.startswith(rec["label"] + "_")
    assert len({r["group"] for r in records}) == len(records)


def test_audio_properties(generated):
    _, records = generated
    for rec in records:
        info = sf.info(rec["path"])
        assert (info.samplerate, info.channels, info.subtype, info.format) == (SR, 1, "PCM_16", "WAV")
        x, sr = sf.read(rec["path"], dtype="float64")
        assert sr == SR and x.ndim == 1
        assert 2.0 - 1e-3 <= x.size / sr <= 4.0 + 1e-3
        assert np.all(np.isfinite(x))
        peak = np.max(np.abs(x))
        assert 0.09 <= peak <= 0.99  # gain in [-20, 0] dBFS, never clipping
        assert np.sqrt(np.mean(x ** 2)) > 1e-3  # not silent


def test_deterministic_and_prefix_stable(generated, tmp_path):
    root3, rec3 = generated
    rec_again = demo.generate_demo(tmp_path / "again", seed=0, clips_per_class=3, progress=False)
    rec2 = demo.generate_demo(tmp_path / "two", seed=0, clips_per_class=2, progress=False)
    assert len(rec2) == 2 * len(demo.CLASSES)
    for a, b in zip(rec3, rec_again):
        assert Path(a["path"]).read_bytes() == Path(b["path"]).read_bytes()
    by_group = {r["group"]: r for r in rec3}
    for r in rec2:
        assert Path(r["path"]).read_bytes() == Path(by_group[r["group"]]["path"]).read_bytes()
    # regenerating over existing files works and leaves them unchanged
    demo.generate_demo(tmp_path / "two", seed=0, clips_per_class=2, progress=False)
    for r in rec2:
        assert Path(r["path"]).read_bytes() == Path(by_group[r["group"]]["path"]).read_bytes()


def test_different_seed_gives_different_audio():
    for label in demo.CLASSES:
        a = demo.render_clip(label, seed=0, index=0)
        b = demo.render_clip(label, seed=1, index=0)
        assert a.shape != b.shape or not np.allclose(a, b)
    # and clips within a class differ from each other
    assert demo.render_clip("organ", index=0).shape != demo.render_clip("organ", index=1).shape


def test_duration_arguments_respected():
    for label in demo.CLASSES:
        for i in range(3):
            x = demo.render_clip(label, index=i, min_duration=1.0, max_duration=1.5)
            assert 1.0 <= x.size / SR <= 1.5 + 1e-3
            assert np.all(np.isfinite(x)) and np.max(np.abs(x)) <= 0.99


def test_pitch_sampler_spans_three_octaves():
    lo, hi = demo.MIDI_RANGE
    assert hi - lo >= 36
    assert demo.midi_to_hz(hi) < 1100 and demo.midi_to_hz(lo) > 60
    rng = np.random.default_rng(123)
    drawn = np.concatenate([demo.sample_midi(rng, 4) for _ in range(300)])
    assert drawn.min() == lo and drawn.max() == hi
    assert len(np.unique(drawn)) == hi - lo + 1
    distinct = demo.sample_midi(rng, 4, distinct=True)
    assert len(set(distinct)) == 4


@pytest.mark.parametrize("label", ["pluck", "bell", "organ", "wind", "membrane", "bowed"])
def test_timbre_classes_use_wide_pitch_range(label):
    """Every instrument class plays notes spread over >= 3 octaves across clips."""
    plans = [demo._plan_notes(label, demo.clip_rng(0, demo.CLASSES.index(label), i), 3.0) for i in range(60)]
    midis = [note[2] for plan in plans for note in plan]
    assert all(1 <= len(plan) <= 4 for plan in plans)
    assert max(midis) - min(midis) >= 36


def test_order_only_pair_rises_and_falls():
    up, down = demo.ORDER_ONLY_CLASSES
    all_pitches = []
    for label, sign in ((up, 1), (down, -1)):
        for i in range(20):
            pitches = _note_pitches(demo.render_clip(label, seed=0, index=i))
            assert len(pitches) == 2, (label, i, pitches)
            steps = np.diff(np.log2(pitches)) * 12  # semitones between consecutive notes
            assert np.all(sign * steps > 0.5), (label, i, pitches)
            all_pitches += pitches
    span_octaves = np.log2(max(all_pitches) / min(all_pitches))
    assert span_octaves >= 3.0


def test_order_only_pair_same_note_distribution():
    """Per clip, the up and down plans are mirror images: same multiset of pitches, reversed order."""
    up, down = demo.ORDER_ONLY_CLASSES
    for i in range(20):
        for label in (up, down):
            rng = demo.clip_rng(0, demo.CLASSES.index(label), i)
            plan = demo._plan_notes(label, rng, 3.0)
            onsets = [n[0] for n in plan]
            midis = [n[2] for n in plan]
            assert onsets == sorted(onsets)
            assert len(set(midis)) == len(midis)
            assert midis == sorted(midis, reverse=(label == down))
            for (o1, l1, *_), (o2, *_) in zip(plan, plan[1:]):
                assert 1.5 <= o2 - (o1 + l1) <= 2.2 + 1e-9  # gap longer than a plain CNN's receptive field
            assert onsets[-1] + plan[-1][1] <= 3.0


def test_timbres_are_distinct_on_average():
    """Crude sanity check that classes are not identical: spectral centroid differs between them."""
    def centroid(x):
        spec = np.abs(np.fft.rfft(x)) ** 2
        freqs = np.fft.rfftfreq(x.size, 1 / SR)
        return float((spec * freqs).sum() / spec.sum())
    cents = {label: np.median([centroid(demo.render_clip(label, index=i)) for i in range(4)])
             for label in demo.CLASSES}
    assert len({round(c, -1) for c in cents.values()}) >= 4


@pytest.mark.parametrize("midi_range", [(40, 61), (62, 84)])
def test_midi_range_keeps_every_note_of_every_class_in_the_register(midi_range):
    """benchmarks/register_transfer.py: low and high registers; order-only pairs still rise and fall."""
    for label in demo.CLASSES:
        for i in range(15):
            plan = demo._plan_notes(label, demo.clip_rng(0, demo.CLASSES.index(label), i), 3.5, midi_range)
            assert all(midi_range[0] <= note[2] <= midi_range[1] for note in plan), (label, plan)
    up, down = demo.ORDER_ONLY_CLASSES
    for label, sign in ((up, 1), (down, -1)):
        pitches = _note_pitches(demo.render_clip(label, seed=0, index=0, midi_range=midi_range))
        assert len(pitches) == 2 and sign * (pitches[1] - pitches[0]) > 0
        semitone = 2 ** (1 / 12)
        hz = demo.midi_to_hz(midi_range)
        assert hz[0] / semitone < min(pitches) and max(pitches) < hz[1] * semitone, pitches
