"""Names that come from data (classes, folds, groups) made safe for paths, metric keys and CSV cells.

A dataset chooses its class folders, fold values and group names, so none of them is trusted:
- `slug(name)` is one safe path component and MLflow key part: letters, digits (any script,
  after NFKC normalisation), `_`, `.` and `-`; never empty, never starting or ending with
  `.`/`_`/`-` (so never `.`, `..` or a hidden file), at most `MAX_LENGTH` characters, never a
  Windows device name. `R&B` -> `R_B`, `/../../../tmp/x` -> `tmp_x`, `=cmd` -> `cmd`.
- `slug_map(names, what)` gives each distinct name its slug; names whose slugs collide (ignoring
  case, as macOS and Windows file systems do) are disambiguated deterministically with
  `-<8 hex digits of sha1(name)>`, so `R&B` and `R_B` become `R_B-…` and `R_B-…`. The mapping is
  recorded where it is used (prepare's report.json, repeats.json, the MLflow run's
  `evaluation/metric_keys.json`); reports, test.json and predictions.csv keep the original names.
- `csv_cell` / `read_csv_cell`: CSV-injection escaping (OWASP): a text cell that a spreadsheet
  would evaluate as a formula (it starts with `=`, `+`, `-`, `@`, tab or carriage return) is
  prefixed with `'`. A cell that starts with `'` gets one more `'`, so `read_csv_cell` is the
  exact inverse. Applied symmetrically to the CSVs audiocnn writes for people and reads back
  itself: manifest.csv (written by prepare, read by `data.prepare.read_manifest`) and
  predictions.csv (written by evaluate, pooled by `repeats`). The feature store's index.csv is
  internal and stays raw.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter
from typing import Iterable

import pandas as pd

from audiocnn.errors import InputError

MAX_LENGTH = 64
_UNSAFE = re.compile(r"[^\w.-]+")     # \w: letters and digits of any script, and "_"
_PUNCTUATION_RUN = re.compile(r"[._-]{2,}")  # "a..b", "_.._": one "_" (no "..", no dot-runs)
_EDGES = "._-"
_WINDOWS_DEVICES = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(10)), *(f"LPT{i}" for i in range(10))}
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
ESCAPE = "'"
# The text columns of the CSVs audiocnn writes and reads back (manifest.csv, predictions.csv).
TEXT_COLUMNS = ("path", "label", "labels", "split", "fold", "group", "actual", "predicted", "run")


def _digest(name: str) -> str:
    return hashlib.sha1(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]


def slug(name: object) -> str:
    """`name` as a safe path component / MLflow metric-key part (see the module docstring)."""
    text = str(name)
    safe = _UNSAFE.sub("_", unicodedata.normalize("NFKC", text))
    safe = _PUNCTUATION_RUN.sub("_", safe).strip(_EDGES)
    if not safe:
        return f"h-{_digest(text)}"
    if len(safe) > MAX_LENGTH:  # long names: a prefix plus a digest of the whole name
        safe = f"{safe[:MAX_LENGTH - 9].rstrip(_EDGES)}-{_digest(text)}"
    if safe.split(".")[0].upper() in _WINDOWS_DEVICES:
        safe = f"n-{safe}"
    return safe


def slug_map(names: Iterable[object], what: str = "name") -> dict[str, str]:
    """{name: slug} for the distinct `names`, in order; slugs are unique ignoring case.

    Colliding names get `-<sha1 prefix of the name>` appended (deterministic: it depends only on
    the names). Should even those collide, `InputError` says which `what` names to rename.
    """
    distinct = list(dict.fromkeys(str(n) for n in names))
    base = {name: slug(name) for name in distinct}
    count = Counter(s.casefold() for s in base.values())
    result = {name: s if count[s.casefold()] == 1 else f"{s[:MAX_LENGTH - 9].rstrip(_EDGES)}-{_digest(name)}"
              for name, s in base.items()}
    seen: dict[str, str] = {}
    for name, s in result.items():
        if s.casefold() in seen:
            raise InputError(f"{what} names {seen[s.casefold()]!r} and {name!r} both map to {s!r} in paths and "
                             f"metric keys; rename one of them")
        seen[s.casefold()] = name
    return result


def csv_cell(value: object) -> object:
    """A text cell as written to a CSV for people: formula-like text gets a leading `'`."""
    if isinstance(value, str) and value.startswith((*FORMULA_START, ESCAPE)):
        return ESCAPE + value
    return value


def read_csv_cell(value: object) -> object:
    """Inverse of `csv_cell`: drop one leading `'`."""
    if isinstance(value, str) and value.startswith(ESCAPE):
        return value[1:]
    return value


def escape_columns(frame: pd.DataFrame, columns: Iterable[str] = TEXT_COLUMNS) -> pd.DataFrame:
    """A copy of `frame` with `csv_cell` applied to those of `columns` it has."""
    frame = frame.copy()
    for column in columns:
        if column in frame:
            frame[column] = frame[column].map(csv_cell)
    return frame


def unescape_columns(frame: pd.DataFrame, columns: Iterable[str] = TEXT_COLUMNS) -> pd.DataFrame:
    """`frame` with `read_csv_cell` applied to those of `columns` it has (in place; returned)."""
    for column in columns:
        if column in frame:
            frame[column] = frame[column].map(read_csv_cell)
    return frame
