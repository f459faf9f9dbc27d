"""The drex command line: one entry point, one subcommand per job.

Heavy imports (torch, transformers) happen inside the subcommand that needs them, so
``drex --help`` answers at once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from streams.usage import EXIT_STATUSES, HelpFormatter, fail, override


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from drex_model.evaluate.runner import EvaluateOptions, evaluate

    dataset = args.dataset
    if dataset == "sample":
        from drex_model.evaluate.sample import write_sample

        dataset = str(write_sample(Path(args.output) / "sample.jsonl"))
    elif not Path(dataset).exists():
        return fail("evaluate", f"dataset {dataset!r} not found (give a file, or 'sample')")
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
        overrides=dict(args.set),
        limit=args.limit,
        progress=not args.quiet,
    )
    try:
        evaluate(opts)
    except (ValueError, FileNotFoundError) as err:  # bad data or settings: say so, no trace
        return fail("evaluate", err)
    print(f"wrote {args.output}/results.json, results.md and learning_curves.png")
    return 0


def version() -> str:
    """The installed distribution's version (pyproject.toml's, once installed)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("drex")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    from drex_model.evaluate.baselines import BASELINES
    from drex_model.evaluate.runner import DEFAULT_BASELINES
    from drex_model.model import VARIANTS, override_keys

    parser = argparse.ArgumentParser(
        prog="drex", description=__doc__.splitlines()[0], epilog=EXIT_STATUSES
    )
    parser.add_argument("--version", action="version", version=f"drex {version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    ev = sub.add_parser(
        "evaluate",
        help="offline evaluation: the paper's protocol + baselines",
        description="Offline evaluation: the paper's protocol (docs/evaluation.md), drex "
        "and baselines on the same splits, results in --output.",
        formatter_class=HelpFormatter,
        epilog=EXIT_STATUSES,
    )
    ev.add_argument(
        "--dataset",
        required=True,
        help="Amazon 2014/2018 (.json[.gz]), Amazon 2023 JSONL, generic JSONL/CSV, "
        "or 'sample' for a generated one",
    )
    ev.add_argument("--output", required=True, help="directory for results.{json,md} and plots")
    ev.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0, 1, 2],
        metavar="SEED",
        help="one train/validation/test split and model initialisation per seed",
    )
    ev.add_argument(
        "--variants",
        nargs="*",
        default=list(VARIANTS),
        choices=VARIANTS,
        metavar="VARIANT",
        help=f"DReX variants to run, from {', '.join(VARIANTS)}; none: baselines only",
    )
    ev.add_argument(
        "--baselines",
        nargs="*",
        default=list(DEFAULT_BASELINES),
        choices=list(BASELINES),
        metavar="BASELINE",
        help=f"baselines run beside drex, from {', '.join(BASELINES)}; none: drex only",
    )
    ev.add_argument("--min-user", type=int, default=5, help="min ratings per user (paper: 20)")
    ev.add_argument("--min-item", type=int, default=5, help="min ratings per item")
    ev.add_argument(
        "--max-epochs", type=int, default=100, help="most passes over the training data"
    )
    ev.add_argument(
        "--patience",
        type=int,
        default=10,
        help="epochs without a better validation score before training stops",
    )
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
        help="local Hugging Face BERT-family directory (default: the bundled MiniLM)",
    )
    ev.add_argument(
        "--precision",
        choices=["auto", "bf16", "fp32"],
        default="auto",
        help="encoder precision; auto: bf16 where the hardware has it natively, else fp32",
    )
    ev.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="torch device; auto: cuda when available",
    )
    ev.add_argument(
        "--cache-dir",
        default=None,
        help="encoder output cache (default: ~/.cache/drex/reviews)",
    )
    ev.add_argument(
        "--set",
        action="append",
        type=override,
        default=[],
        metavar="KEY=VALUE",
        help="override a DReXConfig field (drex_model/model.py) for every variant, e.g. "
        f"--set dim=32; repeatable. KEY is one of: {', '.join(override_keys())}",
    )
    ev.add_argument(
        "--limit", type=int, default=0, help="use only the first N interactions (0: all)"
    )
    ev.add_argument("--quiet", action="store_true", help="no progress bars")
    ev.set_defaults(func=cmd_evaluate)

    from serving import cli as serving_cli
    from streams import broker, demo, producer, replay, worker

    demo.register(sub)
    broker.register(sub)
    worker.register(sub)
    producer.register(sub)
    replay.register(sub)
    from streams import feedback

    serve = serving_cli.register(sub)
    feedback.add_flags(serve)  # POST /feedback's broker (serving imports no streams code)
    serve.set_defaults(feedback_sink=feedback.from_args)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
