"""The command-line convention every job follows (jobs/*.py and their console scripts l2v-*).

Exit codes, the same for every job:

    0  done
    2  the user can fix it: a bad flag, setting, config file, path or input. ONE line on stderr,
       `PROG: error: MESSAGE`, no traceback, and nothing heavy started (check arguments and
       paths before importing torch or starting Ray)
    3  the output is locked by another run (`LockHeldError`; jobs that take a lock, e.g. l2v-embed)
    1  an internal error: the traceback, then one line saying so

`--help` shows every option's default and this table (`job_parser`).

Adopting it in a job (a new jobs/serve.py, say):

    import sys
    from pipelines.cli import UsageError, job_parser, run_job

    def parse_args(argv=None):
        p = job_parser(__doc__)                      # or exit_codes={3: "..."} for more codes
        p.add_argument("--port", type=int, default=8000, help="HTTP port")
        return p.parse_args(argv)                    # a bad flag: one line, exit 2

    def run(argv=None) -> int:
        args = parse_args(argv)
        if args.port < 1:
            raise UsageError(f"--port must be positive, got {args.port}")   # exit 2, one line
        from pipelines.serve import ...              # heavy imports after the checks
        ...
        return 0

    def main(argv=None) -> int:                      # [project.scripts] l2v-serve = "jobs.serve:main"
        return run_job(run, argv)

    if __name__ == "__main__":
        sys.exit(main())

Besides `UsageError`, these count as the user's to fix (exit 2): pydantic `ValidationError` (a
bad config; printed as one line listing each bad field), YAML syntax errors, and a missing file
or folder (`FileNotFoundError`, `NotADirectoryError`). A job adds its own with `usage=(...)`
(or raises `UsageError(...) from err` around the call it knows fails only for the user's reasons).
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
import traceback
from collections.abc import Callable, Iterable

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_LOCKED = 3

EXIT_CODES = {
    EXIT_OK: "done",
    EXIT_USAGE: "bad flags, settings, config file, paths or input (one line on stderr says which)",
    EXIT_INTERNAL: "internal error (the traceback is printed)",
}


class UsageError(Exception):
    """Something the user can fix: the job prints the message as one line and exits 2."""


class LockHeldError(RuntimeError):
    """Another run holds the lock of the output this job writes: exit 3."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the docstring's layout and appends '(default: X)' to every option that has a
    default (not to flags, and not where the help already says what the default is)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        default = action.default
        if (not action.option_strings or default in (None, False, argparse.SUPPRESS)
                or "default" in help_text.lower()):
            return help_text
        return f"{help_text} (default: %(default)s)".strip()


class JobArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag prints one line (`PROG: error: ... (see --help)`), not the usage."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def job_parser(doc: str | None, *, exit_codes: dict[int, str] | None = None, **kwargs) -> JobArgumentParser:
    """A parser whose --help shows the job's docstring, every default and the exit codes."""
    codes = {**EXIT_CODES, **(exit_codes or {})}
    epilog = "exit codes:\n" + "\n".join(
        textwrap.fill(codes[code], width=100, initial_indent=f"  {code}  ", subsequent_indent="     ")
        for code in sorted(codes))
    # allow_abbrev=False: a misspelt flag (--skip for --skip-adapt) is an error, never a guess
    kwargs.setdefault("allow_abbrev", False)
    return JobArgumentParser(description=doc, epilog=epilog, formatter_class=HelpFormatter, **kwargs)


def show_config_defaults(parser: argparse.ArgumentParser, model) -> None:
    """For flags that override a pydantic config's fields (argparse default None, so that a
    config file's value is kept unless the flag is given): show the field's default in --help."""
    for action in parser._actions:  # argparse keeps its actions here; there is no public accessor
        field = model.model_fields.get(action.dest)
        if (field is None or action.default is not None or action.nargs == 0 or field.is_required()
                or "default" in (action.help or "")):
            continue
        value = field.get_default(call_default_factory=True)
        shown = "none" if value is None else str(value).lower() if isinstance(value, bool) else value
        action.help = f"{action.help or ''} (default: {shown})".strip().replace("%", "%%")


def run_job(run: Callable[[list[str] | None], object], argv: list[str] | None = None, *,
            usage: Iterable[type[BaseException]] = (), prog: str | None = None) -> int:
    """Call `run(argv)` and turn what it raises into the exit codes above. Returns the code
    (`run`'s own int when it returns one, else 0)."""
    prog = prog or os.path.basename(sys.argv[0]) or "l2v"
    try:
        result = run(argv)
    except SystemExit:
        raise  # argparse (--help, a bad flag) has already printed and chosen its code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BaseException as err:  # noqa: BLE001 - every error ends as one of the documented codes
        if isinstance(err, LockHeldError):
            print(f"{prog}: error: {one_line(err)}", file=sys.stderr)
            return EXIT_LOCKED
        if isinstance(err, _usage_types(usage)):
            print(f"{prog}: error: {one_line(err)}", file=sys.stderr)
            return EXIT_USAGE
        if not isinstance(err, Exception):
            raise
        traceback.print_exc()
        print(f"{prog}: internal error: {type(err).__name__}: {one_line(err)} (the traceback above shows where)",
              file=sys.stderr)
        return EXIT_INTERNAL
    return result if isinstance(result, int) and not isinstance(result, bool) else EXIT_OK


def _usage_types(extra: Iterable[type[BaseException]]) -> tuple[type[BaseException], ...]:
    import yaml
    from pydantic import ValidationError

    return (UsageError, ValidationError, yaml.YAMLError, FileNotFoundError, NotADirectoryError, *extra)


def one_line(err: BaseException) -> str:
    """The error as one line. A pydantic ValidationError (itself, or the cause of an error that
    wraps it) becomes 'field: problem; field: problem'."""
    validation = None if isinstance(err, UsageError) else _validation_error(err)  # a UsageError is worded already
    if validation is not None:
        fields = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}"
            + (f" (got {e['input']!r})" if e.get("type") != "extra_forbidden" and not isinstance(e.get("input"), dict)
               else "")
            for e in validation.errors()
        )
        head = str(err).splitlines()[0].rstrip(":") if err is not validation else f"invalid {validation.title}"
        return f"{head}: {fields}"
    text = str(err) or type(err).__name__
    if isinstance(err, KeyError):
        text = f"missing key {text}"
    return " ".join(text.split())


def _validation_error(err: BaseException):
    from pydantic import ValidationError

    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, ValidationError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None
