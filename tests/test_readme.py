"""The README's test command is the one `.ci/run` executes, verbatim."""
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)\n```", readme.split("## Set up", 1)[1].split("\n## ", 1)[0], re.S)
    assert len(blocks) == 2, "the set-up section holds exactly two commands"
    test_command = blocks[1].strip()
    assert "pytest" in test_command
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_command in ci_lines


DOCS = [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))


def _commands(text: str):
    """Every `python -m module args` command line in the text (code spans and bash blocks)."""
    yield from re.findall(r"python -m ([A-Za-z_][\w.]*)([^`\n]*)", text)


def test_documented_commands_name_real_modules_flags_and_files():
    problems, checked_flags = [], 0
    for doc in DOCS:
        text = doc.read_text()
        for module, args in _commands(text):
            path = ROOT / module.replace(".", "/")
            source = path.with_suffix(".py") if path.with_suffix(".py").is_file() else path / "__main__.py"
            if module in ("pytest", "venv", "pip"):
                continue
            if not source.is_file():
                problems.append(f"{doc.name}: python -m {module}: no such module")
                continue
            code = source.read_text()
            if module.endswith(".train") or module == "common.train":
                code += (ROOT / "common" / "train.py").read_text()
            for flag in re.findall(r"(?<![\w-])--([a-z_][\w-]*)(?![\w.])", args):
                checked_flags += 1
                if f'"--{flag}"' not in code and f"'--{flag}'" not in code and f'"{flag}"' not in code:
                    problems.append(f"{doc.name}: python -m {module} --{flag}: the module defines no such flag")
        for rel in re.findall(r"(?<![\w/.])((?:configs|bench|tests|notebooks|common|flamingo_jax|llava_jax|vita_jax|"
                              r"mmlm_jax)/[\w/.-]+\.(?:py|ipynb|sh|jsonl))", text):
            if not (ROOT / rel).exists():
                problems.append(f"{doc.name}: {rel} does not exist")
        prose = re.sub(r"```.*?```", "", text, flags=re.S)  # links inside a quoted report are the report's
        for link in re.findall(r"\]\(((?!http)[^)#]+)\)", prose):
            if not (doc.parent / link).exists():
                problems.append(f"{doc.name}: link {link} points nowhere")
    assert not problems, "\n".join(problems)
    assert checked_flags > 30  # the docs' commands were found


def test_readme_is_a_front_door():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250
