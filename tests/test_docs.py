"""Every Python example in the README and the docs runs as written, against a small study's results
in ``results/quickstart`` (what ``make quickstart`` writes). A block that is not meant to run here (it
trains, or needs a cluster) is fenced as ``text`` or ``bash``, not ``python``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
EXAMPLES = [(page, i, code) for page in PAGES for i, code in enumerate(BLOCK.findall(page.read_text()))]

@pytest.fixture(scope="module")
def results_cwd(small_study: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working directory whose ``results/quickstart`` is the session's small study."""
    cwd = tmp_path_factory.mktemp("docs")
    (cwd / "results").mkdir()
    (cwd / "results" / "quickstart").symlink_to(small_study, target_is_directory=True)
    return cwd


def test_the_readme_and_the_docs_have_examples() -> None:
    assert any(page.name == "README.md" for page, _, _ in EXAMPLES)
    assert len(EXAMPLES) >= 5, [str(p) for p, _, _ in EXAMPLES]


@pytest.mark.parametrize("page, index, code", EXAMPLES,
                         ids=[f"{p.relative_to(ROOT)}#{i}" for p, i, _ in EXAMPLES])
def test_example_runs_as_written(page: Path, index: int, code: str, results_cwd: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import matplotlib

    matplotlib.use("Agg")
    monkeypatch.chdir(results_cwd)
    exec(compile(code, f"{page.name} (python block {index})", "exec"), {"__name__": "__docs__"})
