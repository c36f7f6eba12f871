"""The ``midog`` command line.

Each subcommand lives in ``midog.commands.<name>`` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` to a
function taking the parsed arguments and returning an exit code. Modules are
imported only when their subcommand runs, so ``midog detect`` never imports
torch or mmdet.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from midog import __version__
from midog.errors import MidogError

__all__ = ["main", "build_parser"]

logger = logging.getLogger("midog")

# Subcommand name -> module under midog.commands.
COMMANDS = {
    "detect": "detect",
    "train": "train",
    "export": "export",
    "evaluate": "evaluate",
    "cv": "cv",
    "mine": "mine",
}

EPILOG = """examples:
  midog detect slide.svs --output out/
  midog detect slides/ --output out/ --ray
  midog train configs/rtmdet_s_mf_crops.py --work-dir work_dirs/mf_crops
  midog export work_dirs/mf_crops/iter_2000.pth --config configs/rtmdet_s_mf_crops.py --output model.onnx
"""


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Build the parser; with ``command`` given, import only that subcommand's module."""
    parser = argparse.ArgumentParser(
        prog="midog",
        description="Find mitotic figures in H&E images and whole-slide images.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"midog {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        if command is not None and name != command:
            subparsers.add_parser(name, help=f"see 'midog {name} --help'")
            continue
        try:
            module = importlib.import_module(f"midog.commands.{module_name}")
        except ModuleNotFoundError as exc:
            if not exc.name or not exc.name.startswith("midog.commands"):
                raise
            continue
        module.register(subparsers)
    return parser


def _requested_command(argv: list[str]) -> str | None:
    for arg in argv:
        if arg in COMMANDS:
            return arg
    return None


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(_requested_command(argv))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except MidogError as exc:
        # One line, even where a message quotes a library's multi-line error.
        message = " ".join(str(exc).split())
        print(f"midog {args.command}: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"midog {args.command}: interrupted", file=sys.stderr)
        return 130
    except ModuleNotFoundError as exc:
        print(
            f"midog {args.command}: error: the Python module {exc.name!r} is missing; "
            f"'midog {args.command}' needs it (for training: pip install 'midog[train]')",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
