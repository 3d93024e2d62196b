"""The `data` config group (conf/data/) as typed settings: one pydantic model per dataset source.

`DataSettings` holds the keys every source has (how the manifest is split, the longest file kept);
`DatasetCopy` adds a copy on disk (`root`) and, for a dataset that can be fetched, `download`. Each
source module declares its own `Settings` on one of them (`audiocnn.data.sources.parse_data` picks it
by `data.name`), so a key another source takes is an unknown key here. Every rule of the group, the
checks of several keys together and of the files it names included, lives in these models:
`ConfigError` names the first problem in one line (`errors.parse_settings`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, Field, PlainValidator, model_validator

from audiocnn.data.archives import DEFAULT_MAX_BYTES, DEFAULT_MAX_RATIO
from audiocnn.errors import SETTINGS_CONFIG, DownloadError, show

SEED_MAX = 2**32 - 1  # numpy and Lightning seeds are unsigned 32-bit integers
DEFAULT_MAX_SECONDS = 600.0  # longer files are skipped: featurize pads a batch to its longest clip
ALGORITHMS = ("sha256", "md5")  # data.download.checksum's
DEFAULT_TIMEOUT_S = 60.0  # data.download.timeout_s: a transfer that sends nothing for this long has stalled


def _distinct(items: list) -> list:
    if len(set(map(str, items))) != len(items):
        raise ValueError("must hold distinct items")
    return items


def _fold(value):
    """A fold of the dataset: a name, or an integer (Hydra reads `data.fold=3` as one)."""
    if value is None or (type(value) is int) or (isinstance(value, str) and value):
        return value
    raise ValueError("must be null or a fold of the dataset (a name or an integer)")


def _val_groups(value):
    """n > 0 groups drawn for validation, or the groups by name (an all-digit name reads as an integer)."""
    if value is None or (type(value) is int and value > 0):
        return value
    names = isinstance(value, list) and value and all(type(v) is int or (isinstance(v, str) and v) for v in value)
    if names and len(set(map(str, value))) == len(value):
        return value
    raise ValueError("must be null, a positive number of groups, or a list of distinct group names")


def _http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError("must be an http(s) URL")
    return value


def parse_checksum(spec: str) -> tuple[str, str]:
    """`"sha256:ab12..."` -> `("sha256", "ab12...")` (pooch's `known_hash` form)."""
    algorithm, _, digest = str(spec).partition(":")
    if algorithm not in ALGORITHMS or not digest:
        raise DownloadError(f"checksum {spec!r}: write it as '<algorithm>:<hex digest>' with algorithm in {ALGORITHMS}")
    return algorithm, digest.lower()


def _checksum(value: str) -> str:
    try:
        parse_checksum(value)
    except DownloadError:
        raise ValueError("must be null or '<algorithm>:<hex digest>' with algorithm sha256 or md5") from None
    return value


def _group_regex(value: str) -> str:
    """A regex with a named group `group` or a group 1: the clip's group is what it captures."""
    try:
        pattern = re.compile(value)
    except re.error as error:
        raise ValueError(str(error)) from None
    if "group" not in pattern.groupindex and pattern.groups < 1:
        raise ValueError("needs a named group (?P<group>...) or a capturing group")
    return value


Text = Annotated[str, Field(min_length=1)]
Fraction = Annotated[float, Field(gt=0, lt=1)]
Positive = Annotated[float, Field(gt=0)]
PositiveInt = Annotated[int, Field(gt=0)]
NonNegative = Annotated[float, Field(ge=0)]
Count = Annotated[int, Field(ge=0)]
Unit = Annotated[float, Field(ge=0, le=1)]  # [0, 1]
UnitOpen = Annotated[float, Field(gt=0, le=1)]  # (0, 1]
Seed = Annotated[int, Field(ge=0, le=SEED_MAX)]
ClassNames = Annotated[list[Text], Field(min_length=1), AfterValidator(_distinct)]
GroupRegex = Annotated[Text, AfterValidator(_group_regex)]


class Download(BaseModel):
    """Where a known dataset's archive is fetched from (`data.download.*`, `audiocnn.data.download`)."""
    model_config = SETTINGS_CONFIG

    url: Annotated[str, AfterValidator(_http_url)]
    checksum: Annotated[str, AfterValidator(_checksum)] | None = None
    timeout_s: Positive = DEFAULT_TIMEOUT_S
    max_bytes: PositiveInt | None = DEFAULT_MAX_BYTES
    max_ratio: Positive | None = DEFAULT_MAX_RATIO


class DataSettings(BaseModel):
    """The keys every source has; conf/data/*.yaml says what each does."""
    model_config = SETTINGS_CONFIG

    name: str
    fold: Annotated[str | int | None, PlainValidator(_fold)] = None
    protocol: Literal["holdout", "cv"] = "holdout"
    val_groups: Annotated[int | list[str | int] | None, PlainValidator(_val_groups)] = None
    val_fraction: Fraction = 0.15
    test_fraction: Fraction = 0.15
    max_seconds: Positive | None = DEFAULT_MAX_SECONDS

    @model_validator(mode="after")
    def _split(self):
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(f"data.val_fraction + data.test_fraction = {self.val_fraction + self.test_fraction:g}: "
                             "must be below 1 (the rest is the train split)")
        if self.protocol == "cv" and self.fold is not None:
            raise ValueError(f"data.fold={self.fold} with data.protocol=cv: cv runs every fold; set one of them")
        return self


class Generated(DataSettings):
    """A dataset audiocnn makes itself (the demos): the `seed` its clips are drawn from, their rate `sr`."""
    seed: Seed = 0
    sr: PositiveInt = 16000


class GeneratedClips(Generated):
    """Generated clips of `min_duration` to `max_duration` seconds."""
    min_duration: Positive = 2.0
    max_duration: Positive = 4.0

    @model_validator(mode="after")
    def _durations(self):
        if self.min_duration > self.max_duration:
            raise ValueError(f"data.min_duration={show(self.min_duration)}: must be <= "
                             f"data.max_duration={show(self.max_duration)}")
        return self


class DatasetCopy(DataSettings):
    """A dataset read from a folder: `root` (your copy; null: `<paths.raw>/<name>`, fetched by `download`)."""
    root: Text | None = None
    download: Download | None = None

    @model_validator(mode="after")
    def _root(self):
        root = self.root
        if root is not None and not Path(root).exists():
            raise ValueError(f"data.root={root}: no such folder; point it at your copy of {self.name}")
        if root is not None and not Path(root).is_dir():
            raise ValueError(f"data.root={root}: not a folder; point it at your copy of {self.name}")
        if root is not None and Path(root).resolve() == Path(root).resolve().parent:  # prepare would read every file
            raise ValueError(f"data.root={root}: the root of the filesystem; point it at your copy of {self.name}")
        if root is None and self.download is None:
            raise ValueError(f"data.root=null: data={self.name} cannot be downloaded; set data.root to your copy")
        return self
