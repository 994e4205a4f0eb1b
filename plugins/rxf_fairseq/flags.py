"""The reference's command-line flags, read into an :class:`rxf.RXFConfig`."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from rxf import RXFConfig

FLAGS = {
    "--eps": ("eps", float),
    "--r3f-lambda": ("r3f_lambda", float),
    "--noise-type": ("noise_type", str),
}
SWITCH = "--spectral-norm-classification-head"


def config_from_args(args: Sequence[str] | argparse.Namespace) -> RXFConfig:
    """Read fairseq's R3F/R4F flags (``--eps``, ``--r3f-lambda``, ``--noise-type``,
    ``--spectral-norm-classification-head``) from a command line or a parsed namespace.

    Other flags of a fairseq command line are ignored.

    Raises:
        ValueError: a flag's value is malformed (argparse's message is kept as the cause),
            or a field fails :class:`rxf.RXFConfig`'s validation.

    Example:
        >>> config_from_args(["--r3f-lambda", "0.7", "--lr", "1e-5"]).r3f_lambda
        0.7
    """
    if isinstance(args, argparse.Namespace):
        given = vars(args)
        data = {key: given[key] for key, _ in FLAGS.values() if given.get(key) is not None}
        if given.get("spectral_norm_classification_head"):
            data["spectral_norm_head"] = True
        return RXFConfig.from_dict(data)
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    for flag, (dest, kind) in FLAGS.items():
        parser.add_argument(flag, dest=dest, type=kind)
    parser.add_argument(SWITCH, dest="spectral_norm_head", action="store_true")
    try:
        known, _ = parser.parse_known_args(list(args))
    except (SystemExit, argparse.ArgumentError) as exc:
        raise ValueError(f"could not read rxf flags from {list(args)!r}: {exc}") from exc
    return RXFConfig.from_dict({k: v for k, v in vars(known).items() if v not in (None, False)})
