"""Serving requests: what a client sent -> clips the model may score, or a `RequestError` saying why not.

The logged model (`audiocnn.inference.pyfunc`) takes, in process or over HTTP
(`mlflow models serve`):
    a DataFrame (`{"dataframe_records": [...]}`, `{"dataframe_split": ...}`): one row per clip;
    a list of records (`{"inputs": [{...}, ...]}`): one dict per clip;
    a dict (`{"inputs": {...}}`): ONE clip when `sample_rate` is a number (or, for a file,
        `audio_base64` is a string), e.g. `{"samples": ndarray(400, 2), "sample_rate": 16000}`
        is one stereo clip of 400 samples; columns, entry i of each being clip i, when
        `sample_rate` (or `audio_base64`) is a list: `{"samples": [a, b], "sample_rate": [16000, 8000]}`.
A clip is either
    audio_base64   a whole audio file (WAV, FLAC, OGG, MP3: what libsndfile reads), base64, or
    samples        numbers shaped `(samples,)` (mono) or `(samples, channels)` (channels last), and
    sample_rate    their rate: a whole number of Hz.
`parse_clip` returns `(samples, channels)` float32 and its rate, checked against `Limits`
(the `serving` config group, stored with the logged model): length <= max_seconds, rate in
[min_sample_rate, max_sample_rate], channels <= max_channels, every value finite with
|x| <= max_amplitude. Anything else is a `RequestError` whose message names the field, the
value and what to send instead; one bad clip refuses the whole request.
"""

from __future__ import annotations

import base64
import binascii
import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import numpy as np
import pandas as pd

from audiocnn.data.audio import probe_bytes, read_bytes
from audiocnn.errors import ConfigError, RequestError

CLIP_KEYS = ("audio_base64", "samples", "sample_rate")
NEEDS = "each clip needs audio_base64, or samples and sample_rate"
ONE_CLIP = '{"samples": [...], "sample_rate": 16000} or {"audio_base64": "..."}'


@dataclass(frozen=True)
class Limits:
    """What a request may hold (conf/serving/default.yaml has the same defaults)."""

    max_seconds: float = 600.0
    min_sample_rate: int = 1_000
    max_sample_rate: int = 384_000
    max_channels: int = 32
    max_amplitude: float = 1_000.0

    @classmethod
    def from_settings(cls, settings: Mapping | None, where: str = "serving") -> "Limits":
        """`settings` (the `serving` group or a logged model's `model_config`; missing keys take
        the defaults) as limits; a `ConfigError` naming the first bad setting."""
        values = {**asdict(cls()), **dict(settings or {})}
        fields = asdict(cls())
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise ConfigError(f"{where}.{unknown[0]}: unknown key; allowed: {', '.join(fields)}")
        for key, value in values.items():
            whole = isinstance(fields[key], int)
            if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
                    or value <= 0 or (whole and value != int(value))):
                kind = "a positive whole number" if whole else "a positive number"
                raise ConfigError(f"{where}.{key}={value!r}: must be {kind} (not NaN or inf)")
        if values["min_sample_rate"] > values["max_sample_rate"]:
            raise ConfigError(f"{where}.min_sample_rate={values['min_sample_rate']}: above "
                              f"{where}.max_sample_rate={values['max_sample_rate']}")
        return cls(**{k: type(fields[k])(v) for k, v in values.items()})

    def as_dict(self) -> dict:
        return asdict(self)


def validate_serving(cfg) -> None:
    """Check the `serving` config group before any work (`ConfigError` naming the setting)."""
    from omegaconf import OmegaConf

    settings = cfg.get("serving")
    Limits.from_settings(OmegaConf.to_container(settings, resolve=True) if settings is not None else None)


def _is_list(value: Any) -> bool:
    return isinstance(value, (list, tuple)) or (isinstance(value, np.ndarray) and value.ndim >= 1)


def _present(value: Any) -> bool:
    """False for a missing cell: None, or the NaN pandas puts where a row has no such column."""
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def as_records(model_input: Any) -> list[dict]:
    """DataFrame / dict (one clip, or columns) / list of records -> one dict per clip."""
    if isinstance(model_input, pd.DataFrame):
        return model_input.to_dict(orient="records")
    if isinstance(model_input, Mapping):
        columns = dict(model_input)
        rate, encoded = columns.get("sample_rate"), columns.get("audio_base64")
        if (_present(rate) and not _is_list(rate)) or (not _present(rate) and not _is_list(encoded)):
            return [columns]  # one clip
        lengths = {key: len(value) if _is_list(value) else None for key, value in columns.items()}
        if None in lengths.values() or len(set(lengths.values())) > 1:
            shown = ", ".join(f"{k}: {'one value' if n is None else f'{n} entries'}" for k, n in lengths.items())
            raise RequestError(f"columns of different lengths ({shown}): with sample_rate (or audio_base64) as a "
                               f"list, every field is a list with one entry per clip; for ONE clip send {ONE_CLIP}")
        return [{key: value[i] for key, value in columns.items()} for i in range(next(iter(lengths.values())))]
    if isinstance(model_input, (list, tuple)) and all(isinstance(row, Mapping) for row in model_input):
        return [dict(row) for row in model_input]
    raise RequestError(f"unsupported input ({type(model_input).__name__}); send one clip as {ONE_CLIP}, "
                       "or a list of such records, one per clip")


def check_rate(value: Any, limits: Limits, name: str = "sample_rate") -> int:
    """A sample rate from a request -> int Hz, or a `RequestError` saying what is wrong with it."""
    accepted = f"serving accepts {limits.min_sample_rate} to {limits.max_sample_rate} Hz"
    if isinstance(value, np.ndarray) and value.ndim == 0 or isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(f"{name}={value!r}: must be a number of Hz, e.g. 16000 ({accepted})")
    if not math.isfinite(value):
        raise RequestError(f"{name}={value}: not a finite number of Hz ({accepted})")
    if value == 0:
        raise RequestError(f"{name}=0: a rate must be a positive number of Hz ({accepted})")
    if value < 0:
        raise RequestError(f"{name}={value:g}: negative; a rate is a positive number of Hz ({accepted})")
    if value != int(value):
        raise RequestError(f"{name}={value}: not a whole number of Hz ({accepted})")
    rate = int(value)
    if rate < limits.min_sample_rate:
        raise RequestError(f"{name}={rate}: below serving.min_sample_rate={limits.min_sample_rate} Hz")
    if rate > limits.max_sample_rate:
        raise RequestError(f"{name}={rate}: above serving.max_sample_rate={limits.max_sample_rate} Hz")
    return rate


def check_values(samples: np.ndarray, limits: Limits, name: str) -> None:
    """Every value finite and |x| <= max_amplitude (NaN/1e30 would make NaN probabilities)."""
    bad = samples.size - int(np.count_nonzero(np.isfinite(samples)))
    if bad:
        raise RequestError(f"{name}: {bad} values are NaN or infinite; send finite floats in [-1, 1]")
    peak = float(np.abs(samples).max())
    if peak > limits.max_amplitude:
        raise RequestError(f"{name}: peak |x| = {peak:.3g} exceeds serving.max_amplitude={limits.max_amplitude:g}; "
                           "send floats in [-1, 1] (integer PCM divided by its full scale, e.g. 32768 for 16-bit)")


def check_samples(samples: Any, rate: int, limits: Limits) -> np.ndarray:
    """A clip's `samples` -> `(samples, channels)` float32, or a `RequestError`."""
    shapes = "send (samples,) for mono or (samples, channels), channels last"
    if isinstance(samples, (str, bytes, Mapping)):
        raise RequestError(f"samples: must be an array of numbers, got {type(samples).__name__}; {shapes}")
    try:
        array = np.asarray(samples)
        if array.dtype.kind not in "iuf":
            if array.dtype.kind != "O":
                raise TypeError(array.dtype)
            array = np.asarray(array.tolist(), dtype=np.float64)  # cells of a DataFrame, arrays of arrays
        array = array.astype(np.float64, copy=False)
    except (ValueError, TypeError):
        raise RequestError(f"samples: not a rectangular array of numbers; {shapes}, every row with the same "
                           "number of channels") from None
    shape = tuple(array.shape)
    if array.ndim == 0:
        raise RequestError(f"samples: a single number; {shapes}")
    if array.ndim > 2:
        raise RequestError(f"samples: shape {shape} has {array.ndim} dimensions; one clip is {shapes} "
                           "(several clips: give sample_rate as a list, one rate per clip)")
    if array.size == 0:
        raise RequestError("samples: empty; a clip needs at least one sample")
    array = array.reshape(len(array), -1)
    frames, channels = array.shape
    if channels > limits.max_channels:
        if frames <= limits.max_channels:
            raise RequestError(f"samples: shape {shape} looks channels-first ({frames} channels of {channels} "
                               f"samples); send (samples, channels), i.e. transposed to {(channels, frames)}, "
                               "or one channel as (samples,)")
        raise RequestError(f"samples: shape {shape} has {channels} channels; at most "
                           f"serving.max_channels={limits.max_channels} ({shapes})")
    if frames > limits.max_seconds * rate:
        raise RequestError(f"samples: {frames} samples at {rate} Hz = {frames / rate:.1f} s, longer than "
                           f"serving.max_seconds={limits.max_seconds:g}")
    check_values(array, limits, "samples")
    return array.astype(np.float32)


def decode_clip(encoded: Any, limits: Limits) -> tuple[np.ndarray, int]:
    """`audio_base64` -> (`(samples, channels)` float32, the file's rate), or a `RequestError`."""
    if not isinstance(encoded, str):
        raise RequestError(f"audio_base64: must be a base64 string, got {type(encoded).__name__}")
    text = "".join(encoded.split())  # MIME base64 wraps lines
    if not text:
        raise RequestError("audio_base64: empty")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise RequestError(f"audio_base64: not valid base64 ({error})") from None
    readable = "an audio file libsndfile reads (WAV, FLAC, OGG, MP3, ...)"
    try:
        info = probe_bytes(data)
    except ValueError:
        raise RequestError("audio_base64: the file holds no audio frames") from None
    except Exception:  # noqa: BLE001 - whatever libsndfile says about garbage, the answer is the same
        raise RequestError(f"audio_base64: {len(data)} bytes that are not {readable}") from None
    rate = check_rate(info.sr, limits, "audio_base64: the file's sample rate")
    if info.channels > limits.max_channels:
        raise RequestError(f"audio_base64: the file has {info.channels} channels; at most "
                           f"serving.max_channels={limits.max_channels}")
    longest = int(limits.max_seconds * rate)
    if info.frames > longest:
        raise RequestError(f"audio_base64: the file lasts {info.duration:.1f} s, longer than "
                           f"serving.max_seconds={limits.max_seconds:g}")
    try:  # at most one frame past the limit: a header that under-reports cannot make this unbounded
        samples, _ = read_bytes(data, max_frames=longest + 1)
    except Exception:  # noqa: BLE001
        raise RequestError(f"audio_base64: decoding failed (a truncated or corrupt file; send {readable})") from None
    if len(samples) > longest:
        raise RequestError(f"audio_base64: the file lasts more than serving.max_seconds={limits.max_seconds:g} s")
    if len(samples) == 0:
        raise RequestError("audio_base64: the file holds no audio frames")
    check_values(samples, limits, "audio_base64")
    return samples, rate


def parse_clip(record: Mapping, limits: Limits) -> tuple[np.ndarray, int]:
    """One clip's record -> (`(samples, channels)` float32, its rate in Hz), or a `RequestError`."""
    unknown = [key for key in record if key not in CLIP_KEYS]
    if unknown:
        raise RequestError(f"unknown field {unknown[0]!r}; {NEEDS}")
    encoded, samples, rate = (record.get(key) for key in CLIP_KEYS)
    if _present(encoded):
        if _present(samples) or _present(rate):
            raise RequestError("audio_base64 goes alone (the file holds its own rate): send audio_base64, "
                               "or samples and sample_rate, not both")
        return decode_clip(encoded, limits)
    if _present(samples):
        if not _present(rate):
            raise RequestError("sample_rate: missing; give the rate of samples in Hz, e.g. 16000")
        rate = check_rate(rate, limits)
        return check_samples(samples, rate, limits), rate
    raise RequestError(NEEDS)
