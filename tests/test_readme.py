import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _snippet() -> str:
    text = README.read_text()
    marker = text.index("<!-- readme-snippet")
    return re.search(r"```python\n(.*?)```", text[marker:], re.S).group(1)


def test_readme_snippet_runs(capsys):
    code = _snippet()
    exec(compile(code, str(README), "exec"), {})
    out = capsys.readouterr().out
    assert out.count("loss ") == 3 and "'rate'" in out


def test_readme_setup_commands_are_the_ci_ones():
    text = README.read_text()
    block = re.search(r"## Set up and run\n\n```bash\n(.*?)```", text, re.S).group(1).strip().splitlines()
    assert len(block) == 2
    ci = (README.parent / ".ci" / "run").read_text()
    assert block[1] in ci, "the README's test command must be the one .ci/run executes"


def test_cli_demo_runs():
    r = subprocess.run([sys.executable, "-m", "ddsd", "demo", "--steps", "3"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("rate") == 3
