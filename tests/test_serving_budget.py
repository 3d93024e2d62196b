"""Serving survives requests that are cheap to send and dear to decode (#23 items 5 and 9).

A request's cost (clips, samples x channels, samples at the model's rate) is checked from shapes
and file headers before anything is decoded; files are decoded in blocks and downmixed block by
block; the requests of a worker share a budget of samples in flight (503 when it has no room).
Unit tests here, in process; then the same cases over ONE real `mlflow models serve`, started
under a memory cap (RLIMIT_DATA), whose worker's peak RSS is checked after the requests.
Every hostile input is built for real: the FLAC files are written by libsndfile.
"""

from __future__ import annotations

import base64
import io
import json
import os
import resource
import subprocess
import threading
import time
import tracemalloc
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import numpy as np
import pytest
import soundfile as sf
from mlflow.exceptions import MlflowException
from mlflow.utils.proto_json_utils import parse_tf_serving_input

from audiocnn.errors import ConfigError, RequestError
from audiocnn.inference.pyfunc import log_audio_model, model_config
from audiocnn.inference.requests import (BLOCK, Budget, Busy, Limits, Values, decode_mono, read_clip,
                                         request_cost)
from tests.conftest import tiny_classifier, untrained_bundle

SR = 16000
RNG = np.random.default_rng(0)


def silent_flac(seconds: float, rate: int = 384_000, channels: int = 8) -> bytes:
    """A FLAC file of silence (8 channels at 384 kHz by default: FLAC allows both), written
    by libsndfile one second at a time; silence compresses to a few KB per second."""
    buffer = io.BytesIO()
    second = np.zeros((rate, channels), np.int16)
    with sf.SoundFile(buffer, "w", samplerate=rate, channels=channels, format="FLAC", subtype="PCM_16") as out:
        whole, rest = divmod(int(seconds * rate), rate)
        for _ in range(whole):
            out.write(second)
        out.write(second[:rest])
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def wav(samples: np.ndarray, sr: int = SR) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, sr, format="WAV", subtype="FLOAT")
    return buffer.getvalue()


# ----------------------------------------------------------------- in process


def test_the_cost_is_a_product_read_from_the_header_before_decoding():
    """8 channels x 384 kHz x 30 s: each of seconds, rate and channels is within its limit, their
    product (92 M samples) is not; refused from the header, nothing decoded."""
    limits = Limits()
    clip = read_clip({"audio_base64": b64(silent_flac(30))}, limits)
    assert (clip.rate, clip.frames, clip.channels) == (384_000, 30 * 384_000, 8)
    tracemalloc.start()
    try:
        with pytest.raises(RequestError, match=r"hold 92160000 samples x channels, 92640000 with their samples at "
                                               r"the model's 16000 Hz: more than serving.max_request_samples=32000000"):
            request_cost([clip], limits, SR)
        assert tracemalloc.get_traced_memory()[1] < 1 << 20  # nothing decoded
    finally:
        tracemalloc.stop()
    # Arrays count the same way, from their shape: 5 clips of 2 s of 16 kHz stereo = 5 x (64,000 + 32,000).
    clips = [read_clip({"samples": np.zeros((32000, 2)), "sample_rate": SR}, limits) for _ in range(5)]
    assert request_cost(clips, limits, SR) == 5 * (64_000 + 32_000)
    with pytest.raises(RequestError, match="serving.max_request_samples=400000"):
        request_cost(clips, Limits(max_request_samples=400_000, max_samples_in_flight=400_000), SR)


def test_a_file_is_decoded_in_blocks_downmixed_as_it_comes():
    """The mono result equals the channel mean of the whole decode; the peak memory of decoding
    8 x 384 kHz x 30 s (a 369 MB float32 array whole) is the mono result and one block."""
    noisy = RNG.uniform(-0.5, 0.5, (3 * BLOCK + 123, 3)).astype(np.float32)
    data = wav(noisy)
    mono = decode_mono(data, len(noisy), Values(Limits(), "audio_base64"))
    assert mono.shape == (len(noisy),)
    np.testing.assert_allclose(mono, noisy.mean(axis=1), atol=1e-6)

    silence = silent_flac(30)
    tracemalloc.start()
    try:
        mono = decode_mono(silence, 30 * 384_000, Values(Limits(), "audio_base64"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert mono.shape == (30 * 384_000,) and not mono.any()
    assert peak < mono.nbytes + 16 * BLOCK * 8 * 4, f"peak {peak / 2**20:.0f} MB for a {mono.nbytes / 2**20:.0f} MB result"


def test_a_file_longer_than_its_header_says_is_stopped_while_decoding():
    """A header that under-reports cannot make decoding unbounded: decoding stops one block past
    the frames the header declared (the declared count is what the request's cost was checked on)."""
    data = wav(RNG.uniform(-0.5, 0.5, (4 * BLOCK, 2)).astype(np.float32))
    with pytest.raises(RequestError, match=f"decodes to more than the {BLOCK} frames its header declares"):
        decode_mono(data, BLOCK, Values(Limits(), "audio_base64"))


def test_values_are_checked_block_by_block():
    bad = RNG.uniform(-0.5, 0.5, (2 * BLOCK + 5, 2)).astype(np.float32)
    bad[BLOCK + 3, 1] = np.nan
    bad[2 * BLOCK + 1, 0] = np.inf
    values = Values(Limits(), "audio_base64")
    decode_mono(wav(bad), len(bad), values)
    with pytest.raises(RequestError, match="audio_base64: 2 values are NaN or infinite"):
        values.check()
    loud = np.full((BLOCK + 9, 2), 0.25, np.float32)
    loud[BLOCK + 2, 1] = -2000.0
    values = Values(Limits(), "audio_base64")
    decode_mono(wav(loud), len(loud), values)
    with pytest.raises(RequestError, match=r"peak \|x\| = 2e\+03 exceeds serving.max_amplitude=1000"):
        values.check()


def test_the_budget_queues_requests_and_refuses_one_that_finds_no_room():
    budget = Budget(100)
    first_in, release, second = threading.Event(), threading.Event(), {}

    def first():
        with budget.hold(80, wait=1):
            first_in.set()
            release.wait(30)

    def waiting():
        started = time.monotonic()
        with budget.hold(50, wait=30):
            second["waited"] = time.monotonic() - started

    holder = threading.Thread(target=first)
    holder.start()
    assert first_in.wait(30)
    with pytest.raises(Busy, match=r"80 of its serving.max_samples_in_flight=100 samples are being scored and this "
                                   r"request needs 50; none freed within serving.queue_seconds; retry later"):
        with budget.hold(50, wait=0.05):
            pass
    with budget.hold(20, wait=0):  # what fits goes in at once
        assert budget.used == 100
    queued = threading.Thread(target=waiting)
    queued.start()
    time.sleep(0.2)
    assert "waited" not in second  # still queued
    release.set()
    holder.join(30)
    queued.join(30)
    assert second["waited"] >= 0.2 and budget.used == 0


def test_the_new_limits_are_validated_like_the_others():
    from audiocnn.config import compose_config, validate_config

    with pytest.raises(ConfigError, match="serving.max_clips=0: must be > 0"):
        validate_config(compose_config(["serving.max_clips=0"]))
    with pytest.raises(ConfigError, match="serving.queue_seconds=nan: must be a finite number"):
        Limits.from_settings({"queue_seconds": float("nan")})
    with pytest.raises(ConfigError, match="serving.max_request_samples=2000: above serving.max_samples_in_flight=1000"):
        Limits.from_settings({"max_request_samples": 2000, "max_samples_in_flight": 1000})
    assert model_config({"max_clips": 8})["max_clips"] == 8


def test_the_documented_inputs_form_is_read_as_mlflow_parses_it(tmp_path, monkeypatch):
    """`{"inputs": {"audio_base64": "..."}}` (was 400 "got ndarray"): MLflow's parser hands the
    string over as a 0-d numpy array; so are `sample_rate` and a list of records' values."""
    classifier = tiny_classifier(tmp_path)
    clip = RNG.uniform(-0.3, 0.3, 8000).astype(np.float32)
    encoded = b64(wav(clip))
    expected = classifier.predict(None, [{"audio_base64": encoded}])[0]["probabilities"]
    for inputs in ({"audio_base64": encoded}, [{"audio_base64": encoded}], {"audio_base64": [encoded]},
                   {"samples": clip.tolist(), "sample_rate": SR}):
        parsed = parse_tf_serving_input({"inputs": inputs})
        answer = classifier.predict(None, parsed)
        assert len(answer) == 1 and answer[0]["probabilities"] == pytest.approx(expected, abs=1e-5), inputs
    # Scoring stops once the server's request timeout has passed (it has answered 504 by then).
    monkeypatch.setenv("MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT", "0")
    with pytest.raises(MlflowException, match="stopped after 0 of 1 clips: past the server's request timeout") as late:
        classifier.predict(None, {"audio_base64": encoded})
    assert late.value.get_http_status_code() == 504 and classifier.budget.used == 0


def test_a_busy_worker_answers_503_with_its_reason(tmp_path):
    classifier = tiny_classifier(tmp_path, {"queue_seconds": 0.01})
    with classifier.budget.hold(classifier.limits.max_samples_in_flight, wait=0):
        with pytest.raises(MlflowException, match="the server is busy: 32000000 of its serving.max_samples_in_flight"
                                                  "=32000000 samples are being scored") as busy:
            classifier.predict(None, {"samples": np.zeros(400), "sample_rate": SR})
    assert busy.value.get_http_status_code() == 503 and busy.value.error_code == "TEMPORARILY_UNAVAILABLE"
    assert len(classifier.predict(None, {"samples": np.zeros(400), "sample_rate": SR})) == 1  # room again


# ----------------------------------------------------------------- over HTTP

MEMORY_CAP_MB = 3000  # RLIMIT_DATA of the server: a regression fails (MemoryError) instead of taking the machine


def post(url: str, body: str | dict, timeout: float = 120) -> tuple[int, str]:
    data = (body if isinstance(body, str) else json.dumps(body)).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def worker_status(process: subprocess.Popen) -> dict[str, int]:
    """VmRSS / VmHWM (kB) of the uvicorn worker `mlflow models serve` started."""
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
    assert len(children) == 1, children
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{children[0]}/status").read_text().splitlines())
    return {key: int(fields[key].split()[0]) for key in ("VmRSS", "VmHWM")}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """ONE `mlflow models serve` of an untrained model logged with the default limits, except a
    short `queue_seconds` so that contention shows as 503s; under RLIMIT_DATA."""
    from tests.test_serving import served

    root = tmp_path_factory.mktemp("budget")
    bundle = untrained_bundle(root / "bundle")
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    mlflow.set_experiment("budget")
    try:
        with mlflow.start_run():
            info = log_audio_model(bundle, config=model_config({"queue_seconds": 0.01}))
        model_dir = Path(mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(root / "model")))
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI", None)

    def cap_memory():
        resource.setrlimit(resource.RLIMIT_DATA, (MEMORY_CAP_MB << 20, MEMORY_CAP_MB << 20))

    with served(model_dir, root, preexec_fn=cap_memory) as (url, process):
        worker = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()[0]
        assert f"{MEMORY_CAP_MB << 20}" in Path(f"/proc/{worker}/limits").read_text()  # the cap holds in the worker
        yield url, process, worker_status(process)["VmRSS"]


def answers(url: str) -> None:
    """The server is up and answers a normal request 200."""
    status, body = post(f"{url}/invocations", {"inputs": {"samples": RNG.uniform(-0.3, 0.3, 4000).tolist(),
                                                          "sample_rate": SR}})
    assert status == 200 and len(json.loads(body)["predictions"]) == 1, (status, body[:300])


def refused(status: int, body: str, code: int, reason: str) -> None:
    assert status == code, (status, body[:500])
    error = json.loads(body)
    assert reason in error["reason"], error["reason"]
    assert "Traceback" not in body and "site-packages" not in body


@pytest.mark.slow
def test_served_hostile_flac_of_599_s_8_channels_384_khz_is_refused_from_its_header(server):
    """The issue's file: 2 MB of FLAC (2.7 MB of base64), 1.84 G samples x channels (7.4 GB of
    float32 decoded whole). Was: the worker OOM-killed and `mlflow models serve` gone."""
    url, process, _ = server
    encoded = b64(silent_flac(599))
    assert len(encoded) < 4_000_000
    started = time.monotonic()
    for payload in ({"inputs": {"audio_base64": encoded}}, {"dataframe_records": [{"audio_base64": encoded}]}):
        refused(*post(f"{url}/invocations", payload), 400,
                "hold 1840128000 samples x channels, 1849712000 with their samples at the model's 16000 Hz: "
                "more than serving.max_request_samples=32000000")
    assert time.monotonic() - started < 30
    answers(url)


@pytest.mark.slow
def test_served_six_parallel_dear_requests_are_refused_or_queued_and_the_server_stays_up(server):
    """Six parallel copies of a 330 KB base64 FLAC (8 ch x 384 kHz x 73 s: 225 M samples each, which
    killed the worker) are each refused 400; six parallel requests that each fit (8 ch x 384 kHz x 10 s,
    30.9 M of the 32 M budget) are scored one at a time: 200, or 503 with the reason once
    `queue_seconds` (here 0.01 s) has passed without room."""
    url, process, _ = server
    dear = b64(silent_flac(73))
    assert 250_000 < len(dear) < 400_000
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda _: post(f"{url}/invocations", {"inputs": {"audio_base64": dear}}), range(6)))
    for result in results:
        refused(*result, 400, "more than serving.max_request_samples=32000000")

    fits = b64(silent_flac(10))
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda _: post(f"{url}/invocations", {"inputs": {"audio_base64": fits}}), range(6)))
    statuses = sorted(status for status, _ in results)
    print("six that fit:", statuses)
    assert set(statuses) <= {200, 503} and 200 in statuses and 503 in statuses, statuses
    for status, body in results:
        if status == 503:
            refused(status, body, 503, "the server is busy: ")
            assert "retry later" in body and json.loads(body)["error_code"] == "TEMPORARILY_UNAVAILABLE"
    answers(url)


@pytest.mark.slow
def test_served_fifteen_thousand_tiny_clips_are_refused_at_once(server):
    """Was: a 504 after 60 s while the worker went on for 70 s more."""
    url, _, _ = server
    started = time.monotonic()
    refused(*post(f"{url}/invocations", {"inputs": [{"samples": [0.1, -0.1], "sample_rate": SR}] * 15_000}), 400,
            "the request holds 15000 clips; at most serving.max_clips=64 per request")
    assert time.monotonic() - started < 30
    status, body = post(f"{url}/invocations", {"inputs": [{"samples": [0.1, -0.1], "sample_rate": SR}] * 64})
    assert status == 200 and len(json.loads(body)["predictions"]) == 64


@pytest.mark.slow
def test_served_documented_inputs_form_answers(server):
    """`{"inputs": {"audio_base64": ...}}` (was 400 "must be a base64 string, got ndarray"), a list of
    such records, and `{"inputs": {"samples": [...], "sample_rate": 16000}}` all answer as
    `dataframe_records` does."""
    url, _, _ = server
    clip = RNG.uniform(-0.3, 0.3, 8000).astype(np.float32)
    encoded = b64(wav(clip))
    status, body = post(f"{url}/invocations", {"dataframe_records": [{"audio_base64": encoded}]})
    assert status == 200, body
    expected = json.loads(body)["predictions"][0]["probabilities"]
    for inputs in ({"audio_base64": encoded}, [{"audio_base64": encoded}],
                   {"samples": clip.tolist(), "sample_rate": SR}):
        status, body = post(f"{url}/invocations", {"inputs": inputs})
        assert status == 200, (inputs if isinstance(inputs, list) else list(inputs), body[:300])
        assert json.loads(body)["predictions"][0]["probabilities"] == pytest.approx(expected, abs=1e-5)


@pytest.mark.slow
def test_served_what_mlflow_answers_before_the_model(server):
    """JSON the scoring server's parser fails on never reaches the model: nesting 100,000 deep
    (RecursionError) and a 5,000-digit integer (Python's 4,300-digit limit) get MLflow's bare
    500 "Internal Server Error" (the traceback goes to the server's log only); the server stays up.
    Nesting it parses (50 deep) and a 30-digit integer reach the model and get its 400."""
    url, _, _ = server
    deep = "[" * 100_000 + "0.1" + "]" * 100_000
    for body in ('{"inputs": {"samples": ' + deep + ', "sample_rate": 16000}}',
                 '{"inputs": {"samples": [0.1, 0.2], "sample_rate": ' + "9" * 5000 + "}}"):
        status, answer = post(f"{url}/invocations", body)
        assert (status, answer) == (500, "Internal Server Error")
    refused(*post(f"{url}/invocations", '{"inputs": {"samples": ' + "[" * 50 + "0.1" + "]" * 50
                  + ', "sample_rate": 16000}}'), 400, "has 50 dimensions")
    refused(*post(f"{url}/invocations", '{"inputs": {"samples": [0.1, 0.2], "sample_rate": ' + "9" * 30 + "}}"),
            400, "sample_rate=" + "9" * 30 + ": above serving.max_sample_rate=384000")
    refused(*post(f"{url}/invocations", '{"inputs": {"samples": [0.1, ' + "9" * 30 + '], "sample_rate": 16000}}'),
            400, "peak |x| = 1e+30 exceeds serving.max_amplitude")
    answers(url)


@pytest.mark.slow
def test_served_worker_memory_stayed_bounded(server):
    """After every request of this module (last in the file): the worker is the one that started,
    and its peak RSS rose by less than 400 MB over its size after loading (decoding the 599 s file
    whole would have taken 7.4 GB; the cap would have refused it)."""
    url, process, started_kb = server
    answers(url)
    assert process.poll() is None
    peak_kb = worker_status(process)["VmHWM"]
    print(f"worker: {started_kb >> 10} MB after loading, peak {peak_kb >> 10} MB")
    assert peak_kb - started_kb < 400 * 1024, f"peak {peak_kb >> 10} MB, {started_kb >> 10} MB after loading"
