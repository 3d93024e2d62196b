"""Every exception type of audiocnn (a leaf module: it imports nothing of audiocnn), and
`parse_settings`, which reads a config group into its typed settings (a pydantic model) or
raises the one-line `ConfigError` of its first problem.

Two families reach the user as one line (`config.stage_main` prints them and exits):
- `ConfigError`: a setting is wrong, found before any work (exit status 2); the message
  starts with the setting's dotted name and says what is allowed.
- other `InputError`s: data the user must fix, found while working (exit status 1).
`Unusable` never reaches the user as an error: prepare records it as a skipped file.
"""

from __future__ import annotations

from typing import Any, Mapping, TypeVar

Schema = TypeVar("Schema")


class InputError(Exception):
    """Settings or data the user must fix: `stage_main` prints the message as one line."""


class ConfigError(InputError, ValueError):
    """A setting is wrong; the message starts with the setting's dotted name."""


class TrackingUnavailable(ConfigError):
    """The tracking server does not answer and `tracking.required` is true."""


class ShapeError(ValueError):
    """A conv block shrinks an axis below 1; the message names the block and the sizes."""


class BundleError(InputError, ValueError):
    """A model file (`model.pt`) is not a bundle audiocnn wrote: refused before anything is built.

    The message names the offending key, e.g. `model.pt: model._target_=os.system: not an
    audiocnn model; allowed: ...`. Model files are data, never code.
    """


class MissingInputError(InputError, FileNotFoundError):
    """A stage's input is missing; the message names the stage that makes it."""


class DownloadError(InputError, RuntimeError):
    """A dataset download or archive failed its checks (network, checksum, unsafe member)."""


class ArchiveLimitError(DownloadError):
    """Extracting an archive would write more than `data.download.max_bytes` / `max_ratio` allow.
    The archive itself is fine (it stays downloaded): the setting names what to raise."""


class LeakageError(InputError, RuntimeError):
    """The same recording or group sits in two splits: test accuracy would be inflated."""


class EmptySplitError(InputError, RuntimeError):
    """A split has no usable clip, so training or evaluation would be meaningless."""


class StoreError(InputError, RuntimeError):
    """A feature store is incomplete or damaged (a shard's size differs from the one recorded at
    write time, its checksum does not match, its frames are not finite); the message names the
    shard or clip and says to run featurize again."""


class NonFiniteError(InputError, ArithmeticError):
    """Training met a non-finite input batch (naming its first bad clip) or a non-finite loss.

    Raised in a DataLoader worker, it reaches the main process rebuilt by torch from the
    worker's traceback text ("Caught NonFiniteError in DataLoader worker process 0. Original
    Traceback ..."); the constructor keeps only the original message, so it stays one line.
    """

    def __init__(self, message: str = ""):
        if "\nOriginal Traceback" in message:
            message = message.rstrip().rsplit(f"{type(self).__name__}: ", 1)[-1]
        super().__init__(message)


class LockedError(InputError, TimeoutError):
    """Another process still holds the writer lock of a folder after the lock timeout; the
    message says who (pid, host, start time, from the `.lock.owner` file next to the lock)."""


class StageFailed(InputError, RuntimeError):
    """A stage failed on an unexpected error (`config.stage_main`, which printed its redacted traceback), or
    a stage run in processes of its own exited with an error; the output above says why."""


class Unusable(Exception):
    """A file prepare must skip; `str(error)` is the report's reason, `<category>: <detail>`."""


class RequestError(InputError, ValueError):
    """A serving request the model cannot score (encoding, shape, rate, values, limits).

    The pyfunc answers it with HTTP 400 and this message, which names the field and says
    what to send instead; nothing of the server (traceback, paths) goes with it.
    """


# -- settings ---------------------------------------------------------------------------------------

# The `model_config` of every settings schema: unknown keys refused, values frozen once read, no coercion
# (a bool is no number, 3.0 no integer, "3" neither), NaN and inf refused.
SETTINGS_CONFIG = {"extra": "forbid", "frozen": True, "strict": True, "allow_inf_nan": False}


def show(value: Any) -> str:
    """A plain value as the user writes it on the command line (`null`, `true`, `nan`, `[1, 2]`)."""
    if value is None:
        return "null"
    return str(value).lower() if isinstance(value, bool) else str(value)  # nan, inf: as str() writes them


# pydantic's error types, as audiocnn's messages say them (`ctx` fills the braces); others keep pydantic's words.
RULES = {"greater_than": "must be > {gt}", "greater_than_equal": "must be >= {ge}", "less_than": "must be < {lt}",
         "less_than_equal": "at most {le}", "int_type": "must be an integer", "int_from_float": "must be an integer",
         "float_type": "must be a number", "finite_number": "must be a finite number",
         "bool_type": "allowed: true, false", "literal_error": "allowed: {expected}", "string_type": "must be a string",
         "list_type": "must be a list", "string_too_short": "must be a non-empty string",
         "too_short": "must hold at least {min_length} item(s)",
         "model_type": "must be a mapping", "dict_type": "must be a mapping"}


def _fields_at(schema, path: tuple) -> list[str]:
    """The field names of the (nested) model that `path` (pydantic's `loc` less its last part) leads to."""
    for part in path:
        field = schema.model_fields.get(part) if isinstance(part, str) else None
        nested = [t for t in getattr(field.annotation, "__args__", (field.annotation,)) if hasattr(t, "model_fields")] \
            if field is not None else []
        if not nested:
            return []
        schema = nested[0]
    return [field.alias or name for name, field in schema.model_fields.items()]


def parse_settings(schema: type[Schema], values: Mapping | None, where: str) -> Schema:
    """`values` (a config group as plain Python: `OmegaConf.to_container`) as the pydantic model `schema`,
    or `ConfigError` naming its first problem in one line: `<where>.<key>=<value>: <rule>` (NaN and inf
    are refused by the schemas' `allow_inf_nan=False`), `<where>.<key>: unknown key; allowed: ...`. A check of
    several keys (a model validator's `ValueError`) writes its whole line, `{where}` standing for `where`."""
    from pydantic import ValidationError

    try:
        return schema.model_validate(dict(values or {}))
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        loc = tuple(first["loc"])
        key = (where + "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)).lstrip(".")
        if first["type"] == "extra_forbidden":
            raise ConfigError(f"{key}: unknown key; allowed: {', '.join(_fields_at(schema, loc[:-1]))}") from None
        if first["type"] == "missing":
            raise ConfigError(f"{key}: missing") from None
        message = first["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if not loc:  # a model validator's: the line as it wrote it
            raise ConfigError(message.replace("{where}", where)) from None
        rule = RULES.get(first["type"])
        ctx = {k: format(v, "g") if isinstance(v, float) else v for k, v in first.get("ctx", {}).items()}
        message = rule.format(**ctx) if rule else message[:1].lower() + message[1:]
        raise ConfigError(f"{key}={show(first['input'])}: {message}") from None
