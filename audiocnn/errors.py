"""Every exception type of audiocnn (a leaf module: it imports nothing of audiocnn).

Two families reach the user as one line (`config.stage_main` prints them and exits):
- `ConfigError`: a setting is wrong, found before any work (exit status 2); the message
  starts with the setting's dotted name and says what is allowed.
- other `InputError`s: data the user must fix, found while working (exit status 1).
`Unusable` never reaches the user as an error: prepare records it as a skipped file.
"""

from __future__ import annotations


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


class LeakageError(InputError, RuntimeError):
    """The same recording or group sits in two splits: test accuracy would be inflated."""


class EmptySplitError(InputError, RuntimeError):
    """A split has no usable clip, so training or evaluation would be meaningless."""


class StageFailed(InputError, RuntimeError):
    """A stage run in processes of its own exited with an error; their output above says why."""


class Unusable(Exception):
    """A file prepare must skip; `str(error)` is the report's reason, `<category>: <detail>`."""


class RequestError(InputError, ValueError):
    """A serving request the model cannot score (encoding, shape, rate, values, limits).

    The pyfunc answers it with HTTP 400 and this message, which names the field and says
    what to send instead; nothing of the server (traceback, paths) goes with it.
    """
