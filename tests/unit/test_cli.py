"""``drex``'s help: every flag described, no meaningless default shown, valid names
listed, and every DREX_* variable a command reads named in its --help."""

from __future__ import annotations

import argparse

import pytest

from drex_model.evaluate.baselines import BASELINES
from drex_model.model import VARIANTS, override_keys, parse_overrides
from serving.settings import ServerSettings
from streams.cli import build_parser
from streams.settings import WorkerSettings
from streams.usage import HelpFormatter, port_number


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


COMMANDS = ("evaluate", "demo", "broker", "worker", "produce", "replay", "serve")


def test_the_walk_below_sees_every_subcommand() -> None:
    assert set(subcommands()) == set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_flag_has_help_and_no_meaningless_default(command: str) -> None:
    parser = subcommands()[command]
    undescribed = ["/".join(action.option_strings) for action in parser._actions if not action.help]
    text = " ".join(parser.format_help().split())  # a default wrapped to the next line too
    shown = [s for s in ("default: None", "default: []", "default: False") if s in text]
    assert (undescribed, shown) == ([], [])


def test_the_valid_names_are_listed() -> None:
    text = " ".join(subcommands()["evaluate"].format_help().split())
    assert all(name in text for name in VARIANTS)
    assert all(name in text for name in BASELINES)
    assert all(key in text for key in override_keys())  # --set's keys
    assert "variant" not in override_keys()
    worker = " ".join(subcommands()["worker"].format_help().split())
    assert "drex evaluate --help lists the keys" in worker


def test_every_variable_a_command_reads_is_in_its_help() -> None:
    commands = subcommands()
    # the demo's worker and server inherit its environment: they read both sets
    for command, classes in (
        ("worker", [WorkerSettings]),
        ("serve", [ServerSettings]),
        ("demo", [WorkerSettings, ServerSettings]),
    ):
        text = commands[command].format_help()
        missing = [
            cls.variable(name)
            for cls in classes
            for name in cls.model_fields
            if cls.variable(name) not in text
        ]
        assert missing == [], command


def test_the_help_shows_a_default_only_where_it_tells_something() -> None:
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter)
    parser.add_argument("--a", default=None, help="an optional path")
    parser.add_argument("--b", default=5, help="five")
    parser.add_argument("--c", nargs="+", default=[0, 1], help="seeds")
    parser.add_argument("--d", action="store_true", help="a switch")
    parser.add_argument("--e", default=None, help="a cache (default: ~/.cache)")
    parser.add_argument("--f", default="", help="empty")
    text = " ".join(parser.format_help().split())
    assert "an optional path --b" in text
    assert "five (default: 5)" in text
    assert "seeds (default: 0 1)" in text
    assert "a switch --e" in text
    assert "a cache (default: ~/.cache) --f" in text
    assert text.endswith("empty")


def test_a_port_out_of_range_is_a_usage_error() -> None:
    assert port_number("0") == 0 and port_number("65535") == 65535
    for bad in ("70000", "-1", "http"):
        with pytest.raises(argparse.ArgumentTypeError, match="port"):
            port_number(bad)


def test_the_variant_is_not_a_set_key() -> None:
    with pytest.raises(ValueError, match=r"variant is not a KEY=VALUE override.*--variants"):
        parse_overrides(["variant=drex-paper"])
    with pytest.raises(ValueError, match=r"dim='abc'.*integer"):
        parse_overrides(["dim=abc"])
    with pytest.raises(ValueError, match=r"model_overrides.*--variant"):
        WorkerSettings(model_overrides=("variant=drex-mlp",))
