"""Checkpoints that move between machines: saved with CPU tensors, loadable where CUDA is missing.

PyTorch tags every tensor of a checkpoint with the device it was on when saved, and ``torch.load`` without a
``map_location`` puts it back there: a ``model.pt`` saved from a GPU then fails on a CPU-only machine with
"Attempting to deserialize object on a CUDA device but torch.cuda.is_available() is False". This project

- saves CPU tensors (:func:`to_cpu`, used by the best-model saver and the resumable checkpoints), so its files
  load anywhere; the loaders that resume a run move them to the run's device;
- loads with ``map_location="cpu"`` where it reads checkpoints itself (:func:`read_checkpoint`, which also names
  what is wrong with a file that is no weights-only checkpoint; :func:`load_checkpoint` is the plain load);
- and, for loaders it does not control (MONAI's ``ckpt_export`` / ``CheckpointLoader`` without ``map_location``,
  ignite's ``Checkpoint.load_objects``) and for files saved by older versions with CUDA tensors, registers with
  ``torch.serialization`` a restore rule that leaves a CUDA-tagged tensor on the CPU when this machine has no CUDA
  device of that index (:func:`install_cpu_fallback`, done when a run's network is built by
  :func:`~monai_nasscam.networks.run_folder.build_network`, as every bundle config and MONAI's ``ckpt_export`` do;
  importing ``monai_nasscam`` does not). On a machine with that GPU nothing changes.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
from collections.abc import Mapping
from typing import Any

import torch

__all__ = [
    "to_cpu",
    "load_checkpoint",
    "read_checkpoint",
    "install_cpu_fallback",
    "cuda_location_missing",
]

#: priority of the restore rule in ``torch.serialization``'s registry: before CUDA's own (20), after the CPU's (10)
_FALLBACK_PRIORITY = 19
_CUDA_LOCATION = re.compile(r"^cuda(?::(\d+))?$")


def to_cpu(obj: Any) -> Any:
    """``obj`` with every tensor in it (nested dicts, lists, tuples) detached and moved to the CPU; other values are
    returned as they are. A state dict on a GPU becomes one that ``torch.load`` reads on any machine."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        out = type(obj)()
        for key, value in obj.items():
            out[key] = to_cpu(value)
        if hasattr(obj, "_metadata"):  # a module's state dict keeps its version metadata
            out._metadata = obj._metadata  # type: ignore[attr-defined]
        return out
    if isinstance(obj, Mapping):
        return {key: to_cpu(value) for key, value in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # named tuple
        return type(obj)(*(to_cpu(v) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def cuda_location_missing(location: str) -> bool:
    """``True`` if ``location`` (a storage's tag in a checkpoint, e.g. ``"cuda:1"``) names a CUDA device this
    machine does not have (no CUDA at all, or fewer devices)."""
    match = _CUDA_LOCATION.match(str(location))
    if match is None:
        return False
    if not torch.cuda.is_available():
        return True
    return int(match.group(1) or 0) >= torch.cuda.device_count()


def _restore_on_cpu(storage: Any, location: str) -> Any:
    """``torch.serialization`` deserializer: a storage tagged with a missing CUDA device stays on the CPU (where
    ``torch.load`` has read it); ``None`` (let the next rule decide) otherwise."""
    if not cuda_location_missing(location):
        return None
    warnings.warn(
        f"a checkpoint saved with {location} tensors is loaded onto the CPU: this machine has no {location}.",
        stacklevel=2,
    )
    return storage


def _no_tag(storage: Any) -> None:
    return None  # tagging on save is left to torch's own rules


def install_cpu_fallback() -> None:
    """Register :func:`_restore_on_cpu` with ``torch.serialization`` (once per process)."""
    registry = getattr(torch.serialization, "_package_registry", [])
    if any(fn is _restore_on_cpu for _, _, fn in registry):
        return
    torch.serialization.register_package(_FALLBACK_PRIORITY, _no_tag, _restore_on_cpu)


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu", weights_only: bool = True) -> Any:
    """``torch.load(path, map_location=map_location, weights_only=weights_only)``: by default the tensors on the
    CPU whatever device they were saved from, and nothing but tensors and plain containers unpickled."""
    return torch.load(os.fspath(path), map_location=map_location, weights_only=weights_only)


#: the first bytes of the two formats ``torch.save`` writes: a zip archive (since PyTorch 1.6) or a pickle stream
_ZIP_MAGIC, _PICKLE_PROTOCOL = b"PK\x03\x04", b"\x80"


def _describe_start(head: bytes) -> str:
    """The start of a file that is no checkpoint, in words: the first line of a text, else the first bytes."""
    text = None
    for cut in range(4):  # the 64 bytes read may end inside a multi-byte character
        try:
            text = head[: len(head) - cut].decode("utf-8")
            break
        except UnicodeDecodeError:
            continue
    if text and all(c.isprintable() or c in "\r\n\t" for c in text):
        line = text.strip().splitlines()[0] if text.strip() else ""
        return f"it is a text file, starting {line[:40]!r}"
    return f"it starts with the bytes {head[:8].hex(' ')}" if head else "it is empty"


def read_checkpoint(path: str | os.PathLike, mmap: bool = False) -> Any:
    """Read a weights-only checkpoint (tensors on the CPU, nothing but tensors and plain containers unpickled), with
    one clear message for each way a file can fail to be one.

    Args:
        path: the file (``RUN/models/model.pt``, a resume checkpoint, ...); it must exist.
        mmap: map the tensors' storage instead of reading it (a zip-format file only; ignored otherwise): cheap for a
            check that only needs the keys and shapes.

    Returns:
        what ``torch.save`` stored (a state dict, or a dict of state dicts).

    Raises:
        ValueError: one sentence naming ``path`` and the cause (callers add what to pass instead): not a PyTorch
            checkpoint (a text file, with its first line, or other bytes), a damaged or incomplete one, or one that
            holds Python objects besides weights (e.g. a whole model saved with ``torch.save(model)``), which this
            project never unpickles (torch's advice to retry with ``weights_only=False`` is not repeated).
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        head = f.read(64)
    zipped = head.startswith(_ZIP_MAGIC)
    if not (zipped or head.startswith(_PICKLE_PROTOCOL)):
        raise ValueError(f"{path} is not a PyTorch checkpoint ({_describe_start(head)}).")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=bool(mmap and zipped))
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        what = f" (a {found.group(1)})" if found else ""
        raise ValueError(
            f"{path} holds Python objects besides weights{what}, which this project never unpickles (unpickling can "
            "run any code); a weights file holds a state dict: torch.save(model.state_dict(), path)."
        ) from None
    except Exception as e:  # noqa: BLE001 - the zip or pickle stream itself is broken
        first = str(e).split(". ")[0].strip().rstrip(".")
        raise ValueError(f"{path} is a damaged or incomplete PyTorch checkpoint ({type(e).__name__}: {first}).") from None
