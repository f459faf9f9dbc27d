"""``drex replay``'s flags and their types (streams/replay.py reads the topics and runs).

Kept apart so the replay's reading and running stay one readable module; importing this
imports no torch and no Kafka client.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

from drex_model.evaluate.prequential import PREQUENTIAL_BASELINES, PREQUENTIAL_VARIANTS
from streams.events import DEFAULT_RATING_SCALE, RATINGS_TOPIC, REVIEWS_TOPIC
from streams.kafka_client import add_client_flags
from streams.usage import override

MODES: Final = ("paper", "prequential")
EXIT_CODES: Final = (
    "Exit status: 0 done; 1 failed (broker unreachable, no records, a partition stalled, "
    "or a short read: fewer records than the end offsets promised, each partition named "
    "on stderr); 2 bad flags or DREX_* settings."
)


@dataclass(frozen=True)
class OffsetBound:
    """An offset for every partition (``default``), or per ``(topic, partition)``."""

    default: int | None = None
    per_partition: Mapping[tuple[str, int], int] = field(default_factory=dict)

    def get(self, topic: str, partition: int) -> int | None:
        return self.per_partition.get((topic, partition), self.default)

    def __bool__(self) -> bool:
        return self.default is not None or bool(self.per_partition)


def parse_offsets(text: str) -> OffsetBound:
    """``N`` (every partition) and/or ``TOPIC:PARTITION=N`` entries, comma-separated."""
    default: int | None = None
    per: dict[tuple[str, int], int] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        where, sep, value = part.rpartition("=")
        try:
            offset = int(value)
            if sep:
                topic, colon, partition = where.rpartition(":")
                if not colon or not topic:
                    raise ValueError(where)
                per[(topic, int(partition))] = offset
            else:
                default = offset
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected N or TOPIC:PARTITION=N (comma-separated), got {part!r}"
            ) from None
        if offset < 0:
            raise argparse.ArgumentTypeError(f"offsets are >= 0, got {part!r}")
    return OffsetBound(default, per)


def parse_time(text: str) -> float:
    """Unix seconds, or an ISO 8601 date/time (UTC when it names no zone)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected Unix seconds or an ISO 8601 time (2014-05-01T12:00:00Z), got {text!r}"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The replay's flags (shared with ``python -m streams.replay``)."""
    from drex_model.evaluate.runner import DEFAULT_BASELINES
    from drex_model.model import VARIANTS

    add_client_flags(p)  # --broker and TLS/SASL: the worker's flags and DREX_* variables
    src = p.add_argument_group("source")
    src.add_argument(
        "--embedded",
        action="store_true",
        help="accepted for older scripts, changes nothing: end offsets always come from "
        "what the broker holds (the Fetch high watermark), whatever the broker",
    )
    src.add_argument(
        "--allow-gaps",
        action="store_true",
        help="replay even when a partition gives fewer records than its offsets span "
        "(a compacted topic, transaction markers); without it such a read is an error",
    )
    src.add_argument("--reviews-topic", default=REVIEWS_TOPIC, help="topic of review events")
    src.add_argument("--ratings-topic", default=RATINGS_TOPIC, help="topic of rating events")
    src.add_argument(
        "--since",
        type=parse_time,
        default=None,
        help="records with Kafka timestamp >= T "
        "(Unix seconds or ISO 8601; UTC unless a zone is given)",
    )
    src.add_argument("--until", type=parse_time, default=None, help="records before T")
    src.add_argument(
        "--from-offset",
        type=parse_offsets,
        default=None,
        help="first offset read (inclusive): N for every partition and/or TOPIC:P=N entries",
    )
    src.add_argument(
        "--to-offset", type=parse_offsets, default=None, help="end offset (exclusive), same form"
    )
    src.add_argument(
        "--read-timeout", type=float, default=30.0, help="seconds without progress = failure"
    )
    src.add_argument("--join-window", type=float, default=30.0, help="as the worker's")
    src.add_argument("--dedup-retention", type=float, default=3600.0, help="as the worker's")
    src.add_argument("--rating-scale", type=int, default=DEFAULT_RATING_SCALE, help="top rating")

    ev = p.add_argument_group("evaluation")
    ev.add_argument("--output", required=True, help="directory for results and plots")
    ev.add_argument("--mode", choices=MODES, default="paper", help="protocol (docs/replay.md)")
    ev.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one run per seed")
    ev.add_argument(
        "--variants",
        nargs="*",
        default=None,
        choices=VARIANTS,
        help=f"default: all (paper), {' '.join(PREQUENTIAL_VARIANTS[:1])} (prequential)",
    )
    ev.add_argument(
        "--baselines",
        nargs="*",
        default=None,
        help=f"default: {' '.join(DEFAULT_BASELINES)} (paper), "
        f"{' '.join(PREQUENTIAL_BASELINES)} (prequential)",
    )
    ev.add_argument("--min-user", type=int, default=None, help="default 5 (paper), 0 (prequential)")
    ev.add_argument("--min-item", type=int, default=None, help="default 5 (paper), 0 (prequential)")
    ev.add_argument("--max-epochs", type=int, default=100, help="paper mode")
    ev.add_argument("--patience", type=int, default=10, help="paper mode")
    ev.add_argument("--early-stop", choices=["rmse", "ranking"], default="rmse", help="paper mode")
    ev.add_argument("--batch-size", type=int, default=256, help="prequential micro-batch")
    ev.add_argument("--window", type=int, default=1000, help="prequential: error-curve window")
    ev.add_argument(
        "--checkpoint-every",
        type=int,
        default=None,
        help="prequential: interactions between ranking checkpoints (default: --window; 0 off)",
    )
    ev.add_argument("--encoder", default=None, help="local Hugging Face BERT-family directory")
    ev.add_argument(
        "--precision", choices=["auto", "bf16", "fp32"], default="auto", help="encoder dtype"
    )
    ev.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="torch")
    ev.add_argument("--cache-dir", default=None, help="encoder output cache (~/.cache/drex)")
    ev.add_argument(
        "--set",
        action="append",
        type=override,
        default=[],
        metavar="KEY=VALUE",
        help="DReXConfig override, as drex evaluate's",
    )
    ev.add_argument("--limit", type=int, default=0, help="use only the first N interactions")
    ev.add_argument(
        "--save-interactions",
        action="store_true",
        help="also write the rebuilt list as DIR/interactions.jsonl (drex evaluate reads it)",
    )
    ev.add_argument("--quiet", action="store_true", help="no progress bars")
    p.epilog = " ".join(filter(None, [p.epilog, EXIT_CODES]))


def check_names(args: argparse.Namespace) -> None:
    from drex_model.evaluate.baselines import BASELINES

    prequential = args.mode == "prequential"
    for kind, names, valid in (
        ("baseline", args.baselines, PREQUENTIAL_BASELINES if prequential else list(BASELINES)),
        ("variant", args.variants if prequential else None, PREQUENTIAL_VARIANTS),
    ):
        if bad := [n for n in names or () if n not in valid]:
            known = ", ".join(valid)
            raise ValueError(f"unknown {kind} {', '.join(bad)} for --mode {args.mode}: {known}")
