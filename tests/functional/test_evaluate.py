"""``drex evaluate`` end to end on generated data and (when present) the shared files."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from drex_model.evaluate.runner import EvaluateOptions, evaluate
from drex_model.evaluate.sample import write_sample
from streams.cli import main
from tests.conftest import shared_dataset


def test_evaluate_writes_results_for_every_model(tiny_encoder_dir: Path, tmp_path: Path) -> None:
    data = write_sample(tmp_path / "sample.jsonl", users=60, items=30, per_user=8)
    out = tmp_path / "run"
    code = main(
        [
            "evaluate",
            "--dataset",
            str(data),
            "--output",
            str(out),
            "--seeds",
            "0",
            "1",
            "--max-epochs",
            "3",
            "--patience",
            "2",
            "--encoder",
            str(tiny_encoder_dir),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--quiet",
            "--set",
            "dim=8",
        ]
    )
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["models"]) == {
        "drex",
        "drex-paper",
        "drex-mlp",
        "global-mean",
        "bias",
        "mf",
        "popularity",
        "ease",
        "itemknn",
        "expl:raw-count-overlap",
        "expl:item-top-words",
        "expl:item-tfidf",
        "expl:corpus-top-words",
    }
    drex = results["models"]["drex"]
    for key in (
        "mae",
        "mae_std",
        "rmse",
        "rmse_std",
        "f1@5",
        "ndcg@5",
        "ndcg@10",
        "paper_ndcg@5",
        "rmse_warm",
        "n_cold",
        "epochs",
        "expl_coverage",
        "expl_precision_std",
        "expl_idf_precision",
    ):
        assert key in drex, key
    assert 0 <= drex["expl_coverage"] <= 1
    for key in ("rec_expl_coverage", "rec_expl_distinct", "rec_quote_coverage", "rec_expl_hit"):
        assert 0 <= drex[key] <= 1, key
    assert drex["rec_expl_negative"] == 0  # the rule never shows a negative word
    assert "| rec_expl_negative |" in (out / "results.md").read_text()
    assert "| expl_coverage |" in (out / "results.md").read_text()
    assert 0 < drex["rmse"] < 2 and 0 <= drex["ndcg@10"] <= 1
    assert "mae" not in results["models"]["popularity"]
    for name in ("drex", "popularity", "ease"):  # every ranking row, beyond accuracy too
        for key in ("coverage@10", "distinct@10", "logpop@10"):
            assert key in results["models"][name], (name, key)
    assert "lam" in results["models"]["ease"] and "shrink" in results["models"]["itemknn"]
    assert "| coverage@10 |" in (out / "results.md").read_text()
    assert results["protocol"]["seeds"] == [0, 1]
    assert "| bias |" in (out / "results.md").read_text()
    assert (out / "learning_curves.png").stat().st_size > 1000
    # the frozen encoder's outputs were cached for the next run
    assert any((tmp_path / "cache").iterdir())


def test_evaluate_is_repeatable_for_a_seed(
    tiny_evaluate_options: Callable[..., EvaluateOptions], tmp_path: Path
) -> None:
    data = write_sample(tmp_path / "sample.jsonl", users=40, items=20, per_user=6)
    runs = []
    for name in ("a", "b"):
        runs.append(evaluate(tiny_evaluate_options(data, name, seeds=(3,)))["models"])
    assert runs[0]["drex"]["rmse"] == runs[1]["drex"]["rmse"]
    assert runs[0]["bias"]["ndcg@5"] == runs[1]["bias"]["ndcg@5"]


def test_bad_arguments_are_clear_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["evaluate", "--dataset", str(tmp_path / "none.json"), "--output", str(tmp_path)])
    assert code == 1 and "drex evaluate: dataset" in capsys.readouterr().err
    for pair, reason in (("dimm=3", "expected KEY=VALUE"), ("use_text=nope", "valid boolean")):
        with pytest.raises(SystemExit) as stop:  # argparse: a usage error
            main(["evaluate", "--dataset", "sample", "--output", str(tmp_path), "--set", pair])
        assert stop.value.code == 2
        err = capsys.readouterr().err
        assert "drex evaluate: error: argument --set: " in err and reason in err


def test_unknown_names_are_refused_before_the_data_is_read(tmp_path: Path) -> None:
    opts = EvaluateOptions(dataset=str(tmp_path / "none.json"), output=str(tmp_path / "out"))
    for variants, baselines, unknown in (
        (["drex"], ["bias", "svd"], "unknown baseline 'svd'; choose from global-mean, bias"),
        (["drex-xl"], [], "unknown variant 'drex-xl'; choose from drex, drex-paper, drex-mlp"),
    ):
        opts.variants, opts.baselines = variants, baselines
        with pytest.raises(ValueError, match=unknown):  # not FileNotFoundError
            evaluate(opts)
    assert not (tmp_path / "out").exists()


@pytest.mark.data
@pytest.mark.slow
def test_musical_instruments_with_the_real_encoder(tmp_path: Path) -> None:
    """A reduced run of the headline benchmark: real data, real MiniLM encoder."""
    path = shared_dataset("amazon14_musical_instruments_5.json.gz")
    opts = EvaluateOptions(
        dataset=str(path),
        output=str(tmp_path / "mi"),
        seeds=(0,),
        variants=("drex",),
        baselines=("global-mean", "bias"),
        limit=3000,
        min_user=2,
        min_item=2,
        max_epochs=4,
        patience=2,
        cache_dir=str(tmp_path / "c"),
        progress=False,
    )
    models = evaluate(opts)["models"]
    assert models["bias"]["rmse"] < models["global-mean"]["rmse"]
    assert models["drex"]["rmse"] < models["global-mean"]["rmse"] * 1.02
