"""Every ```python block of README.md and docs/ runs, so none shows code that raises.

Each block runs alone in a fresh interpreter (no ES_ variables: the embedded fakeredis
store), in a folder holding the page's earlier module blocks: a block whose first line is
`# shop.py` is also saved as `shop.py`, and a later block of the same page may `import shop`,
as a reader would. A block that cannot run alone (a deployment fragment) has
`<!-- not-run: reason -->` on the line before it; they are counted so they stay few.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import fakeredis
import pytest

from es_workers import Content, RedisStorage, StorageUnavailableError, Store

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
MOST_NOT_RUN = 2
_FENCE = re.compile(r"^```python\n(.*?)^```$", re.MULTILINE | re.DOTALL)
_NOT_RUN = re.compile(r"<!--\s*not-run:\s*(.*?)\s*-->\s*$")
_MODULE = re.compile(r"# (\w+)\.py\n")


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    code: str
    not_run: str | None  # the reason given in the page, if it is not run

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    @property
    def module(self) -> str | None:
        found = _MODULE.match(self.code)
        return found.group(1) if found else None


def blocks_of(page: Path) -> list[Block]:
    text = page.read_text()
    found = []
    for match in _FENCE.finditer(text):
        before = text[:match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        reason = _NOT_RUN.search(before)
        found.append(Block(page, text.count("\n", 0, match.start()) + 1, match.group(1),
                           reason.group(1) if reason else None))
    return found


BLOCKS = [block for page in PAGES for block in blocks_of(page)]


def test_the_pages_have_python_blocks_and_few_are_not_run() -> None:
    assert len(BLOCKS) >= 10
    not_run = [f"{block.name}: {block.not_run}" for block in BLOCKS if block.not_run is not None]
    assert len(not_run) <= MOST_NOT_RUN, not_run
    assert all(block.not_run for block in BLOCKS if block.not_run is not None), "give a reason"


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.not_run is None],
                         ids=lambda block: block.name)
def test_the_block_runs(block: Block, tmp_path: Path) -> None:
    for earlier in blocks_of(block.page):
        if earlier.line >= block.line:
            break
        if earlier.module:
            (tmp_path / f"{earlier.module}.py").write_text(earlier.code)
    script = tmp_path / "block.py"
    script.write_text(block.code)
    env = {name: value for name, value in os.environ.items() if not name.startswith("ES_")}
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{block.name} raised:\n{result.stderr[-3000:]}"


class Opened(Content):
    owner: str


def test_the_failures_page_quotes_the_error_a_write_raises_while_redis_is_down() -> None:
    server = fakeredis.FakeServer(version=(7, 0))
    store = Store(RedisStorage(fakeredis.FakeRedis(server=server)),
                  events={"account": [Opened]})
    with store.open("account", "a1") as stream:
        server.connected = False
        with pytest.raises(StorageUnavailableError) as raised:
            stream.write(Opened(owner="Ada"))
    page = (ROOT / "docs" / "operations" / "failures.md").read_text()
    quoted = [text for text in re.findall(r"`([^`]+)`", page) if "is unavailable" in text]
    assert quoted, "failures.md quotes no StorageUnavailableError message"
    for text in quoted:  # "..." stands for what varies (the server, the cause)
        pattern = ".*".join(re.escape(part) for part in text.split("..."))
        assert re.fullmatch(pattern, str(raised.value)), (text, str(raised.value))
