"""Reading a checkpoint file safely: a truncated, empty or corrupt file is one line naming it.

    read_checkpoint(path)                       torch.load, with the file named in every error
    check_finite_state(state_dict, source)      refuses NaN or infinite weights, naming the parameter
    saved_metrics(path)                         the scalar metrics a checkpoint was saved with (METRICS_KEY)

Used by the ``memnet`` command's checkpoint I/O (``fit``/``validate``/``test``/``predict``
with ``--ckpt_path``) and by ``memnet evaluate``.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from memnet.utils import MemnetError, is_number

METRICS_KEY = "memnet_metrics"  # the scalar metrics at the time a checkpoint was saved (LastAndBestCheckpoint)


def unreadable_checkpoint(path: str | Path, error: BaseException) -> MemnetError:
    """The one-line error for a checkpoint file ``torch.load`` could not read."""
    path = Path(path)
    if path.is_file() and path.stat().st_size == 0:
        return MemnetError(f"{path}: the checkpoint file is empty (0 bytes); its save was cut short, "
                           "use another checkpoint (e.g. best-*.ckpt beside it)")
    if path.is_file() and not zipfile.is_zipfile(path):
        detail = "not a complete torch.save archive"
    else:
        text = str(error).strip()
        detail = f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__
    return MemnetError(f"{path}: not a readable checkpoint, the file is truncated or corrupt ({detail})")


def check_finite_state(state_dict: Mapping[str, Any], source: str | Path) -> None:
    """Raise naming ``source`` and the first parameter or buffer holding NaN or infinite values."""
    for name, value in state_dict.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise MemnetError(
                f"{source}: parameter {name} holds {bad} non-finite value(s) (NaN or infinity) of {value.numel()}; "
                "the checkpoint is corrupt (or was saved after training diverged)"
            )


def read_checkpoint(path: str | Path, *, map_location: Any = "cpu") -> dict[str, Any]:
    """The checkpoint dict of ``path`` after checking that its weights (``state_dict``) are finite.

    Raises:
        MemnetError: no such file, an empty, truncated or corrupt file, or non-finite weights;
            the message names the file (and the parameter).
    """
    path = Path(path)
    if not path.is_file():
        raise MemnetError(f"{path}: no checkpoint file there")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as error:  # noqa: BLE001 -- torch.load raises many kinds on a damaged file; all mean the same
        raise unreadable_checkpoint(path, error) from None
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), Mapping):
        check_finite_state(checkpoint["state_dict"], path)
    return checkpoint


def saved_metrics(path: str | Path) -> dict[str, float] | None:
    """The scalar metrics ``path`` was saved with (``memnet_metrics``: ``callbacks.LastAndBestCheckpoint``).

    Those of its own weights, which for a best-by-``val/loss`` checkpoint are not the run's final metrics.
    Read with ``weights_only`` (no code run from the file); a checkpoint that holds other objects than tensors
    and plain containers is read whole, as ``read_checkpoint`` does. None where the file is missing or unreadable
    or holds no such metrics (saved by an older memnet).
    """
    try:
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:  # an object the safe unpickler does not allow: a checkpoint of ours, read whole
            checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception:  # noqa: BLE001 -- torch.load raises many kinds on a missing or damaged file; all mean "none"
        return None
    metrics = checkpoint.get(METRICS_KEY) if isinstance(checkpoint, dict) else None
    if not isinstance(metrics, Mapping):
        return None
    return {str(name): float(value) for name, value in metrics.items() if is_number(value)}
