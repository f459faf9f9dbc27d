"""Fixtures shared by every test tier."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def torch_threads_kept() -> Iterator[None]:
    """torch's intra-op thread count as it was before the test, after it (tests that set
    it would otherwise leave it to every later test of the process)."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer, 32-wide BERT with the bundled MiniLM's real uncased tokenizer."""
    from transformers import BertConfig, BertModel

    from drex_model.text import default_encoder_path

    path = tmp_path_factory.mktemp("tiny-bert")
    source = Path(default_encoder_path())
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (source / name).exists():
            shutil.copy(source / name, path / name)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
    )
    BertModel(config).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_encoder(tiny_encoder_dir: Path):  # type: ignore[no-untyped-def]
    from drex_model.text import TextEncoder

    return TextEncoder(str(tiny_encoder_dir), max_tokens=32, device="cpu", precision="fp32")


def shared_dataset(name: str) -> Path:
    """A file of ../shared/data, or a clean skip when the folder is absent."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"shared data folder absent: {path} (tests that read it are skipped)")
    return path


@pytest.fixture
def tiny_evaluate_options(tiny_encoder_dir: Path, tmp_path: Path) -> Callable[..., Any]:
    """``make(dataset, output, **changes)``: the options of a small, fast ``drex evaluate``
    run (DReX and the bias baseline, dim 8, two epochs, the tiny encoder)."""
    from drex_model.evaluate.runner import EvaluateOptions

    def make(dataset: Path, output: str, **changes: Any) -> EvaluateOptions:
        base: dict[str, Any] = {
            "dataset": str(dataset),
            "output": str(tmp_path / output),
            "seeds": (0,),
            "variants": ("drex",),
            "baselines": ("bias",),
            "max_epochs": 2,
            "encoder": str(tiny_encoder_dir),
            "cache_dir": str(tmp_path / "cache"),
            "overrides": {"dim": 8},
            "progress": False,
        }
        return EvaluateOptions(**{**base, **changes})

    return make
