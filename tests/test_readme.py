"""The README's code example runs as written (copy-paste drift fails here)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python example"
    namespace: dict = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)
    images = namespace["images"]
    assert images.shape == (2, 1, 32, 32) and bool(images.isfinite().all())
