"""The ``rxf`` command: ``finetune``, ``probe``, ``diagnose`` and ``explain``.

Only argparse runs at start-up; each command imports torch and friends when it runs, so
``rxf --help`` is instant.

Example:
    >>> main(["finetune", "--print-config"])  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rxf", description="R3F/R4F fine-tuning: compare, probe and inspect."
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    for name, helptext, default_out in (
        (
            "finetune",
            "fine-tune with each method over seeds and compare them with standard seed by "
            "seed (no CONFIG: the built-in MiniLM on BBC News default)",
            "rxf-results",
        ),
        (
            "probe",
            "representational-collapse probe: fine-tune on a source task, linear probes "
            "on others (no CONFIG: a small BBC News default)",
            "rxf-probe",
        ),
        (
            "diagnose",
            "what the consistency term is made of on the config's model and data: noise vs "
            "dropout over eps (no CONFIG: the built-in default)",
            "rxf-results",
        ),
    ):
        cmd = commands.add_parser(name, help=helptext, description=helptext)
        cmd.add_argument(
            "config", nargs="?", help="YAML config (see docs/cli.md); default: the embedded default"
        )
        cmd.add_argument(
            "-o", "--output", help=f"output folder (default: {default_out}/ or the config's output)"
        )
        if name != "diagnose":
            cmd.add_argument(
                "--restart",
                action="store_true",
                help="discard finished runs in the output folder instead of resuming",
            )
            cmd.add_argument("--no-progress", action="store_true", help="no progress bars")
        if name != "probe":
            cmd.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
        cmd.add_argument(
            "--print-config",
            action="store_true",
            help="print the validated config as YAML and exit",
        )

    explain = commands.add_parser(
        "explain", help="show what rxf hooks in a model (embedding, head, logits, plugins)"
    )
    explain.add_argument(
        "model",
        help="'minilm', 'efficientnet_lite0', a local Hugging Face "
        "checkpoint folder, or a timm model name",
    )
    explain.add_argument("--num-labels", type=int, default=2, help="classes of the head")
    explain.add_argument("--r4f", action="store_true", help="also show the R4F head")
    explain.add_argument(
        "--method",
        choices=["r3f", "r4f", "rdrop", "neftune", "smart"],
        default="r3f",
        help="show the settings of this preset (RXFConfig.preset; default: r3f)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``rxf`` command line; return the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.version:
        from importlib.metadata import version

        print(f"rxf {version('rxf')}")
        return 0
    if args.command is None:
        parser.print_help()
        return 0
    from rxf import RXFError

    try:
        if args.command == "explain":
            from rxf_runner.models import explain_model

            print(explain_model(args.model, args.num_labels, args.r4f, args.method))
            return 0
        return _run_study(args)
    except RXFError as exc:  # config and model errors: one clear message, no traceback
        print(f"rxf: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rxf: interrupted", file=sys.stderr)
        return 130


def _run_study(args: argparse.Namespace) -> int:
    from rxf_runner.config import FinetuneConfig, ProbeConfig
    from rxf_runner.loading import load_config

    cls: type[FinetuneConfig | ProbeConfig] = (
        ProbeConfig if args.command == "probe" else FinetuneConfig
    )
    cfg: Any = load_config(args.config, cls)
    if args.output:
        cfg = cfg.model_copy(update={"output": Path(args.output)})
    if args.print_config:
        import yaml

        print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), end="")
        return 0
    if args.command == "diagnose":
        from rxf_runner import diagnose

        diagnose.run(cfg, plots=not args.no_plots)
    elif args.command == "finetune":
        from rxf_runner import finetune

        finetune.run(
            cfg, restart=args.restart, progress=not args.no_progress, plots=not args.no_plots
        )
    else:
        from rxf_runner import probe

        probe.run(cfg, restart=args.restart, progress=not args.no_progress)
    return 0
