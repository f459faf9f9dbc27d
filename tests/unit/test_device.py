"""torch's CPU threads: set for a block and given back."""

from __future__ import annotations

import pytest
import torch

from drex_model.device import intra_op_threads

pytestmark = pytest.mark.usefixtures("torch_threads_kept")


def test_a_block_runs_with_its_threads_and_the_count_comes_back() -> None:
    torch.set_num_threads(2)
    with intra_op_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2


def test_zero_leaves_the_count_as_it_is() -> None:
    torch.set_num_threads(1)
    with intra_op_threads(0):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 1


def test_the_count_comes_back_when_the_block_fails() -> None:
    torch.set_num_threads(2)
    with pytest.raises(RuntimeError), intra_op_threads(1):
        raise RuntimeError("boom")
    assert torch.get_num_threads() == 2
