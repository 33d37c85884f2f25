"""The README's Python example runs as printed and prints what the README says it prints."""

from __future__ import annotations

import re
import subprocess
import sys

from streaming import REPO


def test_readme_example_prints_what_it_says():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    match = re.search(r"## Python\n\n```python\n(?P<code>.*?)```\n\nprints\n\n```\n(?P<out>.*?)```", text, re.DOTALL)
    assert match, "README.md lost its '## Python' example with a 'prints' block"
    run = subprocess.run([sys.executable, "-c", match["code"]], capture_output=True, text=True, timeout=300, cwd=REPO, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout == match["out"]
