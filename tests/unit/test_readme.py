"""The README's Python example runs as written (so it cannot rot)."""

from __future__ import annotations

import re

from tests.conftest import REPO


def test_readme_python_example_runs() -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README has no python example"
    namespace: dict[str, object] = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    learner = namespace["learner"]
    ranked = learner.rank("bob", k=5)  # type: ignore[attr-defined]
    assert ranked and all(1.0 <= rating <= 5.0 for _, rating, _ in ranked)
    assert "amp-1" not in {item for item, _, _ in ranked}  # already rated by bob


def test_readme_drex_commands_parse() -> None:
    """Every ``drex ...`` command in the README's shell blocks names real flags."""
    import shlex

    from streams.cli import build_parser

    text = (REPO / "README.md").read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            _, found, rest = line.partition(".venv/bin/drex ")
            if found:
                commands.append(shlex.split(rest.split("#")[0].split("&")[0]))
    assert {c[0] for c in commands} >= {"demo", "evaluate", "broker", "worker", "serve", "produce"}
    parser = build_parser()
    for argv in commands:
        parser.parse_args(argv)  # exits (fails the test) on an unknown flag
