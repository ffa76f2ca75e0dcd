"""Find the command lines the docs show and check them against the real command tree.

A doc line is what a user copies: `blueberry train lm --lr=3e-3` must parse as the CLI parses it today,
so a renamed option, command or preset fails the tests instead of the reader. What is read:

- fenced code blocks (any info string but yaml/json/python/toml) and 4-space indented code blocks: each
  line, `\\` continuations joined, `# comments` dropped;
- inline code spans in prose (a span may wrap over two lines of the paragraph);
- yaml blocks with a `command:` list (a sweep's command, as `wandb agent` runs it).

In each, shell operators split commands (`;`, `&&`, `||`, `|`, `&`) and a redirection ends one. A
command is checked from its first `blueberry`, `python -m blueberry.cli`, `python -m blueberry.launch`,
`accelerate launch` or `sbatch slurm/X.sbatch`. Placeholders (RUN_DIR, ENTITY/PROJECT, `<run id>`, `...`,
`${args}`) stand for arguments and always pass. Option values are checked where the option has a closed
set (a click.Choice such as --preset) or a number/bool type. Values are not otherwise checked: a doc may
name files the reader has not made yet (`--config exp.yaml`).

An inline span that starts with an option (`--wandb_log_model none|best|all`) must name options that some
command takes (the command is not said). Also checked: relative links reach a file (and a heading of it), and every repo path the docs name under launch/, sweeps/, slurm/, benchmarks/, tests/ and
blueberry/ (and `python -m benchmarks.X`) exists.

Nothing here imports torch: the click tree (blueberry.cli) imports none, and accelerate's launch options
are read from its source with ast (importing accelerate.commands.launch imports torch).
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import re
import shlex
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import click
import yaml

REPO = Path(__file__).resolve().parents[1]
NOT_SHELL = {"yaml", "yml", "json", "python", "py", "toml", "ini"}
SEPARATORS = {";", "&&", "||", "|", "&", "(", ")", ";;", "|&"}
# Option names the docs show on purpose as a mistake, to show the error blueberry gives
# (`--lrr`, `--learning_rate`). test_docs_commands checks that each is indeed not an option.
DELIBERATE_MISTAKES = {"lrr", "learning_rate"}
NEEDS_VALUE = "needs a value"

PLACEHOLDER = re.compile(r"""
    \.\.\.                                   # `PATH...`, `...`
  | ^\$\{[^}]*\}$                            # ${args}, ${interpreter}: the agent's macros
  | ^[A-Z][A-Z0-9_]*([/.,:=|-][A-Z0-9_]*)*$  # RUN_DIR, ENTITY/PROJECT/ID, FIELD,..., KEY=VALUE, N
""", re.X)
ANGLE = re.compile(r"<[A-Za-z][^<>\n]*>")    # `<run id>`, `runs/scanline-tiny-<time>`
REPO_PATH = re.compile(r"(?<![\w./-])((?:launch|sweeps|slurm|benchmarks|tests|blueberry)/[\w./-]*\w"
                       r"\.(?:py|yaml|yml|sbatch|sh|json|txt))(?![\w*<])")
STARTS = re.compile(r"(?<![\w/.-])(blueberry|sbatch|accelerate)(?![\w/.:'-])|-m\s+(blueberry|benchmarks)\.|python\S*\s+benchmarks/")


@dataclass
class Snippet:
    """Text a reader may copy, with the file and line it starts on."""
    path: Path
    line: int
    text: str
    kind: str   # "code", "inline" or "yaml"

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(REPO) if self.path.is_relative_to(REPO) else self.path}:{self.line}"


# ---------------------------------------------------------------- reading markdown

def snippets(path: Path, text: str | None = None) -> list[Snippet]:
    """The code lines, inline code spans and yaml `command:` blocks of one markdown file."""
    lines = (path.read_text() if text is None else text).splitlines()
    found: list[Snippet] = []
    prose: list[tuple[int, str]] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        fence = re.match(r"\s*(`{3,}|~{3,})\s*([\w+-]*)", line)
        if fence:
            close, lang = fence.group(1), fence.group(2).lower()
            j = i + 1
            while j < len(lines) and not lines[j].strip().startswith(close):
                j += 1
            body = list(enumerate(lines[i + 1:j], start=i + 2))
            if lang in ("yaml", "yml"):
                found += _yaml_commands(path, body)
            elif lang not in NOT_SHELL:
                found += _code_lines(path, body)
            _flush_prose(path, prose, found)
            i = j + 1
            continue
        if line.startswith("    ") and _starts_indented_code(lines, i):
            j = i
            while j < len(lines) and (lines[j].startswith("    ") or not lines[j].strip()):
                j += 1
            found += _code_lines(path, [(n + 1, s[4:]) for n, s in enumerate(lines[i:j], start=i)])
            _flush_prose(path, prose, found)
            i = j
            continue
        if line.strip():
            prose.append((i + 1, line))
        else:
            _flush_prose(path, prose, found)
        i += 1
    _flush_prose(path, prose, found)
    return found


def _starts_indented_code(lines: list[str], i: int) -> bool:
    """An indented code block follows a blank line and is not the continuation of a list item."""
    if i == 0 or lines[i - 1].strip():
        return False
    k = i - 1
    while k >= 0 and not lines[k].strip():
        k -= 1
    return k < 0 or not re.match(r"\s*([-*+]|\d+[.)])\s|\s", lines[k])


def _code_lines(path: Path, body: list[tuple[int, str]]) -> list[Snippet]:
    out, pending, start = [], "", 0
    for number, line in body:
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        out.append(Snippet(path, start, pending + line, "code"))
        pending = ""
    if pending:
        out.append(Snippet(path, start, pending, "code"))
    return out


def _yaml_commands(path: Path, body: list[tuple[int, str]]) -> list[Snippet]:
    text = "\n".join(line for _, line in body)
    if "command:" not in text or not body:
        return []
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        return [Snippet(path, body[0][0], f"not valid YAML: {e}", "yaml-error")]
    command = doc.get("command") if isinstance(doc, dict) else None
    if not isinstance(command, list):
        return []
    line = next(n for n, s in body if "command:" in s)
    return [Snippet(path, line, shlex.join(str(t) for t in command), "yaml")]


def _flush_prose(path: Path, prose: list[tuple[int, str]], found: list[Snippet]) -> None:
    """Inline code spans of one paragraph (a span may wrap to the next line)."""
    if not prose:
        return
    text = "\n".join(line for _, line in prose)
    for m in re.finditer(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", text, re.S):
        line = prose[0][0] + text.count("\n", 0, m.start(2))
        found.append(Snippet(path, line, " ".join(m.group(2).split()), "inline"))
    prose.clear()


# ---------------------------------------------------------------- splitting shell text

def commands(snippet: Snippet) -> list[list[str]]:
    """The simple commands of a snippet that start somewhere we check; raises ValueError if a line
    that names a command cannot be split as the shell would."""
    text = ANGLE.sub("ARG", snippet.text)
    if not STARTS.search(text):
        return []
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    tokens = list(lexer)   # ValueError on an unclosed quote
    out, current, redirected = [], [], False
    for token in tokens:
        if token in SEPARATORS:
            out.append(current)
            current, redirected = [], False
        elif re.fullmatch(r"\d*[<>]+&?", token):
            redirected = True
        elif not redirected:
            current.append(token)
    out.append(current)
    return [c for c in out if c]


def is_placeholder(token: str) -> bool:
    return bool(PLACEHOLDER.search(token)) or "ARG" in token


# ---------------------------------------------------------------- the click tree

@cache
def cli_main() -> click.Group:
    from blueberry.cli import main
    return main


def help_options() -> set[str]:
    return set(cli_main().context_settings.get("help_option_names", ["--help"]))


def options_of(command: click.Command) -> dict[str, click.Option]:
    return {name: p for p in command.params if isinstance(p, click.Option) for name in (*p.opts, *p.secondary_opts)}


def trainer_options() -> set[str]:
    """Every option of every `blueberry train TASK` (what `sweep local --override KEY=` may name)."""
    train = cli_main().commands["train"]
    return {name for task in train.commands.values() for name in options_of(task)}


def _known(command: click.Command) -> str:
    return ", ".join(sorted(set(options_of(command)) | help_options()))


def _value_problem(param: click.Option, value: str) -> str | None:
    if is_placeholder(value):
        return None
    if isinstance(param.type, click.Choice):
        if value not in param.type.choices:
            return f"{value!r} is not one of {', '.join(map(str, param.type.choices))}"
        return None
    if isinstance(param.type, (click.types.IntParamType, click.types.FloatParamType, click.types.BoolParamType)):
        try:
            param.type.convert(value, param, None)
        except click.BadParameter as e:
            return e.message
    return None


def check_blueberry(args: list[str], where: str, command: click.Command | None = None,
                    path: tuple[str, ...] = ("blueberry",)) -> list[str]:
    """Problems of `blueberry ARGS` (or of ARGS given to `command`), as click would parse it."""
    command = command or cli_main()
    name = " ".join(path)
    default = getattr(command, "default_command", None)   # PathsOrCommands: `report PATH...`
    if default and (not args or (args[0] not in command.commands and args[0] not in help_options())):
        return check_blueberry(args, where, command.commands[default], path)
    options, problems, given, positional = options_of(command), [], {}, []
    i = 0
    while i < len(args):
        token = args[i]
        if token == "--":
            return problems + _after_dashes(path, given, positional, args[i + 1:], where)
        if token.startswith("-") and len(token) > 1 and not re.fullmatch(r"-[\d.]+(e-?\d+)?", token):
            opt, eq, value = token.partition("=")
            i += 1
            if opt in help_options():
                continue
            param = options.get(opt)
            if param is None:
                if opt.lstrip("-") not in DELIBERATE_MISTAKES:
                    close = difflib.get_close_matches(opt, options, n=1)
                    hint = f" (did you mean {close[0]}?)" if close else ""
                    problems.append(f"{where}: `{name}` has no option {opt}{hint}; its options: {_known(command)}")
                continue
            if param.is_flag or param.count:
                if eq:
                    problems.append(f"{where}: `{name} {opt}` is a flag and takes no value (`{token}`)")
                continue
            if not eq:
                if i >= len(args):
                    problems.append(f"{where}: `{name} {opt}` {NEEDS_VALUE}")
                    break
                value = args[i]
                i += 1
            given[param.name] = value
            bad = _value_problem(param, value)
            if bad:
                problems.append(f"{where}: `{name} {opt}`: {bad}")
            if path[1:] == ("sweep", "local") and opt == "--override":
                key = value.partition("=")[0]
                if not is_placeholder(key) and key not in DELIBERATE_MISTAKES and f"--{key}" not in trainer_options():
                    problems.append(f"{where}: `{name} --override {value}`: {key} is no trainer option")
            continue
        if isinstance(command, click.Group):
            sub = command.commands.get(token)
            if sub is None:
                if not is_placeholder(token):
                    problems.append(f"{where}: `{name}` has no command {token!r}; its commands: "
                                    f"{', '.join(sorted(command.commands))}")
                return problems
            return problems + check_blueberry(args[i + 1:], where, sub, (*path, token))
        positional.append(token)
        i += 1
    return problems


def _after_dashes(path: tuple[str, ...], given: dict, positional: list[str], rest: list[str], where: str) -> list[str]:
    """`slurm submit KIND ... -- ARGS`: ARGS go to the job (train: trainer options; sweep: the sweep YAML
    then `sweep local` options, or with --mode wandb the sweep id then `sweep agent` options)."""
    if path[1:] != ("slurm", "submit") or not positional:
        return []
    main, kind = cli_main(), positional[0]
    if kind in ("train", "multinode"):
        task = given.get("task") or "lm"
        return check_blueberry(rest, where, main.commands["train"].commands[task], ("blueberry", "train", task))
    if kind == "sweep" and rest:
        sub = "agent" if given.get("mode") == "wandb" else "local"
        return check_blueberry(rest[1:], where, main.commands["sweep"].commands[sub], ("blueberry", "sweep", sub))
    return []


# ---------------------------------------------------------------- accelerate launch, sbatch, benchmarks

@cache
def argparse_options(source: Path) -> dict[str, bool]:
    """An argparse program's options -> whether each is a flag, read from its source without running it
    (importing accelerate.commands.launch imports torch; a benchmark imports torch too)."""
    options = {"-h": True, "--help": True}
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
            names = [a.value for a in node.args if isinstance(a, ast.Constant) and str(a.value).startswith("-")]
            action = next((k.value.value for k in node.keywords if k.arg == "action"
                           and isinstance(k.value, ast.Constant)), None)
            options.update({n: action in ("store_true", "store_false", "help", "count") for n in names})
    return options


def accelerate_options() -> dict[str, bool]:
    return argparse_options(Path(importlib.util.find_spec("accelerate.commands.launch").origin))


def check_accelerate(args: list[str], where: str, name: str) -> list[str]:
    """accelerate launch ARGS: its own options, then the script or `-m module`, then the module's args."""
    options, problems, module, i = accelerate_options(), [], False, 0
    while i < len(args):
        token = args[i]
        if token.startswith("-"):
            opt, eq, _ = token.partition("=")
            i += 1
            if opt not in options:
                problems.append(f"{where}: `{name}` has no option {opt}; its options: {', '.join(sorted(options))}")
                if not eq and i < len(args) and not args[i].startswith("-"):
                    i += 1   # most of its options take a value: read on after it
                continue
            if opt in ("-m", "--module"):
                module = True
            elif not options[opt] and not eq:
                i += 1
            continue
        if module and token == "blueberry.cli":
            return problems + check_blueberry(args[i + 1:], where)
        if module and token.startswith("benchmarks."):
            return problems + check_benchmark(token, args[i + 1:], where)
        return problems
    return problems


def check_benchmark(script: str, args: list[str], where: str) -> list[str]:
    """`python -m benchmarks.X ARGS` or `python benchmarks/X.py ARGS`: the file exists and takes each --option."""
    path = REPO / script if script.endswith(".py") else REPO / (script.replace(".", "/") + ".py")
    if is_placeholder(path.stem):   # `python -m benchmarks.X`
        return []
    if not path.is_file():
        return [f"{where}: `{script}`: there is no {path.relative_to(REPO)}"]
    options, problems = argparse_options(path), []
    for token in args:
        if token == "--":
            break
        opt = token.partition("=")[0]
        if token.startswith("-") and not re.fullmatch(r"-[\d.]+(e-?\d+)?", token) and opt not in options:
            problems.append(f"{where}: `{script}` has no option {opt}; its options: {', '.join(sorted(options))}")
    return problems


def check_sbatch(args: list[str], where: str, env: dict[str, str]) -> list[str]:
    """sbatch [sbatch options] slurm/X.sbatch ARGS: train and multinode pass ARGS to `blueberry train TASK`."""
    script = next((i for i, t in enumerate(args) if t.endswith(".sbatch")), None)
    if script is None or Path(args[script]).stem not in ("train", "multinode"):
        return []
    task = env.get("TASK", "lm")
    train = cli_main().commands["train"]
    if task not in train.commands:
        return [f"{where}: TASK={task} is not a task; tasks: {', '.join(sorted(train.commands))}"]
    return check_blueberry(args[script + 1:], where, train.commands[task], ("blueberry", "train", task))


def check_command(tokens: list[str], where: str) -> list[str] | None:
    """One simple command: checked from the first point where it hands over to something we know;
    None when it never does (`pip install ...`)."""
    env = {}
    for i, token in enumerate(tokens):
        if re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", token) and len(env) == i:
            key, _, value = token.partition("=")
            env[key] = value
        elif token == "blueberry":
            return check_blueberry(tokens[i + 1:], where)
        elif token == "-m" and i + 1 < len(tokens) and tokens[i + 1] == "blueberry.cli":
            return check_blueberry(tokens[i + 2:], where)
        elif token == "-m" and i + 1 < len(tokens) and tokens[i + 1] == "blueberry.launch":
            return check_accelerate(tokens[i + 2:], where, "python -m blueberry.launch")
        elif token == "-m" and i + 1 < len(tokens) and tokens[i + 1].startswith("benchmarks."):
            return check_benchmark(tokens[i + 1], tokens[i + 2:], where)
        elif re.fullmatch(r"python[\d.]*", token) and i + 1 < len(tokens) and tokens[i + 1].startswith("benchmarks/"):
            return check_benchmark(tokens[i + 1], tokens[i + 2:], where)
        elif token == "accelerate" and tokens[i + 1:i + 2] == ["launch"]:
            return check_accelerate(tokens[i + 2:], where, "accelerate launch")
        elif token == "sbatch":
            return check_sbatch(tokens[i + 1:], where, env)
    return None


# ---------------------------------------------------------------- options named in prose

# Options of programs the docs mention that are neither blueberry's, accelerate launch's nor a benchmark's.
FOREIGN_OPTIONS = {"--requeue", "--signal",   # sbatch: the #SBATCH lines of slurm/*.sbatch
                   "--signals_to_handle"}     # torchrun: what python -m blueberry.launch passes it


@cache
def blueberry_options() -> dict[str, list[click.Option]]:
    """Every option of every blueberry command -> the params that carry that name."""
    found, todo = {}, [cli_main()]
    while todo:
        command = todo.pop()
        for name, param in options_of(command).items():
            found.setdefault(name, []).append(param)
        todo += getattr(command, "commands", {}).values()
    return found


@cache
def every_option() -> frozenset[str]:
    """Every option some program the docs show takes: any blueberry command, accelerate launch, a benchmark."""
    names = set(FOREIGN_OPTIONS) | set(blueberry_options()) | set(accelerate_options()) | help_options()
    for script in (REPO / "benchmarks").glob("*.py"):
        names |= set(argparse_options(script))
    return frozenset(names)


def prose_option_problems(snippet: Snippet) -> list[str]:
    """An inline span that starts with an option (`--wandb_log_model none|best|all`) names options that exist,
    and values (each of a|b|c) that the option takes where every blueberry command's option of that name
    has a closed set of them."""
    if snippet.kind != "inline" or not snippet.text.startswith("--"):
        return []
    problems = []
    for name, eq, value in re.findall(r"(?<![\w-])(--[A-Za-z][\w-]*)(?:(=|\s+)([^-\s]\S*))?", snippet.text):
        if name.lstrip("-") in DELIBERATE_MISTAKES:
            continue
        if name not in every_option():
            problems.append(f"{snippet.where}: `{snippet.text}`: no command takes {name}")
            continue
        params = blueberry_options().get(name, [])
        if value and params and not any(p.is_flag for p in params):
            for part in value.split("|"):
                bad = [_value_problem(p, part) for p in params]
                if all(bad):
                    problems.append(f"{snippet.where}: `{snippet.text}`: {name}: {bad[0]}")
    return problems


# ---------------------------------------------------------------- whole files

def command_problems(path: Path, text: str | None = None) -> tuple[list[str], int]:
    """(problems, number of commands checked) of one markdown file."""
    problems, checked = [], 0
    for snippet in snippets(path, text):
        if snippet.kind == "yaml-error":
            problems.append(f"{snippet.where}: {snippet.text}")
            continue
        problems += prose_option_problems(snippet)
        try:
            found = commands(snippet)
        except ValueError as e:
            problems.append(f"{snippet.where}: cannot split `{snippet.text}` as the shell would ({e})")
            continue
        for tokens in found:
            result = check_command(tokens, snippet.where)
            if result is not None:
                # prose may name an option without its value: "see `blueberry sweep local --count`"
                problems += [p for p in result if not (snippet.kind == "inline" and p.endswith(NEEDS_VALUE))]
                checked += 1
    return problems, checked


def path_problems(path: Path, text: str | None = None) -> list[str]:
    """Repo files a doc names (launch/X.yaml, sweeps/X.yaml, slurm/X.sbatch, benchmarks/X.py, ...) that
    do not exist."""
    lines = (path.read_text() if text is None else text).splitlines()
    return [f"{Snippet(path, n, '', '').where}: names {m.group(1)}, which is not in the repository"
            for n, line in enumerate(lines, start=1) for m in REPO_PATH.finditer(line)
            if not (REPO / m.group(1)).exists() and not is_placeholder(Path(m.group(1)).stem)]


def github_anchor(heading: str) -> str:
    """The id GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def link_problems(path: Path, text: str | None = None) -> list[str]:
    """Relative links ([x](sweeps.md#project)) reach a file, and a heading of it when they name one."""
    lines = (path.read_text() if text is None else text).splitlines()
    problems = []
    for n, line in enumerate(lines, start=1):
        for target in re.findall(r"\]\(([^)\s]+)\)", line):
            if re.match(r"[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            linked = (path.parent / file).resolve() if file else path
            where = Snippet(path, n, "", "").where
            if not linked.exists():
                problems.append(f"{where}: links to {target}, which does not exist")
            elif anchor and linked.suffix == ".md":
                anchors = {github_anchor(h) for h in re.findall(r"^#+\s+(.*)$", linked.read_text(), re.M)}
                if anchor not in anchors:
                    problems.append(f"{where}: links to {target}: {linked.name} has no heading #{anchor}")
    return problems

