"""infra/README.md's commands for sending events into the compose stack are real ones.

Docker does not run on this project's machines (tests/unit/test_infra.py says why), so
the commands are checked against what they name: a service of the compose file whose
image runs ``drex``, a ``drex`` command line that the project's own parser accepts, and
the broker address that the compose file's Kafka advertises.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import yaml

from streams.cli import build_parser

INFRA = Path(__file__).resolve().parents[2] / "infra"
BASH_BLOCK = re.compile(r"```bash\n(.*?)```", re.DOTALL)


def compose() -> Any:
    return yaml.safe_load((INFRA / "docker-compose.yml").read_text(encoding="utf-8"))


def run_commands() -> list[list[str]]:
    """The ``docker compose ... run`` commands of the README's bash blocks, as argv."""
    text = (INFRA / "README.md").read_text(encoding="utf-8")
    found = []
    for block in BASH_BLOCK.findall(text):
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            argv = shlex.split(line, comments=True)
            if argv[:2] == ["docker", "compose"] and "run" in argv:
                found.append(argv)
    return found


def drex_argv(argv: list[str]) -> tuple[str, list[str]]:
    """(service, the arguments given to its ``drex`` entrypoint) of a ``run`` command."""
    rest = argv[argv.index("run") + 1 :]
    with_value = {"-v", "--volume", "-e", "--env", "--name", "-w", "--workdir"}
    i = 0
    while rest[i].startswith("-"):
        i += 2 if rest[i] in with_value else 1
    return rest[i], rest[i + 1 :]


def test_the_readme_shows_how_to_produce_into_the_stack() -> None:
    commands = run_commands()
    produce = [c for c in commands if "produce" in c]
    assert produce, "infra/README.md has no `docker compose run ... produce` command"


def test_its_produce_commands_parse_and_reach_the_stacks_kafka() -> None:
    services = compose()["services"]
    advertised = services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    kafka = advertised.split("://", 1)[1]
    parser = build_parser()
    for argv in run_commands():
        service, args = drex_argv(argv)
        assert service in services, f"{shlex.join(argv)}: no service {service!r}"
        assert services[service].get("image") == "drex:latest"  # its entrypoint is drex
        parsed = parser.parse_args(args)
        assert parsed.command == "produce"
        assert parsed.broker == f"kafka://{kafka}"
