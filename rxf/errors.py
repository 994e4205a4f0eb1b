"""Exceptions and warnings raised by rxf."""

from __future__ import annotations

import os
import sys
import warnings
from types import FrameType


class RXFError(ValueError):
    """A model or configuration that rxf cannot regularize as asked.

    Raised early (at :func:`rxf.wrap` or config time), with a message that names the field
    or module at fault and how to fix it.
    """


class RXFPrecisionWarning(UserWarning):
    """The noise is below the resolution of the embedding's dtype and is partly rounded away."""


class RXFUnusedTermWarning(UserWarning):
    """A training forward's consistency term reached no loss: that step was unregularized."""


class RXFZeroTermWarning(UserWarning):
    """The two passes of a training forward gave identical outputs, so the term is exactly 0.

    R-Drop (and R3F with ``eps=0``) measure the difference that dropout makes: a model
    without active dropout gets no regularization from them. With noise, identical passes
    mean the perturbation was rounded away (autocast to a half-precision dtype).
    """


def warn(message: str, category: type[Warning]) -> None:
    """``warnings.warn`` attributed to the first frame outside rxf and torch: the user's
    line (``model(**batch)``), not ``torch/nn/modules/module.py``."""
    import torch

    internal = (os.path.dirname(__file__) + os.sep, os.path.dirname(torch.__file__) + os.sep)
    frame: FrameType | None = sys._getframe(1)
    level = 2
    while frame is not None and frame.f_code.co_filename.startswith(internal):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
