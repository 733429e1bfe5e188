"""What the `whatif` command reports as a usage error: one line, exit status 2.

A usage error is a mistake the person at the command line can fix: a bad argument, a missing
file, a checkpoint that is not one, an image that cannot be read, a finding the refiner does not
know, an edit region that does not fit the image, a path that cannot be read or written.
Everything else (a bug in the library, say) is not caught here: it shows its traceback and exits
non-zero, so it is not mistaken for the user's fault.
"""

from __future__ import annotations

import sys


class UsageError(Exception):
    """A mistake in the command line or its inputs: shown as one line, exit status 2."""


# The library's own errors that mean "the input is wrong", as (module, class name). They are
# looked up in sys.modules rather than imported, so that the CLI starts without importing torch:
# an exception of one of these classes can only exist once its module has been imported.
_LIBRARY_INPUT_ERRORS = (
    ("model.modeling", "CheckpointError"),
    ("model.preprocess", "ImageInputError"),
    ("model.refine.refiner", "NoFindingRecognised"),
    ("model.regions", "RegionError"),
    ("training.loop", "TrainingError"),
    ("training.phantom.findings", "FindingError"),
)
# A path that does not exist or cannot be written, a full disk: the machine's state, the user's to fix.
_OS_INPUT_ERRORS = (OSError,)


def is_usage_error(exc: BaseException) -> bool:
    """True for the exceptions `whatif` reports as usage errors (see the module docstring)."""
    if isinstance(exc, (UsageError, *_OS_INPUT_ERRORS)):
        return True
    for module, name in _LIBRARY_INPUT_ERRORS:
        cls = getattr(sys.modules.get(module), name, None)
        if cls is not None and isinstance(exc, cls):
            return True
    return False
