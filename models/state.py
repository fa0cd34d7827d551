"""Estimator state to bytes and back, for checkpoints.

Pickle keeps River's estimators exact (the P² quantile included) at no
per-event cost.  Loading only accepts the classes a checkpoint can contain,
so bytes planted in the checkpoint topic cannot make a worker run code.

>>> from models.measures import make_estimator
>>> from models.spec import Measure
>>> quantile = make_estimator(Measure(kind="quantile", path="x", q=0.5))
>>> for x in range(1, 100):
...     quantile.update(float(x))
>>> loads(dumps(quantile)).get() == quantile.get()
True
>>> loads(dumps(print))  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
models.errors.CheckpointError: checkpoint refers to builtins.print, which a checkpoint ...
"""

from __future__ import annotations

import io
import pickle
import zlib
from typing import Any

from models.errors import CheckpointError

_ALLOWED_MODULE_PREFIXES = ("models.", "river.")
_ALLOWED_BUILTINS = {
    ("builtins", name)
    for name in (
        "dict",
        "list",
        "tuple",
        "set",
        "frozenset",
        "float",
        "int",
        "str",
        "bytes",
        "bool",
        "object",
        "getattr",
        "slice",
        "complex",
    )
}
_ALLOWED = _ALLOWED_BUILTINS | {
    ("collections", "deque"),
    ("collections", "OrderedDict"),
    ("collections", "defaultdict"),
    ("copyreg", "_reconstructor"),
    ("copyreg", "__newobj__"),
    ("functools", "partial"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED or module.startswith(_ALLOWED_MODULE_PREFIXES):
            return super().find_class(module, name)
        raise CheckpointError(
            f"checkpoint refers to {module}.{name}, which a checkpoint never contains; "
            "the checkpoint topic holds foreign data: delete the topic and restart the workers"
        )


def dumps(state: Any) -> bytes:
    """Compressed pickle of ``state``."""
    return zlib.compress(pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL), 3)


def loads(data: bytes) -> Any:
    """Inverse of :func:`dumps`, refusing anything but cpi-monitor and River state."""
    try:
        raw = zlib.decompress(data)
    except zlib.error as error:
        raise CheckpointError(
            f"checkpoint is not compressed state ({error}); delete the checkpoint topic "
            "and restart the workers"
        ) from None
    return _RestrictedUnpickler(io.BytesIO(raw)).load()
