"""Shared test set-up: GPU tests are skipped where CUDA is absent, bAbI data tests where the data is."""

from __future__ import annotations

import pytest
import torch


def babi_data_found() -> bool:
    """Whether memnet finds the bAbI data where a user's run looks (``memnet data babi``'s folder,
    ``MEMNET_DATA_DIR``, ``shared/data/babi`` beside the repository): a clone without it skips the tests that
    train on it, as one without CUDA skips the GPU tests, instead of failing them."""
    from tasks.babi.archive import find_source

    try:
        find_source()
    except OSError:  # FileNotFoundError, or MEMNET_DATA_DIR naming no folder
        return False
    return True


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs CUDA")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)
    if any("babi_data" in item.keywords for item in items) and not babi_data_found():
        skip = pytest.mark.skip(reason="needs the bAbI data: memnet data babi (or MEMNET_DATA_DIR)")
        for item in items:
            if "babi_data" in item.keywords:
                item.add_marker(skip)
