"""Shared fixtures: the real data folder beside the checkout (../shared/data).

Outside CI a missing folder skips the tests that need it; in CI (CI=true) it is an error, so a lost
folder cannot turn ~70 tests into silent skips and a green run (issue 20, item 12).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        message = f"real data folder {SHARED_DATA} not found (it sits beside the checkout in CI)"
        if in_ci():
            pytest.fail(f"CI=true but {message}: the shared-data tests must run in CI", pytrace=False)
        pytest.skip(message)
    return SHARED_DATA


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module (small tensors; on a busy machine extra threads only wait), restored after.
    Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
