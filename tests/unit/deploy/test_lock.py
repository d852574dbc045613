"""constraints.txt pins every dependency, direct and indirect, and every install uses it."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[3]
LOCKED_EXTRAS = ("embedded", "dev")
PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[A-Za-z0-9.+!-]+)(?:\s+#.*)?$")


def pins() -> dict[str, str]:
    """Canonical name -> pinned version; any line that is not ``name==version`` fails."""
    pinned: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        match = PIN.match(line)
        assert match, f"not an exact pin: {line!r}"
        name = canonicalize_name(match["name"])
        assert name not in pinned, f"pinned twice: {name}"
        pinned[name] = match["version"]
    return pinned


def declared() -> list[Requirement]:
    """The project's requirements for the install the Makefile does: runtime plus the locked extras."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    texts = list(project["dependencies"])
    for extra in LOCKED_EXTRAS:
        texts.extend(project["optional-dependencies"][extra])
    return [Requirement(text) for text in texts]


def test_every_declared_dependency_is_pinned_within_its_range() -> None:
    pinned = pins()
    for requirement in declared():
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{requirement} is not in constraints.txt (run `make lock`)"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (
            f"{requirement} excludes the pinned {pinned[name]} (run `make lock`)")


def test_the_lock_is_closed_over_installed_dependencies() -> None:
    """Each pinned package's own requirements (for this Python) are pinned too: nothing floats.

    Read from the installed metadata, which `make` installed from this very lock."""
    pinned = pins()
    queue = [(requirement, "") for requirement in declared()]
    seen: set[tuple[str, str]] = set()
    while queue:
        requirement, extra = queue.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": extra}):
            continue
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{requirement} (needed for {extra or 'the base install'}) is not pinned"
        for wanted in requirement.extras or {""}:
            if (name, wanted) in seen:
                continue
            seen.add((name, wanted))
            queue.extend((Requirement(text), wanted) for text in metadata.requires(name) or [])
    assert len(seen) > len(declared()), "the walk found no indirect dependencies"


def test_make_installs_with_the_lock() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^CONSTRAINTS := constraints\.txt$", makefile, re.M)
    installs = re.findall(r"^\t\$\(BIN\)/pip install .*$", makefile, re.M)
    project_installs = [line for line in installs if "-e " in line]
    assert project_installs and all("-c $(CONSTRAINTS)" in line for line in project_installs), installs
    # A new lock reinstalls the venv on the next `make run` / `make test`.
    assert re.search(r"^\$\(STAMP\): .*\$\(CONSTRAINTS\)", makefile, re.M)


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return (ROOT / "deploy" / "Dockerfile").read_text()


def test_the_image_installs_with_the_lock(dockerfile: str) -> None:
    assert re.search(r"^COPY .*\bconstraints\.txt\b", dockerfile, re.M)
    installs = re.findall(r"pip install[^&\n]*", dockerfile)
    assert installs and all("-c constraints.txt" in line for line in installs), installs


def test_the_image_copies_only_what_exists(dockerfile: str) -> None:
    """A COPY of a missing path fails `docker build`; nothing in CI builds the image."""
    for line in re.findall(r"^COPY (.+)$", dockerfile, re.M):
        *sources, _destination = line.split()
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: no such path"
