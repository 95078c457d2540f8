"""The README's worker module is examples/shop.py, word for word: the file is what CI runs
(tests/e2e/test_install.py), so the README shows code that works."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
INTRO = "Here is a complete worker module, `shop.py`"


def test_the_readme_shows_examples_shop_py_as_it_is() -> None:
    readme = (REPO / "README.md").read_text()
    assert INTRO in readme, "the README no longer introduces shop.py this way: update this test"
    after = readme[readme.index(INTRO) :]
    start = after.index("```python\n") + len("```python\n")
    block = after[start : after.index("```\n", start)]
    assert block == (REPO / "examples" / "shop.py").read_text()
