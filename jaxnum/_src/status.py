"""Status codes read as sentences, for one solve or a batch of them (``jax.vmap``)."""

from __future__ import annotations

from typing import Any

import numpy as np


def status_message(status: Any, messages: dict[int, str]) -> str | list:
    """The sentence of a concrete ``status``; for a batch (a vmapped solve), a nested
    list of sentences of the batch's shape.

    Raises:
      TypeError: ``status`` is traced (read ``.status`` inside jit, ``.message`` after).
    """
    try:
        codes = np.asarray(status)
    except Exception as err:  # a tracer: no value yet
        raise TypeError(
            "message needs a concrete status: read .status inside jax.jit and .message "
            "on the result the jitted function returns"
        ) from err
    if codes.ndim == 0:
        return messages[int(codes)]
    return np.vectorize(lambda c: messages[int(c)], otypes=[object])(codes).tolist()
