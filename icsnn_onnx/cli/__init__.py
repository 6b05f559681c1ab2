"""Command line: parse arguments, call the library, print. The only package that prints.

Exit codes: 0 success; 2 user error (bad file, data, option, unsupported model) with one
line on stderr; 1 internal error. ``--debug`` shows tracebacks.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from icsnn_onnx.cli import analysis, commands
from icsnn_onnx.cli.common import options_of
from icsnn_onnx.cli.parser import build_parser
from icsnn_onnx.errors import IcsnnError

__all__ = ["_options", "_parser", "main"]

COMMANDS = {
    "convert": commands.convert_command,
    "eval": commands.eval_command,
    "inspect": commands.inspect_command,
    "tune": commands.tune_command,
    "bench": commands.bench_command,
    "diagnose": analysis.diagnose_command,
    "report": analysis.report_command,
    "export": commands.export_command,
}

_options = options_of  # the name tests and earlier callers use

_parser = build_parser  # the name tests and earlier callers use


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.debug else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if not args.debug:
        logging.getLogger("icsnn_onnx").setLevel(
            max(level, logging.WARNING) if args.quiet else logging.WARNING
        )
    try:
        return COMMANDS[args.command](args)
    except IcsnnError as err:
        if args.debug:
            raise
        message = str(err).replace("\n", " ")
        print(f"icsnn-onnx {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if args.debug:
            raise
        print(
            f"icsnn-onnx {args.command}: internal error: {type(err).__name__}: {err} (rerun with --debug)",
            file=sys.stderr,
        )
        return 1
