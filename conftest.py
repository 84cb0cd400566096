"""Doctests of the package run on one thread: the examples' models are tiny, and several threads only contend."""

import pytest
import torch
from _pytest.doctest import DoctestItem


@pytest.fixture(autouse=True)
def _one_thread_for_doctests(request):
    if not isinstance(request.node, DoctestItem):
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
