"""Reading torch checkpoint files (`.pt`) as data, never as code.

`torch.load` unpickles: a file from elsewhere can run any code as it loads, unless `weights_only=True` restricts
it to tensors and plain data. Every checkpoint embedkit and its agents read goes through `load_tensors`:

    state = load_tensors(checkpoint / "trainer_state.pt")   # dicts, lists, tuples, numbers, strings, tensors
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

from embedkit.errors import EmbedkitError


def load_tensors(path: str | Path, *, map_location: str = "cpu") -> Any:
    """`torch.load(path, weights_only=True)`: tensors and plain Python data only.

    A file holding anything else (an object whose unpickling could run code) is refused, and a damaged or
    missing file is reported, each as an `EmbedkitError` naming the file.
    """
    import torch

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise EmbedkitError(f"{path} is missing") from None
    except OSError as error:  # a folder in its place, no permission
        raise EmbedkitError(f"cannot read {path}: {error.strerror or error}") from None
    except pickle.UnpicklingError as error:
        refused = _UNSAFE_GLOBAL.search(str(error))
        if refused:
            raise EmbedkitError(
                f"refusing to load {path}: it holds a Python object ({refused.group(1)}) rather than tensors and "
                "plain data, and loading it could run code. Use a checkpoint written by embedkit, or convert one "
                "from a source you trust to plain tensors"
            ) from None
        raise EmbedkitError(f"cannot read {path}: it is damaged or not a torch checkpoint ({_first_line(error)})") from None
    except (RuntimeError, EOFError, ValueError) as error:
        raise EmbedkitError(f"cannot read {path}: it is damaged or not a torch checkpoint ({_first_line(error)})") from None


_UNSAFE_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    detail = next((line for line in lines if "unsupported" in line.lower()), lines[0] if lines else "")
    return (detail or type(error).__name__)[:200]
