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
