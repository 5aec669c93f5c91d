"""Reading `torch.save` files safely: tensors and plain containers only, never other pickled objects."""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping
from typing import IO, Any

from backends.weights.errors import WeightsError, WeightsFormatError


def load_tensor_dict(
    source: str | IO[bytes], origin: object, *, what: str, mmap: bool = False
) -> Mapping[str, Any]:
    """The dictionary a `torch.save` file holds, read with `weights_only=True`.

    `origin` names the file in messages; `what` says what importing it is, for the message shown
    when PyTorch is not installed. Raises WeightsError without PyTorch and WeightsFormatError for
    anything that is not a plain dictionary of tensors (a pickle that would run code is refused
    before it runs).
    """
    try:
        import torch  # lazily: torch is optional and only these importers need it
    except ImportError:
        raise WeightsError(
            f"{what} needs PyTorch; install it with `pip install 'styletransfer-server[torch]'`"
        ) from None
    try:
        state = torch.load(source, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        first_line = str(error).splitlines()[0]
        raise WeightsFormatError(
            f"{origin} is not a plain PyTorch state_dict (refused to unpickle it: {first_line})"
        ) from None
    except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile) as error:
        raise WeightsFormatError(f"{origin} is not a PyTorch file: {error}") from None
    if not isinstance(state, Mapping):
        raise WeightsFormatError(f"{origin} holds a {type(state).__name__}, not a state_dict")
    return state
