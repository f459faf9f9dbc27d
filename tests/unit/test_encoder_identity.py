"""One device resolution, the encoder's forward batch, and the encoder's identity."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from drex_model.device import resolve_device
from drex_model.text import TextEncoder

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("cuda", [False, True])
def test_auto_is_cuda_when_there_is_one_and_other_names_stay(
    monkeypatch: pytest.MonkeyPatch, cuda: bool
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert resolve_device("auto") == ("cuda" if cuda else "cpu")
    for name in ("cpu", "cuda", "cuda:1"):
        assert resolve_device(name) == name


def test_the_forward_batch_changes_no_review_vectors(
    tiny_encoder: TextEncoder, tiny_encoder_dir: Path
) -> None:
    texts = ["Great tone and a fair price", "Broke", "The strap held up", "Tuners", "Loud"]
    small = TextEncoder(str(tiny_encoder_dir), max_tokens=32, device="cpu", forward_batch=2)
    assert small.forward_batch == 2 and tiny_encoder.forward_batch == 32
    for a, b in zip(small.encode(texts), tiny_encoder.encode(texts), strict=True):
        torch.testing.assert_close(a.tokens, b.tokens, atol=2e-3, rtol=1e-2)


def test_the_identity_names_the_model_and_fingerprints_its_weights(
    tiny_encoder: TextEncoder, tiny_encoder_dir: Path, tmp_path: Path
) -> None:
    identity = tiny_encoder.identity
    assert json.loads(json.dumps(identity)) == identity
    assert identity["model"] == tiny_encoder_dir.name
    assert (identity["hidden_size"], identity["max_tokens"]) == (32, 32)
    assert len(identity["fingerprint"]) == 16

    # the same folder in a fresh process: the same identity
    code = (
        "import json, sys\n"
        "from drex_model.text import TextEncoder\n"
        "e = TextEncoder(sys.argv[1], max_tokens=32, device='cpu', precision='fp32')\n"
        "print(json.dumps(e.identity))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tiny_encoder_dir)],
        check=True,
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert json.loads(out.stdout.splitlines()[-1]) == identity

    # one weight changed, in a folder of the same name: another fingerprint
    from transformers import BertModel

    changed = tmp_path / tiny_encoder_dir.name
    shutil.copytree(tiny_encoder_dir, changed)
    model = BertModel.from_pretrained(str(changed))
    with torch.no_grad():
        model.encoder.layer[1].output.dense.weight[0, 0] += 0.5
    model.save_pretrained(str(changed))
    other = TextEncoder(str(changed), max_tokens=32, device="cpu", precision="fp32")
    assert other.identity["model"] == identity["model"]
    assert other.identity["fingerprint"] != identity["fingerprint"]


def test_the_bundled_encoder_is_named_not_by_its_install_path() -> None:
    assert TextEncoder(device="cpu").identity["model"] == "all-MiniLM-L6-v2"
