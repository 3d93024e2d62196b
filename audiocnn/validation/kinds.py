"""The kinds of rule a setting can have (`Number`, `Choice`, `Text`, lists of them) and `show`,
which writes a value as a user types it on the command line. The table is in `rules`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from omegaconf import DictConfig, ListConfig, OmegaConf

from audiocnn.data.settings import SEED_MAX
from audiocnn.errors import show as show_plain



def show(value) -> str:
    """A value as the user would write it on the command line."""
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=True)
    return show_plain(value)


@dataclass(frozen=True)
class Number:
    """A finite number (an `int` when `integer`) in [low, high] (open ends where said); null if `null`."""
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    integer: bool = False
    null: bool = False

    def allowed(self) -> str:
        kind = "an integer" if self.integer else "a finite number"
        if self.low == 0 and self.low_open and self.high is None:
            text = "a positive integer" if self.integer else "a finite positive number"
        elif self.high is None:
            text = f"{kind} >= {self.low}" if self.low is not None else kind
        else:
            text = f"{kind} in {'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"
        return f"must be {text}" + (" or null" if self.null else "")

    def __call__(self, value) -> str | None:
        if value is None and self.null:
            return None
        ok = isinstance(value, int if self.integer else (int, float)) and not isinstance(value, bool)
        ok = ok and math.isfinite(value)
        if ok and self.low is not None:
            ok = value > self.low if self.low_open else value >= self.low
        if ok and self.high is not None:
            ok = value < self.high if self.high_open else value <= self.high
        return None if ok else self.allowed()


@dataclass(frozen=True)
class Choice:
    """One of `values` (compared with their type: 1 is not true)."""
    values: tuple

    def __call__(self, value) -> str | None:
        ok = any(value == v and type(value) is type(v) for v in self.values)
        return None if ok else f"allowed: {', '.join(show(v) for v in self.values)}"


@dataclass(frozen=True)
class Text:
    """A non-empty string (null too when `null`)."""
    null: bool = False

    def __call__(self, value) -> str | None:
        if (value is None and self.null) or (isinstance(value, str) and value.strip()):
            return None
        return "must be a non-empty string" + (" or null" if self.null else "")


def _list_of(check: Callable, what: str, distinct: bool = True, null: bool = True, empty: bool = False):
    """A list whose items pass `check` (distinct unless told), or null."""
    def rule(value) -> str | None:
        if value is None and null:
            return None
        items = list(value) if isinstance(value, (list, ListConfig)) else None
        if items is None or (not items and not empty) or any(check(i) for i in items) or (
                distinct and len({show(i) for i in items}) != len(items)):
            return f"must be {what}" + (" or null" if null else "")
        return None
    return rule


POSITIVE = Number(0, low_open=True)
COUNT = Number(0, integer=True)
SEED = Number(0, SEED_MAX, integer=True)
BOOL = Choice((True, False))
