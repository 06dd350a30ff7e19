"""Shared test setup: GPU-only tests are skipped, with a reason, where no CUDA device exists."""

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="requires_gpu: no CUDA device on this machine")
    for item in items:
        if "requires_gpu" in item.keywords:
            item.add_marker(skip)
