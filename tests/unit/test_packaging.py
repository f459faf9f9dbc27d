"""pyproject.toml, scripts/setup.sh, the image and the docs agree on what an install holds.

faiss-cpu and faiss-gpu both provide the `faiss` module: pip installs them side by side when
asked for both, and which one `import faiss` then loads is whichever unpacked last. So the
base dependencies hold neither, each lives in its own extra (`cpu`, `gpu`), and every install
that the project itself writes down asks for exactly one of them.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from typing import Any

from tests.conftest import REPO

FAISS = {"faiss-cpu", "faiss-gpu"}
# `.[cpu,dev]`, `".[$faiss,dev]"`, `'.[gpu]'`: an install of this project with extras
EXTRAS_IN_COMMAND = re.compile(r"(?<![\w/])\.\[([\w$,{} -]+)\]")


def pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def name_of(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    assert match, requirement
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def distributions(extras: set[str]) -> set[str]:
    """What `pip install ".[extras]"` asks for, by name (extras that name drex itself followed)."""
    project = pyproject()["project"]
    optional: dict[str, list[str]] = project["optional-dependencies"]
    unknown = extras - optional.keys()
    assert not unknown, f"no such extra: {sorted(unknown)}"
    names = {name_of(r) for r in project["dependencies"]}
    seen: set[str] = set()
    todo = list(extras)
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for requirement in optional[extra]:
            if name_of(requirement) == name_of(project["name"]):
                inner = re.search(r"\[([^\]]*)\]", requirement)
                todo += [e.strip() for e in inner.group(1).split(",")] if inner else []
            else:
                names.add(name_of(requirement))
    return names


def documented_installs() -> dict[str, set[frozenset[str]]]:
    """Each file that installs the project with extras -> the extra sets it asks for.

    setup.sh's `$faiss` is `cpu` or `gpu` (its --cpu / --gpu).
    """
    files = [REPO / "README.md", REPO / "scripts" / "setup.sh", REPO / "infra" / "Dockerfile"]
    files += sorted((REPO / ".ci").iterdir())
    found: dict[str, set[frozenset[str]]] = {}
    for path in files:
        for match in EXTRAS_IN_COMMAND.finditer(path.read_text(encoding="utf-8")):
            extras = [e.strip() for e in match.group(1).split(",")]
            for faiss in ("cpu", "gpu"):
                chosen = frozenset(faiss if e in ("$faiss", "${faiss}") else e for e in extras)
                found.setdefault(str(path.relative_to(REPO)), set()).add(chosen)
    return found


def test_base_dependencies_hold_no_faiss() -> None:
    assert not distributions(set()) & FAISS
    optional = pyproject()["project"]["optional-dependencies"]
    assert {name_of(r) for r in optional["cpu"]} == {"faiss-cpu"}
    assert {name_of(r) for r in optional["gpu"]} == {"faiss-gpu"}
    for extra in optional.keys() - {"cpu", "gpu"}:
        assert not distributions({extra}) & FAISS, extra


def test_every_documented_install_gets_exactly_one_faiss() -> None:
    installs = documented_installs()
    assert {frozenset({"cpu", "dev"}), frozenset({"gpu", "dev"})} <= installs["scripts/setup.sh"]
    assert frozenset({"gpu"}) in installs["README.md"]
    assert frozenset({"cpu"}) in installs["infra/Dockerfile"]
    for where, extra_sets in installs.items():
        for extras in extra_sets:
            got = distributions(set(extras)) & FAISS
            assert len(got) == 1, f"{where}: .[{','.join(sorted(extras))}] installs {got}"


def test_setup_script_removes_the_other_faiss_when_switching() -> None:
    script = (REPO / "scripts" / "setup.sh").read_text(encoding="utf-8")
    assert "uninstall" in script and "faiss_$other-" in script


def test_image_installs_the_cpu_faiss() -> None:
    dockerfile = (REPO / "infra" / "Dockerfile").read_text(encoding="utf-8")
    installs = [line for line in dockerfile.splitlines() if "requirements/constraints.txt" in line]
    assert installs and all('".[cpu]"' in line for line in installs), installs


def test_import_without_faiss_says_which_extra_to_install() -> None:
    code = "import sys; sys.modules['faiss'] = None; import drex_store.index"
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert run.returncode != 0
    assert '".[cpu]"' in run.stderr and '".[gpu]"' in run.stderr, run.stderr[-2000:]


def supported_pythons() -> list[str]:
    spec = pyproject()["project"]["requires-python"]
    match = re.fullmatch(r">=3\.(\d+),\s*<3\.(\d+)", spec)
    assert match, spec
    return [f"3.{minor}" for minor in range(int(match.group(1)), int(match.group(2)))]


def test_supported_pythons_agree_everywhere() -> None:
    versions = supported_pythons()
    assert versions[0] == "3.11" and len(versions) >= 3, versions
    classifiers = pyproject()["project"]["classifiers"]
    listed = [c.rsplit(" :: ", 1)[1] for c in classifiers if re.search(r":: 3\.\d+$", c)]
    assert listed == versions
    script = (REPO / "scripts" / "setup.sh").read_text(encoding="utf-8")
    assert f'supported="{" ".join(versions)}"' in script
    # lint and type-check against the oldest; CI tests the newest as well as the oldest
    tool = pyproject()["tool"]
    assert tool["ruff"]["target-version"] == "py" + versions[0].replace(".", "")
    assert tool["mypy"]["python_version"] == versions[0]
    newest = (REPO / ".ci" / "newest-python").read_text(encoding="utf-8")
    assert re.search(rf"^newest={re.escape(versions[-1])}\b", newest, flags=re.M)


def test_readme_names_the_supported_pythons() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    versions = supported_pythons()
    assert f"Python {', '.join(versions[:-1])} or {versions[-1]}" in readme
