"""The command lines' one-line error rule, in one place: argparse that reports a bad argument as
`error: ...` (exit 2, no usage block), argument types that check ranges, and the family of exceptions
that bad input, bad files and failing writes raise (anything else is a bug and keeps its traceback).
A module whose docstring is its manual builds its parser with ArgumentParser.from_doc(prog, __doc__).

    ap = ArgumentParser(prog="python -m training.x")
    ap.add_argument("--n-boot", type=positive_int)
    args = ap.parse_args(argv)
    try:
        ...
    except EXPECTED as e:
        return report_error(as_error(e))
"""

from __future__ import annotations

import argparse
import sys

from amf import AmfError, one_line

# bad input (AmfError), files that cannot be read or written (OSError), and values that do not parse
# (ValueError: json.JSONDecodeError, pandas' ParserError and EmptyDataError, UnicodeDecodeError, numpy)
EXPECTED = (AmfError, OSError, ValueError)


def as_error(e: BaseException) -> AmfError:
    """An expected exception as the one line to show: an OSError names its file and the reason."""
    if isinstance(e, AmfError):
        return e
    if isinstance(e, OSError):
        names = " -> ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
        reason = e.strerror or one_line(e)
        return AmfError(f"cannot use {names}: {reason}" if names else reason)
    return AmfError(f"{type(e).__name__}: {one_line(e)}")


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors follow the one-line rule (subcommands inherit it)."""

    @classmethod
    def from_doc(cls, prog: str, doc: str, **kwargs) -> ArgumentParser:
        """A parser for a module whose docstring DOC is its manual: its first sentence describes it (whole,
        however many lines it takes), and --help ends with the whole docstring as written."""
        return cls(
            prog=prog,
            description=first_sentence(doc),
            formatter_class=argparse.RawDescriptionHelpFormatter,
            epilog=doc,
            **kwargs,
        )

    def error(self, message: str):
        print(f"error: {self.prog}: {one_line(message)} (see --help)", file=sys.stderr)
        sys.exit(2)


def first_sentence(doc: str) -> str:
    """DOC's first sentence, on one line: its first paragraph up to the first full stop that ends a sentence (the
    whole paragraph when none does)."""
    import re

    paragraph = " ".join(doc.strip().split("\n\n", 1)[0].split())
    m = re.match(r"(.+?\.)(?:\s|$)", paragraph)
    return m.group(1) if m else paragraph


def _number(kind, test, rule: str):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {rule}") from None
        if not test(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not {rule}")
        return value

    parse.__name__ = rule  # what argparse names in its message
    return parse


positive_int = _number(int, lambda v: v >= 1, "an integer >= 1")
non_negative_int = _number(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _number(float, lambda v: v > 0 and v != float("inf"), "a finite number > 0")


def fold_list(text: str) -> list[int]:
    """'0,2' -> [0, 2]: fold numbers, comma-separated, each >= 0 (training's --folds and --plain-folds)."""
    try:
        folds = [int(k) for k in text.split(",") if k.strip()]
    except ValueError:
        folds = []
    if not folds or min(folds) < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of fold numbers")
    return folds
