"""The ``nlverify`` command.

Subcommands live with their concern; each module exposes ``add_parser(subparsers)`` and ``run(args)``.

Exit codes (documented in the README):
  0  the command ran and reached its result (for ``verify``: any verdict, including unknown/timeout)
  1  internal error (a bug: please report it with ``-v`` output)
  2  bad input: missing or corrupt file, unsupported op, malformed VNN-LIB, shape mismatch, bad option
"""
from __future__ import annotations

import argparse
import sys
from importlib import import_module

EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT = 0, 1, 2

SUBCOMMANDS = {
    "verify": "nlverify.verifier.cli",
    "bounds": "nlverify.bounds.cli",
    "bench": "nlverify.benchmarks.runner_cli",
    "lipschitz": "nlverify.sdp.cli",
    "soundness": "nlverify.benchmarks.soundness.cli",
    "tables": "nlverify.verifier.tables_cli",
}


class BadInput(Exception):
    """Raised by subcommands for user errors that have no more specific type."""


def require_device(device: str) -> None:
    """Bad input, not a crash, when a device is asked for that this machine does not have."""
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BadInput(f"--device {device} requested but no CUDA device is available")


def _bad_input_types() -> tuple[type[BaseException], ...]:
    types: list[type[BaseException]] = [BadInput, FileNotFoundError]
    for module, name in (("nlverify.frontend.errors", "ModelError"), ("nlverify.verifier.spec", "SpecError")):
        try:
            types.append(getattr(import_module(module), name))
        except (ImportError, AttributeError):
            pass
    return tuple(types)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full parser; with ``only``, just that subcommand (its module alone is imported: start-up of
    ``nlverify verify`` should not pay for cvxpy)."""
    parser = argparse.ArgumentParser(
        prog="nlverify",
        description="Sound verification of neural networks over general nonlinearities.",
        epilog="Exit codes: 0 result reached, 1 internal error, 2 bad input.",
    )
    parser.add_argument("--version", action="version", version="nlverify " + _version())
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in SUBCOMMANDS.items():
        if only is not None and name != only:
            continue
        try:
            import_module(module).add_parser(subparsers)
        except ImportError:
            continue  # a subcommand whose module is absent is simply not offered
    return parser


def _version() -> str:
    from nlverify import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    parser = build_parser(words[0] if words and words[0] in SUBCOMMANDS else None)
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_BAD_INPUT
    verbose = getattr(args, "verbose", False)
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("nlverify: interrupted", file=sys.stderr)
        return 130
    except _bad_input_types() as exc:
        print(f"nlverify: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as exc:  # a bug: one line unless -v
        if verbose:
            raise
        print(f"nlverify: internal error: {type(exc).__name__}: {_one_line(exc)} (rerun with -v for details)",
              file=sys.stderr)
        return EXIT_INTERNAL


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
