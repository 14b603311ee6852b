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


def test_readme_main_job_runs(tmp_path):
    text = README.read_text()
    first = re.search(r"## Set up and run\n\n```bash\n(.*?)\n", text, re.S).group(1)
    args = first.split("&& ddsd ", 1)[1].split()
    assert args[0] == "train"
    out = tmp_path / "quickstart"
    args[args.index("--out") + 1] = str(out)
    fast = ["--epochs", "1", "--size", "32x32", "--no-progress", "--threads", "1"]
    r = subprocess.run([sys.executable, "-m", "ddsd", *args, *fast], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (out / "summary.json").is_file() and "miou" in r.stdout
