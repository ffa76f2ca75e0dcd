"""Every command line in README.md and docs/*.md parses against today's CLI: a renamed option, command
or preset, or a moved launch/sweeps/slurm/benchmarks file, fails here instead of in a reader's shell.
How lines are found and checked: tests/doc_commands.py."""

from pathlib import Path

import pytest

from doc_commands import (DELIBERATE_MISTAKES, REPO, command_problems, every_option, link_problems, path_problems,
                          snippets, trainer_options)

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_command_line_parses_against_the_cli(doc):
    problems, checked = command_problems(doc)
    assert not problems, "\n".join(problems)
    assert checked >= 1, f"{doc.relative_to(REPO)}: no command line found: is the extraction still working?"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_repo_file_and_link_a_doc_names_exists(doc):
    problems = path_problems(doc) + link_problems(doc)
    assert not problems, "\n".join(problems)


def test_the_docs_are_the_readme_and_a_page_per_topic():
    assert len(DOCS) >= 8, [str(p) for p in DOCS]
    assert sum(command_problems(doc)[1] for doc in DOCS) >= 120   # the docs show ~150 commands today


def test_the_deliberate_mistakes_the_docs_show_are_still_mistakes():
    """`--lrr` and `--learning_rate` are shown to show their error; they must stay no option."""
    for name in DELIBERATE_MISTAKES:
        assert f"--{name}" not in every_option() and f"--{name}" not in trainer_options()


# The checker itself, on markdown written here: each kind of mistake is caught and named with file:line.

SAMPLE = """\
# A page

Run `blueberry train lm --lrx=3e-3` first.

```bash
blueberry train lm --preset lm-tiny \\
    --max_steps 20 --no_such_field 1      # a continuation line
$ blueberry sweep locale sweeps/quickstart.yaml
python -m venv .venv && blueberry report runs/a --outt cmp/ | tee log
blueberry report --metric val/loss runs/a # --not-checked: a comment
blueberry train lm --preset nope
blueberry sweep local sweeps/quickstart.yaml --override max_stepz=2 --no-report > out.txt --ignored
accelerate launch --config_file launch/cpu-2proc.yaml --num_procs 2 -m blueberry.cli train lm --lr x
blueberry slurm submit train --gpus 2 -- --preset moe-exp3 --max_step 5
blueberry slurm submit sweep --mode wandb -- ENTITY/PROJECT/ID --count 2 --workers 2
blueberry evaluate RUN_DIR --split test --checkpoint best
python -m benchmarks.peers --threads 1 --rounds 3 --fast
sbatch slurm/train.sbatch --preset moe-exp8 --lr_x 1
blueberry train lm --print-config=yes
blueberry train lm --print-config --lr
```

    blueberry train scanline --lines_per_sample 8 --line_per_sample 9

The sweep runs `sweeps/nowhere.yaml` with `--config_file launch/gone.yaml`; `--wandb_log_mode best` is a typo;
`--wandb_mode online|gone` names a mode that is not;
`slurm/X.sbatch` is any script; `blueberry sweep local --count` names an option.
See [the page](page.md#a-page), [gone](gone.md) and [no heading](page.md#nowhere).

```yaml
command: ["${interpreter}", "-m", "blueberry.launch", "--config_file", "launch/8gpu.yaml",
          "-m", "blueberry.cli", "train", "lm", "--optimiser", "muon", "${args}"]
```
"""


def test_the_checker_names_file_line_option_and_the_known_options(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(SAMPLE)
    problems, checked = command_problems(page)
    text = "\n".join(problems)

    def line_of(needle: str) -> int:
        return next(n for n, line in enumerate(SAMPLE.splitlines(), start=1) if needle in line)

    expected = {   # problem text -> line it must name
        "`blueberry train lm` has no option --lrx": line_of("--lrx=3e-3"),   # an inline span
        "has no option --no_such_field": line_of("--preset lm-tiny \\"),   # a continuation joins lines
        "`blueberry sweep` has no command 'locale'": line_of("sweep locale"),
        "`blueberry report` has no option --outt": line_of("--outt"),   # after &&, before a pipe
        "`blueberry train lm --preset`: 'nope' is not one of": line_of("--preset nope"),
        "--override max_stepz=2`: max_stepz is no trainer option": line_of("max_stepz"),
        "`accelerate launch` has no option --num_procs": line_of("--num_procs"),
        "`blueberry train lm --lr`: 'x' is not a valid float": line_of("--num_procs"),
        "`blueberry train lm` has no option --max_step (did you mean --max_steps?)": line_of("--max_step 5"),
        "`blueberry sweep agent` has no option --workers": line_of("--count 2 --workers"),
        "`benchmarks.peers` has no option --fast": line_of("--fast"),
        "`blueberry train lm` has no option --lr_x": line_of("--lr_x"),
        "`blueberry train lm --print-config` is a flag and takes no value": line_of("--print-config=yes"),
        "`blueberry train scanline` has no option --line_per_sample": line_of("--line_per_sample"),
        "`blueberry train lm --lr` needs a value": line_of("--print-config --lr"),   # at the end of code
        "no command takes --wandb_log_mode": line_of("--wandb_log_mode"),
        "`--wandb_mode online|gone`: --wandb_mode: 'gone' is not one of online, offline, disabled":
            line_of("online|gone"),
        "`blueberry train lm` has no option --optimiser": line_of('command: ['),   # a yaml command list
    }
    for message, line in expected.items():
        assert any(p.startswith(f"{page}:{line}: ") and message in p for p in problems), \
            f"missing {message!r} at line {line} in:\n{text}"
    assert len(problems) == len(expected), text
    # the command's known options come with the message, so the reader sees what to write instead
    assert "--max_steps" in next(p for p in problems if "--no_such_field" in p)
    # and nothing else: comments, placeholders, redirections, `--` and `$ ` prompts are understood
    for fine in ("--not-checked", "--ignored", "RUN_DIR"):
        assert fine not in text
    assert checked == 18   # every command of SAMPLE (2 inline, 15 code lines, the yaml command)


def test_the_checker_finds_missing_repo_files(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(SAMPLE)
    line = next(n for n, l in enumerate(SAMPLE.splitlines(), start=1) if "sweeps/nowhere.yaml" in l)
    assert path_problems(page) == [   # and not slurm/X.sbatch, a placeholder
        f"{page}:{line}: names sweeps/nowhere.yaml, which is not in the repository",
        f"{page}:{line}: names launch/gone.yaml, which is not in the repository"]


def test_inline_spans_may_wrap_and_indented_blocks_are_code(tmp_path):
    found = snippets(Path(tmp_path / "p.md"), "A span `python -m\nblueberry.launch` wraps.\n\n    blueberry train lm\n")
    assert [(s.line, s.kind, s.text) for s in found] == [
        (1, "inline", "python -m blueberry.launch"), (4, "code", "blueberry train lm")]


def test_the_checker_finds_broken_links(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(SAMPLE)
    line = next(n for n, l in enumerate(SAMPLE.splitlines(), start=1) if "[gone]" in l)
    assert link_problems(page) == [f"{page}:{line}: links to gone.md, which does not exist",
                                   f"{page}:{line}: links to page.md#nowhere: page.md has no heading #nowhere"]

