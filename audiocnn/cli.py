"""`audiocnn` console command: run a stage or write params.yaml from conf/.

    audiocnn params [overrides...]            write params.yaml (what `make params` does)
    audiocnn <stage> [overrides...]           prepare | featurize | train | evaluate
    audiocnn show-config [overrides...]       print the composed config
    audiocnn summary [overrides...] [--classes N]
                                              print the model layer by layer (shapes,
                                              params, receptive field, multiply-adds)
"""

from __future__ import annotations

import argparse
import sys

from omegaconf import OmegaConf

from audiocnn.config import ConfigError, compose_config, validate_config, write_params

STAGES = {
    "prepare": ("audiocnn.data.prepare", "prepare"),
    "featurize": ("audiocnn.features.featurize", "featurize"),
    "train": ("audiocnn.repeats", "train_stage"),
    "evaluate": ("audiocnn.repeats", "evaluate_stage"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="audiocnn", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["params", "show-config", "summary", *STAGES])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=cnn optimizer.lr=3e-4")
    parser.add_argument("--output", default="params.yaml", help="file `params` writes (default: params.yaml)")
    parser.add_argument("--classes", type=int, default=10, help="classes the `summary` model predicts (default: 10)")
    args = parser.parse_args(argv)
    try:
        if args.command == "params":
            print(f"wrote {write_params(args.output, args.overrides)}")
            return 0
        if args.classes < 1:
            raise ConfigError(f"--classes={args.classes}: must be a positive integer")
        cfg = compose_config(args.overrides)
        validate_config(cfg)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.command == "show-config":
        print(OmegaConf.to_yaml(cfg))
        return 0
    if args.command == "summary":
        return print_summary(cfg, args.classes)
    from importlib import import_module

    module, function = STAGES[args.command]
    getattr(import_module(module), function)(cfg)
    return 0


def print_summary(cfg, n_classes: int) -> int:
    """Build `cfg.model` for an `(n_bins, window_frames)` input and print its layer table."""
    from audiocnn.models import build_model
    from audiocnn.models.summary import summarize

    model = build_model(cfg.model, n_classes=n_classes, n_bins=cfg.features.n_bins)
    summary = summarize(model, cfg.features.n_bins, cfg.features.window_frames, name=cfg.model.get("name"))
    print(summary.table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
