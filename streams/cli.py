"""The drex command line: one entry point, one subcommand per job.

Heavy imports (torch, transformers) happen inside the subcommand that needs them, so
``drex --help`` answers at once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` pairs as typed model settings; a bad one exits with its reason."""
    from drex_model.model import parse_overrides as parse

    try:
        return parse(pairs)
    except ValueError as err:
        raise SystemExit(f"--set: {err}") from None


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from drex_model.evaluate.runner import EvaluateOptions, evaluate

    dataset = args.dataset
    if dataset == "sample":
        from drex_model.evaluate.sample import write_sample

        dataset = str(write_sample(Path(args.output) / "sample.jsonl"))
    elif not Path(dataset).exists():
        raise SystemExit(f"dataset {dataset!r} not found (give a file, or 'sample')")
    opts = EvaluateOptions(
        dataset=dataset,
        output=args.output,
        seeds=args.seeds,
        variants=args.variants,
        baselines=args.baselines,
        min_user=args.min_user,
        min_item=args.min_item,
        max_epochs=args.max_epochs,
        patience=args.patience,
        early_stop=args.early_stop,
        encoder=args.encoder,
        precision=args.precision,
        device=args.device,
        cache_dir=args.cache_dir,
        overrides=parse_overrides(args.set),
        limit=args.limit,
        progress=not args.quiet,
    )
    try:
        evaluate(opts)
    except (ValueError, FileNotFoundError) as err:  # bad data or settings: say so, no trace
        raise SystemExit(f"drex evaluate: {err}") from None
    print(f"wrote {args.output}/results.json, results.md and learning_curves.png")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from drex_model.evaluate.runner import DEFAULT_BASELINES
    from drex_model.model import VARIANTS

    parser = argparse.ArgumentParser(prog="drex", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    ev = sub.add_parser(
        "evaluate",
        help="offline evaluation: the paper's protocol + baselines",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ev.add_argument(
        "--dataset",
        required=True,
        help="Amazon 2014/2018 (.json[.gz]), Amazon 2023 JSONL, generic JSONL/CSV, "
        "or 'sample' for a generated one",
    )
    ev.add_argument("--output", required=True, help="directory for results.{json,md} and plots")
    ev.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ev.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=VARIANTS)
    ev.add_argument(
        "--baselines",
        nargs="*",
        default=list(DEFAULT_BASELINES),
        help=f"baselines run beside drex (default: {' '.join(DEFAULT_BASELINES)})",
    )
    ev.add_argument("--min-user", type=int, default=5, help="min ratings per user (paper: 20)")
    ev.add_argument("--min-item", type=int, default=5, help="min ratings per item")
    ev.add_argument("--max-epochs", type=int, default=100)
    ev.add_argument("--patience", type=int, default=10)
    ev.add_argument(
        "--early-stop",
        choices=["rmse", "ranking"],
        default="rmse",
        help="validation criterion: RMSE, or the paper's mean of F1@5 and NDCG@5 "
        "(which picks epochs with poor rating accuracy; see docs)",
    )
    ev.add_argument(
        "--encoder",
        default=None,
        help="local Hugging Face BERT-family directory (default: bundled MiniLM)",
    )
    ev.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto")
    ev.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ev.add_argument("--cache-dir", default=None, help="encoder output cache (~/.cache/drex)")
    ev.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a DReXConfig field for every variant, e.g. --set dim=32",
    )
    ev.add_argument("--limit", type=int, default=0, help="use only the first N interactions")
    ev.add_argument("--quiet", action="store_true", help="no progress bars")
    ev.set_defaults(func=cmd_evaluate)

    from serving import cli as serving_cli
    from streams import broker, demo, producer, replay, worker

    demo.register(sub)
    broker.register(sub)
    worker.register(sub)
    producer.register(sub)
    replay.register(sub)
    serving_cli.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
