"""The README and every guide in docs/ hold true: their code runs as written, links resolve.

Every fenced block names its language. `python` blocks of a page run in order as one script
in a subprocess, on a migrated database of the page's own (blocks_runner.py); an `app` they
make is started and every parameterless GET route must answer below 500. `bash`/`sh` blocks
run command by command, in a shell whose exports carry to the next command; a command that
starts a server runs until it answers /health, then stops. Blocks whose first line is
`# path/to/file` are files of a walkthrough: their page's own test writes and runs them,
and it must name them. `json`, `toml` and `yaml` blocks must parse, and a `json` block must have the
shape of the JSON a command of its page printed.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import tomllib
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from sqlalchemy.engine import URL

import pgstack.errors

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
RUNNER = Path(__file__).with_name("blocks_runner.py")
BIN = Path(sys.executable).parent
LANGUAGES = {"python", "bash", "sh", "json", "toml", "yaml", "text"}

# Commands that are not run, each with why. Every entry must still appear on a page.
SKIPPED = {
    "uv add pgstack": "installs from the package index into the project it runs in",
    "uv run pytest": "the test suite itself, which is running this test",
    "uv run pytest -m slow": "the suite's walkthroughs, which .ci/run runs as a step of its own",
    "PGSTACK_TEST_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres uv run pytest": (
        "the test suite itself, which is running this test"
    ),
    "PGSTACK_TEST_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres "
    "PGSTACK_TEST_POOLER_URL=postgresql://127.0.0.1:6432 uv run pytest": (
        "the test suite itself, through a PgBouncer that .ci/run starts"
    ),
    "bash .ci/run": "CI: lint, types and the whole suite, this test included",
    "uv run ruff check && uv run ruff format --check && uv run mypy src benchmarks": (
        "lint and types: .ci/run runs them beside the suite"
    ),
    "uv run python -m benchmarks": "minutes of full load: benchmarks are measured, not tested",
    "uv run python -m benchmarks --quick": "minutes of full load, as above",
    "uv run python -m benchmarks --dsn postgresql://user@host/db": "a server of the reader's",
    "uv run python -m benchmarks --workloads w1,w7 --contenders pgstack": "load, as above",
    "uv run python -m benchmarks --output table.md": "minutes of full load, as above",
    "uv run python -m benchmarks.http": "minutes of full load, as above",
    "uv run python -m benchmarks.http --rate-limited": "minutes of full load, as above",
    "uv run python -m benchmarks.stream_memory": "a million rows: minutes of full load",
    "export DATABASE_MIGRATION_URL=postgresql://myapp_owner:OWNER-PW@db.internal/myapp": (
        "a placeholder server; db init with both roles runs in tests/migrations/test_roles.py"
    ),
    "export DATABASE_URL=postgresql://myapp:APP-PW@db.internal/myapp": (
        "a placeholder server, as above"
    ),
    "pgstack db init --admin-url postgresql://postgres:ADMIN-PW@db.internal/postgres": (
        "a placeholder server; it would create cluster-wide roles on the shared test server"
    ),
    "pgstack tokens refresh-due --refreshers myapp.tokens:REFRESHERS --within-minutes 10": (
        "imports the reader's refreshers (myapp.tokens), which call a provider over the network"
    ),
}

# What a page's python blocks must print, beyond running without an error.
PRINTS = {
    "docs/tenancy-rls.md": ["in the transaction: True", "after it, on the same pool: (no tenant)"],
    "docs/ratelimits.md": ["True 1 2 0", "True 0 2 0", "False 0 2 "],
    "README.md": ["PostgreSQL", "[(1,)]", "'checked_out': 0"],
    "docs/repository.md": [
        "Cannot filter Project by 'id; DROP TABLE projects'",
        "404 Project",
        "403",
        "['pk_projects', 'uq_projects_name']",
    ],
}


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    language: str
    body: str

    @property
    def label(self) -> str | None:
        """The file a walkthrough block stands for (`# path/to/file` on its first line)."""
        first = self.body.split("\n", 1)[0]
        match = re.fullmatch(r"# (\S+)", first)
        return match.group(1) if match else None

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    text = page.read_text()
    return [
        Block(page, text.count("\n", 0, m.start()) + 1, m.group(1), m.group(2))
        for m in re.finditer(r"^```(\S*)[^\n]*\n(.*?)^```[ \t]*$", text, flags=re.S | re.M)
    ]


def commands(block: Block) -> list[str]:
    """The commands of a shell block: one a line, `\\` continuing a line."""
    return [
        line.strip()
        for line in block.body.replace("\\\n", " ").splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]


def words(command: str) -> str:
    """A command without its comment, spaced evenly, to compare with SKIPPED."""
    return " ".join(shlex.split(command, comments=True))


def is_server(command: str) -> bool:
    tokens = shlex.split(command, comments=True)
    return "uvicorn" in tokens or any(
        a == "pgstack" and b == "serve" for a, b in itertools.pairwise(tokens)
    )


def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def test_every_block_names_its_language() -> None:
    # proves: W1
    unnamed = [b.name for p in PAGES for b in blocks(p) if b.language not in LANGUAGES]
    assert not unnamed, f"blocks without a known language ({sorted(LANGUAGES)}): {unnamed}"


def test_every_walkthrough_file_is_used_by_a_test() -> None:
    # proves: W1, G3
    sources = "\n".join(
        p.read_text() for p in (ROOT / "tests").rglob("*.py") if p.parent != ROOT / "tests" / "docs"
    )
    labelled = [b for p in PAGES for b in blocks(p) if b.label]
    assert labelled, "the walkthroughs of docs/migrations.md and docs/tokens.md have labels"
    unused = [f"{b.name} ({b.label})" for b in labelled if f'"{b.label}"' not in sources]
    assert not unused, f"walkthrough files no test writes or runs: {unused}"


def test_every_skipped_command_is_still_on_a_page() -> None:
    # proves: W1
    written = {
        words(c)
        for p in PAGES
        for b in blocks(p)
        if b.language in {"bash", "sh"}
        for c in commands(b)
    }
    assert not set(SKIPPED) - written, "SKIPPED names commands no page has any more"


def test_config_and_data_blocks_parse() -> None:
    # proves: C1, C5
    for page in PAGES:
        for block in blocks(page):
            if block.language == "json":
                json.loads(block.body)
            elif block.language == "toml":
                tomllib.loads(block.body)
            elif block.language == "yaml":
                yaml.safe_load(block.body)


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_the_page_runs_as_written(
    page: Path, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    # proves: W1, C2, C3, C5, R1, R2, R3, R4, R5, R7, M1, M2, M3, M4, T5
    found = [b for b in blocks(page) if not b.label]
    python = [b for b in found if b.language == "python"]
    shell = [
        c
        for b in found
        if b.language in {"bash", "sh"}
        for c in commands(b)
        if words(c) not in SKIPPED
    ]
    if not python and not shell:
        pytest.skip(f"{page_id(page)}: no python or shell block to run here")
    url: URL = request.getfixturevalue("pgstack_migrated_url")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "PGSTACK_"))}
    env["DATABASE_URL"] = url.render_as_string(hide_password=False)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"

    # The python blocks and the shell commands are independent: run them side by side.
    script = tmp_path / "blocks.json"
    script.write_text(json.dumps([[b.name, b.body] for b in python]))
    runner = subprocess.Popen(
        [sys.executable, str(RUNNER), str(script)] if python else ["true"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        printed_json = []
        for command in shell:
            if is_server(command):
                serve_until_healthy(command, env, tmp_path)
                continue
            out, env = run_command(command, env, tmp_path)
            with contextlib.suppress(ValueError):
                printed_json.append(json.loads(out))
        stdout, stderr = runner.communicate(timeout=300)
    finally:
        runner.kill()
        runner.wait()
    assert runner.returncode == 0, stdout + stderr
    for expected in PRINTS.get(page_id(page), []):
        assert expected in stdout, f"{page_id(page)} should print {expected!r}"
    for block in found:
        if block.language == "json" and printed_json:
            documented = json.loads(block.body)
            assert any(shape_within(documented, real) for real in printed_json), (
                f"{block.name} does not have the shape of what its page's command printed: "
                f"{printed_json}"
            )


def run_command(command: str, env: dict[str, str], tmp: Path) -> tuple[str, dict[str, str]]:
    """Run one command in bash from the repository's root; return its output and its env."""
    env_out = tmp / "env.out"
    done = subprocess.run(
        ["bash", "-c", f'set -eo pipefail\n{command}\nenv -0 > "{env_out}"'],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, f"`{command}` failed:\n{done.stdout}{done.stderr}"
    after = dict(
        item.partition("=")[::2] for item in env_out.read_text().split("\0") if "=" in item
    )
    return done.stdout, after


def serve_until_healthy(command: str, env: dict[str, str], tmp: Path) -> None:
    """Start a server command on a free port, wait for /health to pass, then stop it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    argv = [*shlex.split(command, comments=True), "--port", str(port)]
    log = tmp / "server.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert server.poll() is None, f"`{command}` exited:\n{log.read_text()}"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"`{command}` never answered /health:\n{log.read_text()}")
    finally:
        os.killpg(server.pid, signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def shape_within(documented: Any, real: Any) -> bool:
    """Whether every key the page shows is in the real value, with values of the same kind."""
    if isinstance(documented, dict):
        return isinstance(real, dict) and all(
            key in real and shape_within(value, real[key]) for key, value in documented.items()
        )
    if isinstance(documented, list):
        return isinstance(real, list) and all(
            any(shape_within(item, other) for other in real) for item in documented
        )
    if isinstance(documented, bool) or documented is None:
        return isinstance(real, bool) or real is None
    if isinstance(documented, int | float):
        return isinstance(real, int | float) and not isinstance(real, bool)
    return isinstance(real, type(documented))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "", heading)
    kept = "".join(c for c in text.lower() if c in " -" or unicodedata.category(c)[0] in "LN")
    return kept.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    found: set[str] = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *#* *$", text, flags=re.M):
        base, n = slug(heading), 0
        while (name := base if n == 0 else f"{base}-{n}") in found:
            n += 1
        found.add(name)
    return found


def test_every_relative_link_resolves() -> None:
    # proves: O6
    broken = []
    for page in PAGES:
        text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
        text = re.sub(r"`[^`\n]*`", "", text)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                broken.append(f"{page_id(page)}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                broken.append(f"{page_id(page)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_the_index_lists_every_guide() -> None:
    # proves: O6
    index = (ROOT / "docs" / "README.md").read_text()
    guides = {p.name for p in PAGES if p.parent == ROOT / "docs" and p.name != "README.md"}
    missing = {g for g in guides if f"]({g})" not in index}
    assert not missing, f"docs/README.md does not list {sorted(missing)}"


def test_troubleshooting_has_a_section_for_every_error() -> None:
    # proves: O6
    page = ROOT / "docs" / "troubleshooting.md"
    errors = [
        name
        for name, value in inspect.getmembers(pgstack.errors, inspect.isclass)
        if issubclass(value, pgstack.errors.PgStackError) and value.__module__ == "pgstack.errors"
    ]
    assert len(errors) > 10
    headings = {slug(h) for h in re.findall(r"^#{2,3} +(.+)$", page.read_text(), flags=re.M)}
    missing = [name for name in errors if not any(h.startswith(name.lower()) for h in headings)]
    assert not missing, f"docs/troubleshooting.md has no section for {missing}"
