"""Fixtures shared by several test files."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tests with one torch thread, restoring the setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session", autouse=True)
def backbone_cache(tmp_path_factory):
    """The converted backbones (vaeood.models.backbones.openvino_runtime) go to one folder of the
    session, not the user's ~/.cache: the first test converts, the others (and their subprocesses)
    read it."""
    import os

    os.environ["VAEOOD_CACHE"] = str(tmp_path_factory.mktemp("vaeood-cache"))
    yield
