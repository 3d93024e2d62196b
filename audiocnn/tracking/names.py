"""What a run is called, and what of a setting may be written down (credentials never are).

Redaction: the user info of a URI (`http://user:secret@host` -> `http://***@host`) and the value
of every setting whose key contains `password`, `token` or `secret` (`db.password=***`) are
replaced by `***` in whatever audiocnn logs to MLflow (params, tags, run names) or prints.

Run names: `<model>-<data>[-<what the overrides change>]`, short enough for the MLflow runs
table (`MAX_NAME_LENGTH`). Of the overrides only those that change the experiment count: not
where files go (`paths.*`, `data.root`, `data.csv`, any value that is a path or a URI), not
tracking (`tracking.*`, `hydra.*`), not credentials, not `data.protocol` (a parent run's name ends
in `-cv` or `-seeds`, its children's in their fold and seed: `-fold-3`). Keys are shortened to their last part
(`optimizer.lr=3e-4` -> `lr=3e-4`) unless two kept overrides share it. A name over the cap is
cut and ends in a digest of all it would have said, so it stays deterministic and distinct.
"""

from __future__ import annotations

import hashlib
import re
from typing import Iterable

REDACTED = "***"
SECRET_WORDS = ("password", "token", "secret")
MAX_NAME_LENGTH = 56
# Keys (or key prefixes ending in ".") that say where things are or go, never what is trained.
NOT_IN_NAMES = ("paths.", "data.protocol", "tracking.", "hydra.", "data.root", "data.csv", "data.url", "data.archive",
                "data.cache", "serving.", "trainer.resume", "trainer.devices", "trainer.num_nodes",
                "trainer.accelerator", "features.num_workers")
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^\s/@]+)@")


def is_secret(key: str) -> bool:
    """Whether a setting's value must never be written down (its key names a password, token or secret)."""
    key = key.lower()
    return any(word in key for word in SECRET_WORDS)


def redact(text: str) -> str:
    """`text` with the user info of every URI in it replaced by `***` (`https://***@host/...`)."""
    return _USERINFO.sub(lambda m: f"{m['scheme']}{REDACTED}@", text)


def redact_setting(key: str, value: str) -> str:
    """The value of `key` as it may be logged: `***` for a secret, else with URI credentials removed."""
    return REDACTED if is_secret(key) else redact(str(value))


def redact_override(override: str) -> str:
    """One Hydra override (`+db.password=x`, `tracking.uri=http://u:p@h`) as it may be logged."""
    key, sep, value = override.partition("=")
    return f"{key}{sep}{redact_setting(key, value)}" if sep else redact(override)


def redact_overrides(overrides: str | Iterable[str]) -> str:
    """Space-separated overrides (a string of them, or a list) with credentials removed."""
    items = overrides.split() if isinstance(overrides, str) else list(overrides)
    return " ".join(redact_override(o) for o in items)


def _split(overrides: str | Iterable[str]) -> list[str]:
    """Overrides given as a list, or as a string joined by spaces or commas (Hydra's `a=1,b=2` kept
    whole where a comma is inside brackets: `model.blocks=[16,32]`)."""
    if not isinstance(overrides, str):
        return [o for o in overrides if o]
    items, depth, current = [], 0, ""
    for char in overrides:
        if char in "[({":
            depth += 1
        elif char in "])}":
            depth -= 1
        if char in ", " and depth == 0:
            items.append(current)
            current = ""
        else:
            current += char
    items.append(current)
    return [item for item in items if item]


def _is_location(value: str) -> bool:
    """A path or a URI (what says where, not what)."""
    return "://" in value or "/" in value or "\\" in value or value.startswith(("~", "."))


def name_parts(overrides: str | Iterable[str]) -> list[str]:
    """The overrides that change the experiment, shortened (`lr=3e-4`), in the order given."""
    kept = []
    for override in _split(overrides):
        key, sep, value = override.lstrip("+~").partition("=")
        if (not sep or key in ("model", "data") or is_secret(key) or _is_location(value)
                or any(key == p or (p.endswith(".") and key.startswith(p)) for p in NOT_IN_NAMES)):
            continue
        kept.append((key, value))
    last = [key.rsplit(".", 1)[-1] for key, _ in kept]
    return [f"{short if last.count(short) == 1 else key}={value}" for (key, value), short in zip(kept, last)]


def run_name(model: str, data: str, overrides: str | Iterable[str] = "", kind: str = "") -> str:
    """`<model>-<data>[-<name_parts>][-<kind>]`, at most `MAX_NAME_LENGTH` characters."""
    name = "-".join(p for p in (model, data, ",".join(name_parts(overrides)), kind) if p)
    if len(name) <= MAX_NAME_LENGTH:
        return name
    digest = hashlib.md5(name.encode()).hexdigest()[:6]
    tail = f"~{digest}" + (f"-{kind}" if kind else "")
    return name[:MAX_NAME_LENGTH - len(tail)] + tail
