"""Three ways to compute the project's CQT, side by side with librosa.cqt: speed, work, fidelity.

    .venv/bin/python benchmarks/cqt_variants.py

Variants (all with nnAudio's kernels, librosa's Q, centred frames, zero padding):
- `per-octave conv1d`: the front-end before FRONTEND_VERSION 4 (`PerOctave` below, as it
  was): nnAudio CQT1992v2's kernels, every octave at the full rate, one strided conv1d
  per octave with its kernels cropped to their support.
- `multirate conv1d`: `LogCQT`, the front-end: octaves below the top ones on the signal
  low-passed and halved per octave, kernels built at each octave's rate.
- `multirate FFT`: librosa's method on the same decimated levels: each octave's frames by
  `torch.stft` (rectangular window, n_fft = the kernels' length rounded up to a power of
  2), then a matrix product with the kernels' spectra.
- `librosa.cqt` itself (speed only; it is the reference).

Front-ends: FSDD's speech front-end (`conf/features/speech.yaml`: 8 kHz, hop 128), the
default one the demo uses (`conf/features/cqt.yaml`: 16 kHz, hop 512), and 22.05 kHz, hop
512 (librosa's default rate); 84 bins from 32.7 Hz, 12 per octave.

Fidelity, as tests/test_cqt_fidelity.py measures it: Pearson correlation of
log-magnitudes against `librosa.cqt` (80 dB range) over the cells whose kernel lies
inside the clip, the minimum over clips (at 8 kHz librosa refuses the top bins, whose
band crosses Nyquist: the reference is librosa at 16 kHz on the clip interpolated by FFT,
`audiocnn.features.reference.librosa_log_cqt`), for 84 pure tones (one per bin), an
exponential sweep, white noise and 30 FSDD clips; also over all cells (edges included); peak bins:
how many of the 84 tones peak in their own bin in both. Speed: CQT only, 600 FSDD clips
resampled beforehand, batches of 64 sorted by length, CPU seconds per audio-minute on one
thread (process time: fair on a shared machine). Multiply-adds per audio-second: counted
from the shapes (for the FFT, N log2 N per real FFT of N points, an estimate).
Writes benchmarks/results/cqt_variants.json.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import torch
from common import load_average, machine, save_results
from fsdd_manifest import FSDD
from nnAudio.features import CQT1992v2
from torch import Tensor, nn

from audiocnn.data.audio import load_audio
from audiocnn.features.cqt import LogCQT, librosa_filter_scale, n_frames
from audiocnn.features.reference import (bin_frequency, inside_cells, librosa_log_cqt, log_correlation, log_sweep,
                                         peak_bin, tone, warm_up_librosa, white_noise)

FRONT_ENDS = {
    "speech 8 kHz": dict(sr=8000, hop_length=128, fmin=32.70, n_bins=84, bins_per_octave=12),
    "default 16 kHz": dict(sr=16000, hop_length=512, fmin=32.70, n_bins=84, bins_per_octave=12),
    "22.05 kHz": dict(sr=22050, hop_length=512, fmin=32.70, n_bins=84, bins_per_octave=12),
}
AMIN = 1e-4
RESULTS = Path(__file__).parent / "results" / "cqt_variants.json"


class PerOctave(nn.Module):
    """The front-end before FRONTEND_VERSION 4 (audiocnn/features/cqt.py at 20be806), kept here
    to compare against: (batch, samples) -> (batch, n_bins, frames)."""

    def __init__(self, sr: int, hop_length: int, fmin: float, n_bins: int, bins_per_octave: int, amin: float):
        super().__init__()
        self.hop_length, self.amin = hop_length, amin
        self.cqt = CQT1992v2(sr=sr, hop_length=hop_length, fmin=fmin, n_bins=n_bins, bins_per_octave=bins_per_octave,
                             filter_scale=librosa_filter_scale(bins_per_octave), pad_mode="constant",
                             output_format="Magnitude", verbose=False)
        real = self.cqt.cqt_kernels_real[:, 0]
        self.width, self.groups = real.shape[1], []
        for first in range(0, n_bins, bins_per_octave):
            end = min(first + bins_per_octave, n_bins)
            taps = torch.nonzero(real[first:end].abs().sum(dim=0)).flatten()
            self.groups.append((first, end, int(taps.min()), int(taps.max()) + 1))

    def multiply_adds(self, samples: int) -> int:
        return n_frames(samples, self.hop_length) * sum(2 * (end - first) * (stop - start)
                                                        for first, end, start, stop in self.groups)

    def forward(self, waveform: Tensor) -> Tensor:
        frames = n_frames(waveform.shape[1], self.hop_length)
        padded = nn.functional.pad(waveform, (self.width // 2, self.width // 2))[:, None]
        real, imag = self.cqt.cqt_kernels_real, self.cqt.cqt_kernels_imag
        octaves = []
        for first, end, start, stop in self.groups:
            kernels = torch.cat([real[first:end, :, start:stop], imag[first:end, :, start:stop]])
            span = padded[..., start: (frames - 1) * self.hop_length + stop]
            response = nn.functional.conv1d(span, kernels, stride=self.hop_length)
            bins = end - first
            octaves.append(response[:, :bins].square() + response[:, bins:].square())
        power = torch.cat(octaves, dim=1) * self.cqt.lenghts[:, None]
        return 0.5 * torch.log(power.clamp_min(self.amin ** 2))


class FFTCQT(nn.Module):
    """`LogCQT`'s levels and kernels, each octave by STFT and a product with the kernels' spectra
    (librosa's way): (batch, samples) -> (batch, n_bins, frames), the same numbers within float
    rounding."""

    def __init__(self, cqt: LogCQT):
        super().__init__()
        self.cqt = cqt
        self.n_fft, self.bases = {}, {}
        for o in cqt.octaves:
            n_fft = 1 << (o.taps - 1).bit_length()
            real = cqt.cqt.cqt_kernels_real[o.first:o.end, 0, :o.taps]
            imag = cqt.cqt.cqt_kernels_imag[o.first:o.end, 0, :o.taps]
            spectra = torch.fft.rfft(torch.cat([real, imag]), n=n_fft)  # (2 bins, n_fft / 2 + 1)
            # sum_n g[n] x[n] = Re(sum_f X[f] conj(G[f])) / N over the full spectrum; one-sided: the
            # bins other than DC and Nyquist count twice.
            weight = torch.full((n_fft // 2 + 1,), 2.0 / n_fft)
            weight[0] = weight[-1] = 1.0 / n_fft
            conj = spectra.conj() * weight
            self.n_fft[o.first], self.bases[o.first] = n_fft, torch.cat([conj.real, -conj.imag], dim=1)

    def multiply_adds(self, samples: int) -> int:
        """Decimation as `LogCQT`; per octave and frame, N log2 N for the FFT and the basis product."""
        cqt, frames = self.cqt, n_frames(samples, self.cqt.hop_length)
        total = cqt.multiply_adds(samples) - sum(frames * 2 * (o.end - o.first) * o.taps for o in cqt.octaves)
        for o in cqt.octaves:
            n = self.n_fft[o.first]
            total += frames * (n * int(np.log2(n)) + 2 * (o.end - o.first) * (n + 2))
        return total

    def forward(self, waveform: Tensor) -> Tensor:
        cqt = self.cqt
        frames = n_frames(waveform.shape[1], cqt.hop_length)
        octaves = {}
        for level, signal in enumerate(cqt.signals(waveform)):  # the same decimated levels
            hop = cqt.hop_length >> level
            for o in (o for o in cqt.octaves if o.level == level):
                n_fft, begin = self.n_fft[o.first], cqt.offset[level] - o.centre
                span = signal[:, begin: begin + (frames - 1) * hop + o.taps]
                span = nn.functional.pad(span, (0, n_fft - o.taps))  # zeros under the kernels' zero padding
                spectrum = torch.stft(span, n_fft, hop_length=hop, window=torch.ones(n_fft), center=False,
                                      return_complex=True)  # (batch, n_fft / 2 + 1, frames)
                stacked = torch.cat([spectrum.real, spectrum.imag], dim=1)
                response = torch.matmul(self.bases[o.first], stacked)  # (batch, 2 bins, frames)
                bins = o.end - o.first
                octaves[o.first] = response[:, :bins].square() + response[:, bins:].square()
        power = torch.cat([octaves[first] for first in sorted(octaves)], dim=1) * cqt.cqt.lenghts[:, None]
        return 0.5 * torch.log(power.clamp_min(cqt.amin ** 2))


def variants(params: dict) -> dict:
    return {"per-octave conv1d": PerOctave(**params, amin=AMIN).eval(),
            "multirate conv1d": LogCQT(**params, amin=AMIN).eval(),
            "multirate FFT": FFTCQT(LogCQT(**params, amin=AMIN)).eval()}


def signals(params: dict, fsdd_paths: list[Path]) -> dict[str, list[np.ndarray]]:
    sr, top = params["sr"], bin_frequency(params["n_bins"] - 1, params["fmin"], params["bins_per_octave"])
    return {"tones": [tone(bin_frequency(k, params["fmin"], params["bins_per_octave"]), sr, 2.0)
                      for k in range(params["n_bins"])],
            "sweep": [log_sweep(params["fmin"], top, sr, 4.0)], "noise": [white_noise(sr, 3.0)],
            "fsdd": [load_audio(p, sr).numpy() for p in fsdd_paths]}


def fidelity(transform, params: dict, clips: dict, references: dict, lengths: np.ndarray) -> dict:
    out = {}
    margin = int(np.ceil(lengths.max() / 2 / params["hop_length"]))  # frames the edges reach
    for name, waves in clips.items():
        inside, everything, peaks = [], [], 0
        for wave, ref in zip(waves, references[name]):
            with torch.inference_mode():
                ours = transform(torch.from_numpy(wave)[None])[0].numpy()
            inside.append(log_correlation(ours, ref, inside_cells(len(wave), params["hop_length"], lengths)))
            everything.append(log_correlation(ours, ref))
            if name == "tones":
                peaks += peak_bin(ours, margin) == peak_bin(ref, margin) == len(everything) - 1
        out[name] = {"inside_min": round(min(inside), 4), "all_min": round(min(everything), 4),
                     "all_mean": round(float(np.mean(everything)), 4)}
        if name == "tones":
            out[name]["peak_bins_exact"] = f"{peaks}/{len(waves)}"
    return out


def batches(waves: list[Tensor], size: int = 64) -> list[Tensor]:
    waves, out = sorted(waves, key=len), []
    for i in range(0, len(waves), size):
        chunk = waves[i:i + size]
        batch = torch.zeros(len(chunk), max(len(w) for w in chunk))
        for row, wave in enumerate(chunk):
            batch[row, :len(wave)] = wave
        out.append(batch)
    return out


def seconds_per_audio_minute(transform, waves: list[Tensor], sr: int) -> float:
    """CPU seconds per minute of audio on one thread, the best of 3 passes over all batches."""
    torch.set_num_threads(1)
    groups, best = batches(waves), float("inf")
    with torch.inference_mode():
        transform(groups[0])
        for _ in range(3):
            started = time.process_time()
            for batch in groups:
                transform(batch)
            best = min(best, time.process_time() - started)
    return best / (sum(len(w) for w in waves) / sr / 60)


def librosa_seconds_per_audio_minute(waves: list[np.ndarray], params: dict) -> float:
    started = time.process_time()
    for wave in waves:
        librosa_log_cqt(wave, amin=AMIN, **params)
    return (time.process_time() - started) / (sum(len(w) for w in waves) / params["sr"] / 60)


def main() -> None:
    warnings.filterwarnings("ignore")
    paths = sorted((FSDD / "recordings").glob("*.wav"))
    warm_up_librosa()  # numba compilation, before any timing
    result = {"machine": machine(), "load_average_before": load_average(), "front_ends": {}}
    rows = []
    for label, params in FRONT_ENDS.items():
        sr = params["sr"]
        clips = signals(params, paths[::100])  # 30 clips: every digit and speaker
        references = {name: [librosa_log_cqt(w, amin=AMIN, **params) for w in waves] for name, waves in clips.items()}
        timed = [load_audio(p, sr) for p in paths[::5]]  # 600 clips
        audio_seconds = sum(len(w) for w in timed) / sr
        lengths = LogCQT(**params).cqt.lenghts.numpy()
        entry = {"params": params, "timed_clips": len(timed), "timed_audio_seconds": round(audio_seconds, 1),
                 "variants": {}}
        for name, transform in variants(params).items():
            macs = transform.multiply_adds(sr * 60) / 60
            entry["variants"][name] = {
                "seconds_per_audio_minute": round(seconds_per_audio_minute(transform, timed, sr), 4),
                "multiply_adds_per_audio_second": round(macs),
                "fidelity": fidelity(transform, params, clips, references, lengths)}
            print(label, name, entry["variants"][name], flush=True)
        entry["variants"]["librosa.cqt"] = {"seconds_per_audio_minute": round(
            librosa_seconds_per_audio_minute([w.numpy() for w in timed[:150]], params), 4)}
        result["front_ends"][label] = entry
        for name, v in entry["variants"].items():
            f = v.get("fidelity")
            rows.append(f"| {label} | {name} | {v['seconds_per_audio_minute']:.4f} | "
                        + (f"{v['multiply_adds_per_audio_second'] / 1e6:.2f} M | " if f else "- | ")
                        + (" | ".join(f"{f[s]['inside_min']:.4f}" for s in ("tones", "sweep", "noise", "fsdd"))
                           + f" | {f['fsdd']['all_min']:.4f} | {f['tones']['peak_bins_exact']} |" if f else
                           "reference | | | | | |"))
    save_results(RESULTS, result)
    print("| front-end | variant | CPU s per audio-min (1 thread) | multiply-adds per audio-s | "
          "corr. tones | corr. sweep | corr. noise | corr. FSDD | corr. FSDD, all cells | peak bins exact |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
