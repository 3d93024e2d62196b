"""Embedded, offline, deterministic synthetic dataset ("demo") written as real WAV files.

Every clip is 16-bit PCM mono, 2-4 s long, holds band-limited tonal content (every partial
that matters lies below ~3.8 kHz, under the CQT's top bin), a random gain (-20..0 dBFS peak),
random per-clip detune (+/-30 cents), small random timbre variation, and white or pink
background noise at a random SNR of 10-30 dB. Classes, in label order:

* ``pluck``    -- Karplus-Strong plucked string (noise burst into a damped, fractionally tuned
                  delay loop, run by ``scipy.signal.lfilter``).
* ``bell``     -- FM bell: inharmonic carrier:modulator ratio ~1:1.4, decaying index, long decay.
* ``organ``    -- additive organ: drawbar harmonics 1, 2, 3, 4, 6, 8 with random weights, flat sustain.
* ``wind``     -- noise-excited wind: white noise through narrow resonators at the pitch and its
                  first harmonics, slow breathy attack with a high-passed noise puff.
* ``membrane`` -- struck circular membrane: inharmonic modes 1, 1.59, 2.14, 2.30, 2.65, fast
                  decay, downward pitch glide, short click.
* ``bowed``    -- bowed string: band-limited sawtooth with delayed vibrato (25-60 cents), slow attack.
* ``interval_up`` / ``interval_down`` -- ORDER-ONLY pair. Both use the same dedicated mallet
  timbre (sine + decaying ~4x and ~10x partials, used by no other class) and the same
  generator: two short notes at distinct pitches (at least a fourth apart) from the full
  range, separated by a silent gap of 1.6-2.2 s, played low-then-high vs high-then-low. The
  multiset of notes (pitch, length, loudness) has the same distribution in both classes, and
  the gap is longer than the receptive field in time of the default ``cnn`` (about 1.5 s), so a
  model that pools time away sees two unrelated notes and can only guess the order from where
  they sit in the window; a model that keeps temporal order (an RNN over time) reads it.

The instrument classes play 1-4 notes each at random MIDI pitches 40-84 (E2-C6, 3 2/3
octaves) with random onsets and durations. Each clip draws all its randomness from its own
generator seeded by ``(seed, class index, clip index)``, so it does not depend on how many
clips are generated, and the same arguments always give byte-identical files.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np
import soundfile as sf
from scipy import signal
from pydantic import model_validator

from audiocnn.data.settings import ClassNames, GeneratedClips, PositiveInt
from audiocnn.errors import show

CLASSES: tuple[str, ...] = ("pluck", "bell", "organ", "wind", "membrane", "bowed",
                            "interval_up", "interval_down")
ORDER_ONLY_CLASSES: tuple[str, str] = ("interval_up", "interval_down")
ORDER_ONLY_MIN_DURATION = 3.2  # s: room for two notes and the long gap between them
MIN_INTERVAL = 5  # semitones between the two notes of the order-only pair (a fourth or more)
MIDI_RANGE: tuple[int, int] = (40, 84)  # inclusive: E2 (82.4 Hz) .. C6 (1046.5 Hz)
BAND_LIMIT_HZ = 3800.0                  # highest partial synthesised on purpose
MEMBRANE_RATIOS = (1.0, 1.59, 2.14, 2.30, 2.65)


def midi_to_hz(midi):
    return 440.0 * 2.0 ** ((np.asarray(midi, dtype=float) - 69.0) / 12.0)


def sample_midi(rng: np.random.Generator, n: int, *, distinct: bool = False,
                midi_range: tuple[int, int] = MIDI_RANGE) -> np.ndarray:
    """Draw ``n`` integer MIDI pitches uniformly from ``midi_range`` (inclusive; without repeats if distinct)."""
    pitches = np.arange(midi_range[0], midi_range[1] + 1)
    return rng.choice(pitches, size=n, replace=not distinct).astype(float)


def clip_rng(seed: int, class_index: int, clip_index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, class_index, clip_index]))


def _env(n: int, sr: int, attack: float, release: float) -> np.ndarray:
    """Linear attack, flat sustain, linear release at the end of the note."""
    env = np.ones(n)
    a, r = min(int(attack * sr) + 1, n), min(int(release * sr) + 1, n)
    env[:a] = np.linspace(0.0, 1.0, a)
    env[n - r:] *= np.linspace(1.0, 0.0, r)
    return env


def _pluck(f, n, sr, rng, p):
    d_total = sr / f - 0.5                     # loop delay minus the averager's half sample
    L = int(np.floor(d_total - 0.1))
    d = d_total - L                            # fractional part, done by a first-order allpass
    c = (1.0 - d) / (1.0 + d)
    g = p["loop_gain"]
    # H(z) = (1 + c z^-1) / ((1 + c z^-1) - g/2 z^-L (1 + z^-1)(c + z^-1))
    a = np.zeros(L + 3)
    a[0], a[1] = 1.0, c
    a[L:L + 3] -= 0.5 * g * np.array([c, 1.0 + c, 1.0])
    x = np.zeros(n)  # excitation: one loop-length of (optionally darkened) noise
    x[:min(L + 1, n)] = signal.lfilter([1.0 - p["dark"]], [1.0, -p["dark"]], rng.standard_normal(L + 1))[:n]
    return signal.lfilter([1.0, c], a, x) * _env(n, sr, 0.0, 0.02)


def _bell(f, n, sr, rng, p):
    t = np.arange(n) / sr
    fm = f * p["ratio"]
    index = min(p["index"], max(0.3, (BAND_LIMIT_HZ - f) / fm - 1.0))
    tau = p["tau"] * (220.0 / f) ** 0.3
    mod = index * np.exp(-t / (0.4 * tau)) * np.sin(2 * np.pi * fm * t)
    return np.exp(-t / tau) * np.sin(2 * np.pi * f * t + mod) * _env(n, sr, 0.002, 0.03)


ORGAN_DRAWBARS = np.array([1, 2, 3, 4, 6, 8])  # harmonics of the 8', 4', 2 2/3', 2', 1 1/3', 1' stops


def _organ(f, n, sr, rng, p):
    t = np.arange(n) / sr
    k = ORGAN_DRAWBARS[ORGAN_DRAWBARS * f < BAND_LIMIT_HZ]
    phases = rng.uniform(0, 2 * np.pi, k.size)
    tone = (p["weights"][:k.size, None] * np.sin(2 * np.pi * f * k[:, None] * t + phases[:, None])).sum(0)
    return tone * _env(n, sr, p["attack"], 0.05)


def _wind(f, n, sr, rng, p):
    noise = rng.standard_normal(n + sr // 2)   # extra lead-in so the resonators are settled
    tone = np.zeros(n)
    for h, gain in ((1, 1.0), (2, p["h2"]), (3, p["h3"])):
        if h * f < BAND_LIMIT_HZ:
            b, a = signal.iirpeak(h * f, p["q"], fs=sr)
            y = signal.lfilter(b, a, signal.lfilter(b, a, noise))[-n:]
            tone += gain * y / (np.sqrt(np.mean(y ** 2)) + 1e-12)
    hp = signal.butter(2, 1500.0, "highpass", fs=sr, output="sos")
    breath = signal.sosfilt(hp, rng.standard_normal(n))
    puff = p["breath"] * (np.exp(-np.arange(n) / (0.06 * sr)) + 0.05)
    return (tone + puff * breath) * _env(n, sr, p["attack"], 0.08)


def _membrane(f, n, sr, rng, p):
    t = np.arange(n) / sr
    f_t = f * (1.0 + p["drop"] * np.exp(-t / 0.05))
    phase = 2 * np.pi * np.cumsum(f_t) / sr
    out = np.zeros(n)
    for k, ratio in enumerate(MEMBRANE_RATIOS):
        if ratio * f * (1.0 + p["drop"]) < BAND_LIMIT_HZ:
            out += p["amps"][k] * np.exp(-t / (p["tau"] / (1.0 + 0.6 * k))) * np.sin(ratio * phase)
    m = min(n, int(0.005 * sr))
    out[:m] += rng.standard_normal(m) * np.linspace(0.5, 0.0, m)  # stick click
    return out * _env(n, sr, 0.001, 0.02)


def _bowed(f, n, sr, rng, p):
    t = np.arange(n) / sr
    vib = p["depth"] / 1200.0 * np.sin(2 * np.pi * p["rate"] * t) * np.clip((t - 0.2) / 0.3, 0, 1)
    phase = 2 * np.pi * np.cumsum(f * 2.0 ** vib) / sr
    k = np.arange(1, int(BAND_LIMIT_HZ // (f * 1.03)) + 1)
    amps = k ** -p["tilt"]
    return (amps[:, None] * np.sin(k[:, None] * phase)).sum(0) * _env(n, sr, p["attack"], 0.1)


def _mallet(f, n, sr, rng, p):
    t = np.arange(n) / sr
    tau = p["tau"] * (220.0 / f) ** 0.3
    out = np.exp(-t / tau) * np.sin(2 * np.pi * f * t)
    for ratio, amp, div in ((p["r2"], p["a2"], 3.0), (p["r3"], p["a3"], 6.0)):
        if ratio * f < BAND_LIMIT_HZ:
            out += amp * np.exp(-t * div / tau) * np.sin(2 * np.pi * ratio * f * t)
    return out * _env(n, sr, 0.002, 0.015)


# class -> (synth, per-clip timbre-parameter sampler)
_TIMBRES = {
    "pluck": (_pluck, lambda r: {"loop_gain": r.uniform(0.990, 0.998), "dark": r.uniform(0.0, 0.6)}),
    "bell": (_bell, lambda r: {"ratio": 1.4 * r.uniform(0.98, 1.02), "index": r.uniform(2.0, 5.0),
                               "tau": r.uniform(0.8, 2.0)}),
    "organ": (_organ, lambda r: {"weights": r.uniform(0.2, 1.0, len(ORGAN_DRAWBARS)) / ORGAN_DRAWBARS ** 0.5,
                                 "attack": r.uniform(0.01, 0.04)}),
    "wind": (_wind, lambda r: {"q": r.uniform(25.0, 60.0), "h2": r.uniform(0.1, 0.5),
                               "h3": r.uniform(0.0, 0.3), "breath": r.uniform(0.2, 0.6),
                               "attack": r.uniform(0.06, 0.15)}),
    "membrane": (_membrane, lambda r: {"drop": r.uniform(0.05, 0.15), "tau": r.uniform(0.12, 0.35),
                                       "amps": r.uniform(0.3, 1.0, len(MEMBRANE_RATIOS)) * [1, .8, .7, .6, .5]}),
    "bowed": (_bowed, lambda r: {"rate": r.uniform(4.5, 6.5), "depth": r.uniform(25.0, 60.0),
                                 "tilt": r.uniform(0.9, 1.4), "attack": r.uniform(0.08, 0.25)}),
    "mallet": (_mallet, lambda r: {"tau": r.uniform(0.25, 0.5), "r2": r.uniform(3.9, 4.05),
                                   "a2": r.uniform(0.2, 0.45), "r3": r.uniform(9.2, 10.0),
                                   "a3": r.uniform(0.05, 0.2)}),
}


def _plan_notes(label: str, rng: np.random.Generator, duration: float, midi_range: tuple[int, int] = MIDI_RANGE):
    """Return [(onset_s, length_s, midi, velocity)] for one clip, every note's pitch in ``midi_range``."""
    if label in ORDER_ONLY_CLASSES:
        pitches = sample_midi(rng, 2, distinct=True, midi_range=midi_range)
        while abs(pitches[1] - pitches[0]) < MIN_INTERVAL:
            pitches = sample_midi(rng, 2, distinct=True, midi_range=midi_range)
        pitches = np.sort(pitches)[:: 1 if label == ORDER_ONLY_CLASSES[0] else -1]
        lengths, gap = rng.uniform(0.25, 0.4, 2), rng.uniform(1.6, 2.2)
        scale = min(1.0, (duration - 0.1) / (lengths.sum() + gap))  # squeeze only if the clip is too short
        lengths, gap = lengths * scale, gap * scale
        lead = rng.uniform(0.05, max(0.05, duration - 0.05 - lengths.sum() - gap))
        onsets = [lead, lead + lengths[0] + gap]
        return list(zip(onsets, lengths, pitches, rng.uniform(0.6, 1.0, 2)))
    notes = []
    for _ in range(int(rng.integers(1, 5))):
        onset = rng.uniform(0.0, duration - 0.4)
        length = min(rng.uniform(0.3, 1.6), duration - onset)
        notes.append((onset, length, sample_midi(rng, 1, midi_range=midi_range)[0], rng.uniform(0.5, 1.0)))
    return notes


def render_clip(label: str, *, seed: int = 0, index: int = 0, sr: int = 16000,
                min_duration: float = 2.0, max_duration: float = 4.0,
                midi_range: tuple[int, int] = MIDI_RANGE, noise: bool = True) -> np.ndarray:
    """Synthesise clip ``index`` of class ``label`` as float64 in [-0.99, 0.99] (before quantisation);
    its notes' pitches are drawn from ``midi_range`` (benchmarks/register_transfer.py narrows it).
    ``noise=False``: the same clip without its background noise (the same random draws, so the
    tonal part is identical); ``data=demo_events`` places such clean sources over its own noise."""
    rng = clip_rng(seed, CLASSES.index(label), index)
    low = max(min_duration, min(ORDER_ONLY_MIN_DURATION, max_duration)) if label in ORDER_ONLY_CLASSES else min_duration
    duration = rng.uniform(low, max_duration)
    n = int(round(duration * sr))
    synth, sample_params = _TIMBRES["mallet" if label in ORDER_ONLY_CLASSES else label]
    params = sample_params(rng)
    detune = rng.uniform(-30.0, 30.0) / 100.0
    y = np.zeros(n)
    for onset, length, midi, vel in _plan_notes(label, rng, duration, midi_range):
        start = int(round(onset * sr))
        m = min(int(round(length * sr)), n - start)
        if m >= 64:
            y[start:start + m] += vel * synth(float(midi_to_hz(midi + detune)), m, sr, rng, params)
    y = signal.sosfilt(signal.butter(4, [30.0, min(3900.0, 0.45 * sr)], "bandpass", fs=sr, output="sos"), y)
    y /= np.max(np.abs(y)) + 1e-12
    background = rng.standard_normal(n)
    if rng.random() < 0.5:  # pink-ish noise (Paul Kellet's -3 dB/octave filter)
        background = signal.lfilter([0.049922035, -0.095993537, 0.050612699, -0.004408786],
                                    [1.0, -2.494956002, 2.017265875, -0.522189400], background)
    snr_db = rng.uniform(10.0, 30.0)
    background *= np.sqrt(np.mean(y ** 2) / 10 ** (snr_db / 10) / (np.mean(background ** 2) + 1e-20))
    x = y + background if noise else y
    x *= 0.99 * 10 ** (rng.uniform(-20.0, 0.0) / 20) / (np.max(np.abs(x)) + 1e-12)
    if not np.all(np.isfinite(x)):
        raise RuntimeError(f"non-finite audio for {label} clip {index}")
    return x


def write_pcm16(path: Path, x: np.ndarray, sr: int) -> None:
    """`x` (floats in [-1, 1], clipped) as a 16-bit PCM mono WAV at `path`, atomically (temp file + os.replace)."""
    pcm = np.round(np.clip(x, -1.0, 1.0) * 32767.0).astype(np.int16)
    tmp = path.parent / f".{path.stem}.{os.getpid()}.tmp"
    try:
        sf.write(tmp, pcm, sr, subtype="PCM_16", format="WAV")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def generate_demo(root: Path, *, seed: int = 0, clips_per_class: int = 80, sr: int = 16000,
                  min_duration: float = 2.0, max_duration: float = 4.0,
                  progress: bool = True, classes: tuple[str, ...] | list[str] | None = None,
                  midi_range: tuple[int, int] = MIDI_RANGE) -> list[dict]:
    """Write root/<class>/<class>_<index:04d>.wav (16-bit PCM mono, sr) and return one dict per clip:
    {"path": str (absolute), "label": str, "group": str (the file stem)}, in class then index order.

    Deterministic: the same arguments give byte-identical files, and clip i of a class is the
    same whatever ``clips_per_class`` is. Files are written atomically (temp file + os.replace);
    existing files with the same name are overwritten.
    """
    if clips_per_class < 0 or seed < 0 or sr < 8000 or not 0.5 <= min_duration <= max_duration:
        raise ValueError("need clips_per_class >= 0, seed >= 0, sr >= 8000, 0.5 <= min <= max duration")
    from tqdm.auto import tqdm

    root = Path(root).resolve()
    unknown = sorted(set(classes or ()) - set(CLASSES))
    if unknown:
        raise ValueError(f"data.classes: unknown demo classes {unknown}; allowed: {', '.join(CLASSES)}")
    jobs = [(label, i) for label in (classes or CLASSES) for i in range(clips_per_class)]
    records = []
    for label, i in tqdm(jobs, desc="demo clips", unit="clip", disable=not progress):
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{label}_{i:04d}.wav"
        x = render_clip(label, seed=seed, index=i, sr=sr,
                        min_duration=min_duration, max_duration=max_duration, midi_range=midi_range)
        write_pcm16(path, x, sr)
        records.append({"path": str(path), "label": label, "group": path.stem})
    return records


class Settings(GeneratedClips):
    """`data=demo`: synthetic instrument notes made by `generate_demo`."""
    name: Literal["demo"] = "demo"
    clips_per_class: PositiveInt = 100
    classes: ClassNames | None = None

    @model_validator(mode="after")
    def _classes(self):
        unknown = sorted(set(self.classes or ()) - set(CLASSES))
        if unknown:
            raise ValueError(f"data.classes={show(self.classes)}: unknown demo classes {unknown}; allowed: "
                             f"{', '.join(CLASSES)}")
        return self


def collect(data: Settings, raw_root: Path) -> tuple[list[dict], list[str]]:
    """Source adapter (`data=demo`): generate the clips under `raw_root/demo/` and list them."""
    clips = generate_demo(
        Path(raw_root) / "demo", seed=data.seed, clips_per_class=data.clips_per_class, sr=data.sr,
        min_duration=data.min_duration, max_duration=data.max_duration, classes=data.classes,
    )
    return clips, list(data.classes or CLASSES)
