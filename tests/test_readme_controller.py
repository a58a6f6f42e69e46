"""README's "Write your own controller" runs as written and does what README says it does."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_example(heading: str) -> str:
    """The first ```python block after ``heading`` in README."""
    text = README.read_text()
    section = text[text.index(heading) :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_custom_controller_of_the_readme_brings_layer_0_back_to_nominal_as_the_readme_says():
    code = readme_example("### Write your own controller")
    controller_lines = code[code.index("class NudgeController") : code.index("torch.manual_seed")].strip().splitlines()
    assert len(controller_lines) <= 40, "README promises a complete controller in about 40 lines"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, str(README), "exec"), {"__name__": "readme_example"})
    lines = printed.getvalue().splitlines()
    states = {int(line.split()[0]): line.split()[1] for line in lines if line[:1].isdigit()}
    assert states[3] == "pre_collapse" and states[5] == "collapse_confirmed"
    assert all(states[step] == "nominal" for step in range(7, 11))
    assert "7 nominal Top2 0.56, Neff 5.8" in lines
    assert sum("expert 0 took 100% of the tokens" in line for line in lines) == 4
