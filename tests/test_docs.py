"""The documentation: README.md stays a front door, and the generated pages are valid.

- README.md within 300 lines and 30 KB, its test command where CI reads it, its links to pages that exist;
- every generated page (README.md, docs/*.md, docs/results/*.md): no heading skips a level or goes past six
  ``#``, and every generated block starts with the command that produced it
  (``experiments/update_readme.py``'s ``page_problems``, which also refuses to write such a page);
- ``update_readme.py`` nests a markdown report under the page's headings and refuses one that would break them.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted(
    [
        ROOT / "README.md",
        ROOT / "CHANGELOG.md",
        *(ROOT / "docs").glob("*.md"),
        *(ROOT / "docs" / "results").glob("*.md"),
    ]
)


def _update_readme():
    spec = importlib.util.spec_from_file_location("update_readme", ROOT / "experiments" / "update_readme.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


update_readme = _update_readme()


def test_readme_is_a_front_door():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 300 and len(text.encode()) <= 30_000
    # CI reads the second line after the marker (.ci/run)
    lines = text.splitlines()
    command = lines[lines.index("<!-- test-command -->") + 2]
    assert "pytest" in command and "pip install" in command
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if "://" not in target:
            assert (ROOT / target).exists(), target


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_generated_pages_have_valid_headings_and_every_block_its_command(page):
    text = page.read_text(encoding="utf-8")
    assert update_readme.page_problems(text) == []
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if "://" not in target:
            assert (page.parent / target).exists(), f"{page.name}: {target}"


def test_every_block_has_a_page_and_every_results_page_says_its_version():
    for block, (page, level) in update_readme.PAGES.items():
        assert f"<!-- begin:{block} -->" in (ROOT / page).read_text(encoding="utf-8"), (block, page)
        assert 1 <= level <= 6
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    for page in (ROOT / "docs" / "results").glob("*.md"):
        assert "Produced by bs_ref " in page.read_text(encoding="utf-8"), page.name
        assert f"docs/results/{page.name}" in changelog, page.name


def test_page_problems_finds_skipped_levels_deep_headings_and_blocks_without_a_command():
    good = "# A\n\n## B\n\n### C\n\n```\n####### not a heading in code\n```\n\n## D\n"
    assert update_readme.page_problems(good) == []
    assert any("skipped" in p for p in update_readme.page_problems("# A\n\n### C\n"))
    seven = "".join("#" * level + f" {level}\n" for level in range(1, 8))
    assert any("six levels" in p for p in update_readme.page_problems(seven))
    block = "# A\n\n<!-- begin:x -->\n| table |\n<!-- end:x -->\n"
    assert any("does not start" in p for p in update_readme.page_problems(block))
    stamped = "# A\n\n<!-- begin:x -->\nProduced by `python run.py` (today):\n\n| table |\n<!-- end:x -->\n"
    assert update_readme.page_problems(stamped) == []


def test_update_readme_nests_a_report_under_the_page_and_refuses_a_page_it_would_break(tmp_path):
    page = tmp_path / "tier.md"
    page.write_text("# Results\n\n## One run\n\n<!-- begin:tofu -->\n<!-- end:tofu -->\n")
    report = tmp_path / "table.md"
    report.write_text("# TOFU unlearning results\n\n## Verdicts\n\n### At the end of training\n\n| a |\n")
    argv = [
        "--block",
        "tofu",
        "--from-file",
        str(report),
        "--command",
        "python experiments/tofu.py",
        "--markdown",
        "--page",
        str(page),
    ]
    assert update_readme.main(argv) == 0
    text = page.read_text()
    assert "### TOFU unlearning results\n" in text and "#### Verdicts\n" in text
    assert "##### At the end of training\n" in text and update_readme.page_problems(text) == []
    block = text.split("<!-- begin:tofu -->\n")[1]
    assert block.startswith("Produced by `python experiments/tofu.py` (") and "kernel path" in block
    deep = "# R\n\n## S\n\n### T\n\n#### U\n\n##### V\n"  # at level 3 its last heading would be the 7th level
    report.write_text(deep)
    with pytest.raises(SystemExit, match="six levels"):
        update_readme.main([*argv[:-1], str(page)])
    assert update_readme.page_problems(page.read_text()) == []  # the page was left as it was
