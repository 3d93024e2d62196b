"""nnAudio's CQT variants against librosa.cqt: fidelity (as in tests/test_cqt_fidelity.py,
plus the edges) and speed.

    .venv/bin/python benchmarks/cqt_variants.py

Variants, all with the default front-end (16 kHz, hop 512, 84 bins from 32.7 Hz, 12 per
octave) and librosa's Q: `CQT1992v2` as nnAudio applies it (one conv1d, every kernel
padded to the longest), `CQT2010v2` (top-octave kernels on a signal halved octave by
octave), and the project's `LogCQT` (CQT1992v2's kernels, one cropped conv1d per octave).
Fidelity: minimum per-clip correlation of log-magnitudes (80 dB range) over the cells
whose kernel lies inside the clip ("inside") and over all cells ("all": edges included),
on 84 pure tones (one per bin), a sweep, white noise and 30 FSDD clips; per-octave
correlation on FSDD (the lowest octave is where they differ). Speed: CQT only, batches
of 64 FSDD clips (resampled once beforehand), audio-seconds per CPU-second on one thread.
Writes benchmarks/results/cqt_variants.json.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import torch
from common import machine
from fsdd_manifest import FSDD
from nnAudio.features import CQT1992v2, CQT2010v2
from pathlib import Path

from audiocnn import atomic
from audiocnn.data.audio import load_audio
from audiocnn.features.cqt import LogCQT, librosa_filter_scale
from audiocnn.features.reference import (bin_frequency, inside_cells, librosa_log_cqt, log_correlation, log_sweep,
                                         tone, white_noise)

P = dict(sr=16000, hop_length=512, fmin=32.70, n_bins=84, bins_per_octave=12)
RESULTS = Path(__file__).parent / "results" / "cqt_variants.json"


def variants() -> dict:
    common = dict(**P, filter_scale=librosa_filter_scale(12), pad_mode="constant", verbose=False)
    v1992, v2010, ours = CQT1992v2(**common), CQT2010v2(**common), LogCQT(**P).eval()

    def logmag(module):
        return lambda x: torch.log(module(x).clamp_min(1e-4))
    return {"CQT1992v2": logmag(v1992), "CQT2010v2": logmag(v2010), "LogCQT (project)": ours}


def fidelity(transform, lengths: np.ndarray, clips: dict[str, list[np.ndarray]]) -> dict:
    out = {}
    for name, waves in clips.items():
        inside, everything, octaves = [], [], []
        for wave in waves:
            with torch.inference_mode():
                ours = transform(torch.from_numpy(wave)[None])[0].numpy()
            ref = librosa_log_cqt(wave, amin=1e-4, **P)
            inside.append(log_correlation(ours, ref, inside_cells(len(wave), P["hop_length"], lengths)))
            everything.append(log_correlation(ours, ref))
            octaves.append([log_correlation(ours[o:o + 12], ref[o:o + 12]) for o in range(0, 84, 12)])
        out[name] = {"inside_min": round(min(inside), 4), "all_min": round(min(everything), 4),
                     "all_mean": round(float(np.mean(everything)), 4),
                     "per_octave_mean": [round(float(x), 3) for x in np.nanmean(octaves, axis=0)]}
    return out


def speed(transform, waves: list[torch.Tensor]) -> float:
    """Audio-seconds per CPU-second on one thread (fair on a shared machine), batches of 64
    clips sorted by length."""
    torch.set_num_threads(1)
    waves = sorted(waves, key=len)
    batches = []
    for i in range(0, len(waves), 64):
        chunk = waves[i:i + 64]
        batch = torch.zeros(len(chunk), max(len(w) for w in chunk))
        for row, wave in enumerate(chunk):
            batch[row, :len(wave)] = wave
        batches.append(batch)
    with torch.inference_mode():
        transform(batches[0])
        started = time.process_time()
        for batch in batches:
            transform(batch)
    return sum(len(w) for w in waves) / P["sr"] / (time.process_time() - started)


def main() -> None:
    warnings.filterwarnings("ignore")
    sr = P["sr"]
    paths = sorted((FSDD / "recordings").glob("*.wav"))
    fsdd = [load_audio(p, sr) for p in paths[::5]]
    clips = {"tones": [tone(bin_frequency(k, P["fmin"], 12), sr, 2.0) for k in range(84)],
             "sweep": [log_sweep(P["fmin"], bin_frequency(83, P["fmin"], 12), sr, 4.0)],
             "noise": [white_noise(sr, 3.0)], "fsdd": [w.numpy() for w in fsdd[::20]]}
    lengths = LogCQT(**P).cqt.lenghts.numpy()
    librosa_log_cqt(np.zeros(4096, np.float32), amin=1e-4, **P)  # numba warm-up
    result = {"machine": machine(), "params": P, "variants": {}}
    for name, transform in variants().items():
        result["variants"][name] = {"fidelity": fidelity(transform, lengths, clips),
                                    "audio_seconds_per_cpu_second": round(speed(transform, fsdd), 1)}
        print(name, result["variants"][name], flush=True)
    atomic.write_json(RESULTS, result)


if __name__ == "__main__":
    main()
