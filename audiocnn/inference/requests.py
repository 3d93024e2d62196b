"""Serving requests: what a client sent -> clips the model may score, or a `RequestError` saying why not.

The logged model (`audiocnn.inference.pyfunc`) takes, in process or over HTTP
(`mlflow models serve`):
    a DataFrame (`{"dataframe_records": [...]}`, `{"dataframe_split": ...}`): one row per clip;
    a list of records (`{"inputs": [{...}, ...]}`): one dict per clip;
    a dict (`{"inputs": {...}}`): ONE clip when `sample_rate` is a number (or, for a file,
        `audio_base64` is a string), e.g. `{"samples": ndarray(400, 2), "sample_rate": 16000}`
        is one stereo clip of 400 samples; columns, entry i of each being clip i, when
        `sample_rate` (or `audio_base64`) is a list: `{"samples": [a, b], "sample_rate": [16000, 8000]}`.
        (MLflow's `inputs` parser hands strings and numbers over as 0-d arrays: read as the value.)
A clip is either
    audio_base64   a whole audio file (WAV, FLAC, OGG, MP3: what libsndfile reads), base64, or
    samples        numbers shaped `(samples,)` (mono) or `(samples, channels)` (channels last), and
    sample_rate    their rate: a whole number of Hz.
A request is read in two steps, against `Limits` (the `serving` config group, stored with the
logged model):
  1. At most max_clips clips (`check_clip_count`); `read_clip`, for every clip, looks at what the
     clip declares, decoding nothing: an array's shape, a file's header (libsndfile reads the
     header only). Rate in [min_sample_rate, max_sample_rate], channels <= max_channels, length
     <= max_seconds. Then the request's cost (`request_cost`): its samples (samples x channels as
     sent plus samples at the model's rate, summed over the clips) <= max_request_samples. A
     product, so 8 channels x 384 kHz x 599 s is refused from its header, before a byte is decoded.
  2. `clip_waveform` decodes one clip to mono at the model's rate: a file in blocks of `BLOCK`
     frames, each block checked and downmixed as it comes (the `(samples, channels)` float32 copy of
     the whole file never exists), never more frames than its header declared; every value finite
     with |x| <= max_amplitude; then resampled.
The pyfunc runs step 2 and the scoring inside a `Budget` of max_samples_in_flight (per worker
process), so concurrent requests are queued up to queue_seconds and then refused (`Busy`, 503).
Anything else is a `RequestError` whose message names the field, the value and what to send
instead; one bad clip refuses the whole request.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Any, Iterator, Mapping

import numpy as np
import pandas as pd
import soundfile as sf
from pydantic import BaseModel, Field, model_validator

from audiocnn.data.audio import probe_bytes, resample_array, resampled_length
from audiocnn.errors import SETTINGS_CONFIG, RequestError, parse_settings

CLIP_KEYS = ("audio_base64", "samples", "sample_rate")
NEEDS = "each clip needs audio_base64, or samples and sample_rate"
ONE_CLIP = '{"samples": [...], "sample_rate": 16000} or {"audio_base64": "..."}'
READABLE = "an audio file libsndfile reads (WAV, FLAC, OGG, MP3, ...)"
BLOCK = 1 << 16  # frames decoded at a time: at most 8 MB of float32 for 32 channels


PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]


class Limits(BaseModel):
    """What a request may hold: the `serving` config group (conf/serving/default.yaml has the same defaults)."""
    model_config = SETTINGS_CONFIG

    max_seconds: PositiveFloat = 600.0
    min_sample_rate: PositiveInt = 1_000
    max_sample_rate: PositiveInt = 384_000
    max_channels: PositiveInt = 32
    max_amplitude: PositiveFloat = 1_000.0
    max_clips: PositiveInt = 64
    max_request_samples: PositiveInt = 32_000_000
    max_samples_in_flight: PositiveInt = 32_000_000
    queue_seconds: PositiveFloat = 10.0

    @model_validator(mode="after")
    def _consistent(self) -> "Limits":
        if self.min_sample_rate > self.max_sample_rate:
            raise ValueError(f"{{where}}.min_sample_rate={self.min_sample_rate}: above {{where}}.max_sample_rate="
                             f"{self.max_sample_rate}")
        if self.max_request_samples > self.max_samples_in_flight:
            raise ValueError(f"{{where}}.max_request_samples={self.max_request_samples}: above {{where}}."
                             f"max_samples_in_flight={self.max_samples_in_flight} (such a request could never be "
                             "served)")
        return self

    @classmethod
    def from_settings(cls, settings: Mapping | None, where: str = "serving") -> "Limits":
        """`settings` (the `serving` group or a logged model's `model_config`; missing keys take
        the defaults) as limits; a `ConfigError` naming the first bad setting."""
        return parse_settings(cls, settings, where)

    def as_dict(self) -> dict:
        return self.model_dump()


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


class Values:
    """Running checks of a clip's values, block by block: every value finite, |x| <= max_amplitude
    (NaN or 1e30 would make NaN probabilities)."""

    def __init__(self, limits: Limits, name: str):
        self.limits, self.name, self.bad, self.peak = limits, name, 0, 0.0

    def add(self, block: np.ndarray) -> None:
        finite = int(np.count_nonzero(np.isfinite(block)))
        self.bad += block.size - finite
        if finite == block.size and block.size:  # min and max: no |x| copy of the block
            self.peak = max(self.peak, -float(block.min()), float(block.max()))

    def check(self) -> None:
        if self.bad:
            raise RequestError(f"{self.name}: {self.bad} values are NaN or infinite; send finite floats in [-1, 1]")
        if self.peak > self.limits.max_amplitude:
            raise RequestError(f"{self.name}: peak |x| = {self.peak:.3g} exceeds serving.max_amplitude="
                               f"{self.limits.max_amplitude:g}; send floats in [-1, 1] (integer PCM divided by its "
                               "full scale, e.g. 32768 for 16-bit)")


@dataclass(frozen=True)
class Clip:
    """One clip as it declares itself (an array's shape, a file's header): checked, not decoded."""

    rate: int
    frames: int
    channels: int
    samples: np.ndarray | None = None  # `(frames, channels)` numbers, or
    data: bytes | None = None  # an audio file's bytes

    def cost(self, sr: int) -> int:
        """Samples it brings: samples x channels as sent, plus its samples at the model's rate `sr`."""
        return self.frames * self.channels + resampled_length(self.frames, self.rate, sr)


def _value(cell: Any) -> Any:
    """MLflow's `inputs` parser turns each value into an array: a 0-d one is the value itself."""
    if isinstance(cell, np.ndarray) and cell.ndim == 0 or isinstance(cell, np.generic):
        return cell.item()
    return cell


def read_samples(samples: Any, rate: int, limits: Limits) -> Clip:
    """A clip's `samples` -> `Clip` holding them as `(samples, channels)`, or a `RequestError`."""
    shapes = "send (samples,) for mono or (samples, channels), channels last"
    if isinstance(samples, (str, bytes, Mapping)):
        raise RequestError(f"samples: must be an array of numbers, got {type(samples).__name__}; {shapes}")
    try:
        array = np.asarray(samples)
        if array.dtype.kind not in "iuf":
            if array.dtype.kind != "O":
                raise TypeError(array.dtype)
            array = np.asarray(array.tolist(), dtype=np.float64)  # cells of a DataFrame, arrays of arrays
    except (ValueError, TypeError, OverflowError):
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
    return Clip(rate, frames, channels, samples=array)


def read_file(encoded: Any, limits: Limits) -> Clip:
    """`audio_base64` -> `Clip` from the file's header (nothing decoded), or a `RequestError`."""
    if not isinstance(encoded, str):
        raise RequestError(f"audio_base64: must be a base64 string, got {type(encoded).__name__}")
    text = "".join(encoded.split())  # MIME base64 wraps lines
    if not text:
        raise RequestError("audio_base64: empty")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise RequestError(f"audio_base64: not valid base64 ({error})") from None
    try:
        info = probe_bytes(data)
    except ValueError:
        raise RequestError("audio_base64: the file holds no audio frames") from None
    except Exception:  # noqa: BLE001 - whatever libsndfile says about garbage, the answer is the same
        raise RequestError(f"audio_base64: {len(data)} bytes that are not {READABLE}") from None
    rate = check_rate(info.sr, limits, "audio_base64: the file's sample rate")
    if info.channels > limits.max_channels:
        raise RequestError(f"audio_base64: the file has {info.channels} channels; at most "
                           f"serving.max_channels={limits.max_channels}")
    if info.frames > limits.max_seconds * rate:
        raise RequestError(f"audio_base64: the file lasts {info.duration:.1f} s, longer than "
                           f"serving.max_seconds={limits.max_seconds:g}")
    return Clip(rate, info.frames, info.channels, data=data)


def read_clip(record: Mapping, limits: Limits) -> Clip:
    """One clip's record -> `Clip` (checked on its shape or header, not decoded), or a `RequestError`."""
    unknown = [key for key in record if key not in CLIP_KEYS]
    if unknown:
        raise RequestError(f"unknown field {unknown[0]!r}; {NEEDS}")
    encoded, samples, rate = (_value(record.get(key)) for key in CLIP_KEYS)
    if _present(encoded):
        if _present(samples) or _present(rate):
            raise RequestError("audio_base64 goes alone (the file holds its own rate): send audio_base64, "
                               "or samples and sample_rate, not both")
        return read_file(encoded, limits)
    if _present(samples):
        if not _present(rate):
            raise RequestError("sample_rate: missing; give the rate of samples in Hz, e.g. 16000")
        return read_samples(samples, check_rate(rate, limits), limits)
    raise RequestError(NEEDS)


def check_clip_count(records: list, limits: Limits) -> None:
    if not records:
        raise RequestError(f"the request holds no clips; send {ONE_CLIP}")
    if len(records) > limits.max_clips:
        raise RequestError(f"the request holds {len(records)} clips; at most serving.max_clips={limits.max_clips} "
                           "per request (send the others in further requests)")


def request_cost(clips: list[Clip], limits: Limits, sr: int) -> int:
    """The samples a request brings (`Clip.cost` summed), checked against max_request_samples."""
    cost = sum(clip.cost(sr) for clip in clips)
    if cost > limits.max_request_samples:
        sent = sum(clip.frames * clip.channels for clip in clips)
        raise RequestError(f"the request's {len(clips)} clip(s) hold {sent} samples x channels, {cost} with their "
                           f"samples at the model's {sr} Hz: more than serving.max_request_samples="
                           f"{limits.max_request_samples} (send fewer, shorter, or mono clips, or a lower rate)")
    return cost


def decode_mono(data: bytes, frames: int, values: Values) -> np.ndarray:
    """An audio file's bytes -> mono float32 `(samples,)` at its own rate, decoded `BLOCK` frames at a
    time, each block checked (`values`) and downmixed (channel mean) as it comes; a file that decodes
    to more than the `frames` its header declared is refused as soon as it passes them."""
    mono = np.empty(frames, np.float32)
    done = 0
    try:
        with sf.SoundFile(io.BytesIO(data)) as audio:
            for block in audio.blocks(BLOCK, dtype="float32", always_2d=True):
                if done + len(block) > frames:
                    raise RequestError(f"audio_base64: the file decodes to more than the {frames} frames its "
                                       "header declares (a corrupt or forged file)")
                values.add(block)
                mono[done: done + len(block)] = block.mean(axis=1, dtype=np.float32)
                done += len(block)
    except RequestError:
        raise
    except Exception:  # noqa: BLE001
        raise RequestError(f"audio_base64: decoding failed (a truncated or corrupt file; send {READABLE})") from None
    if done == 0:
        raise RequestError("audio_base64: the file holds no audio frames")
    return mono[:done]


def clip_waveform(clip: Clip, limits: Limits, sr: int) -> np.ndarray:
    """A `Clip` -> mono float32 `(samples,)` at `sr`: decoded (files in blocks), values checked,
    downmixed (channel mean), resampled; or a `RequestError`."""
    if clip.data is not None:
        values = Values(limits, "audio_base64")
        mono = decode_mono(clip.data, clip.frames, values)
    else:
        values = Values(limits, "samples")
        values.add(clip.samples)
        mono = clip.samples.mean(axis=1, dtype=np.float32)
    values.check()
    return resample_array(mono, clip.rate, sr)


class Busy(Exception):
    """The worker has no room for a request within serving.queue_seconds (HTTP 503: retry later)."""


class Budget:
    """The samples (`Clip.cost`) of the requests a worker process decodes and scores at once, at most
    `capacity` (serving.max_samples_in_flight): MLflow's server runs requests in threads, so a request
    waits for room up to `wait` seconds, then is refused with `Busy`."""

    def __init__(self, capacity: int):
        self.capacity, self.used = int(capacity), 0
        self._room = threading.Condition()

    @contextmanager
    def hold(self, cost: int, wait: float) -> Iterator[None]:
        with self._room:
            if not self._room.wait_for(lambda: self.used + cost <= self.capacity, timeout=max(wait, 0.0)):
                raise Busy(f"the server is busy: {self.used} of its serving.max_samples_in_flight={self.capacity} "
                           f"samples are being scored and this request needs {cost}; none freed within "
                           f"serving.queue_seconds; retry later")
            self.used += cost
        try:
            yield
        finally:
            with self._room:
                self.used -= cost
                self._room.notify_all()

