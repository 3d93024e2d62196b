"""`audiocnn` console command: run a stage or write params.yaml from conf/.

    audiocnn params [overrides...]            write params.yaml (what `make params` does)
    audiocnn <stage> [overrides...]           prepare | featurize | train | evaluate
    audiocnn show-config [overrides...]       print the composed config
    audiocnn results [overrides...]           the last evaluate's test results in a few lines
                                              (`make run` ends with it; all figures: metrics/)
    audiocnn summary [overrides...] [--classes N]
                                              print the model layer by layer (shapes,
                                              params, receptive field, multiply-adds)
    audiocnn predict INPUT... --model SOURCE [--output preds.csv|.jsonl] [--timeline]
                                              classify files, folders, globs or path lists
                                              (`audiocnn predict --help`)
    audiocnn export --model SOURCE --format onnx|torchscript --output FILE
                                              the model with its CQT inside, runnable without audiocnn
    audiocnn explain AUDIO --model SOURCE [--output PNG]
                                              Grad-CAM of one audio file for a trained model
                                              (a model folder, model.pt, runs:/<id>/model,
                                              models:/<name>/<version> or a run id)
"""

from __future__ import annotations

import argparse
import sys

from omegaconf import OmegaConf

from audiocnn.config import compose_config, user_tracking_uri, validate_config, with_tracking_uri, write_params
from audiocnn.errors import ConfigError, InputError

STAGES = {
    "prepare": ("audiocnn.stages", "prepare_stage"),
    "featurize": ("audiocnn.stages", "featurize_stage"),
    "train": ("audiocnn.experiment", "train_stage"),
    "evaluate": ("audiocnn.experiment", "evaluate_stage"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] in (["predict"], ["export"]):  # commands with their own options
        return use_model(argv[0], argv[1:])
    parser = argparse.ArgumentParser(prog="audiocnn", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["params", "show-config", "results", "summary", "explain", *STAGES])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=cnn optimizer.lr=3e-4")
    parser.add_argument("--output", default=None,
                        help="file `params` writes (default: params.yaml); `explain`: the PNG "
                        "(default: <audio stem>_gradcam.png beside the audio)")
    parser.add_argument("--classes", type=int, default=10, help="classes the `summary` model predicts (default: 10)")
    parser.add_argument("--model", help="`explain`: the trained model (folder, model.pt, runs:/..., models:/...)")
    parser.add_argument("--tracking-uri", help="`explain`: MLflow tracking URI for runs:/ and models:/ sources "
                        "(default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    args = parser.parse_args(argv)
    if args.command == "explain":
        return explain(args)
    try:
        if args.command == "params":
            print(f"wrote {write_params(args.output or 'params.yaml', args.overrides)}")
            return 0
        if args.classes < 1:
            raise ConfigError(f"--classes={args.classes}: must be a positive integer")
        cfg = with_tracking_uri(compose_config(args.overrides), user_tracking_uri())
        settings = validate_config(cfg)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.command == "show-config":
        print(OmegaConf.to_yaml(cfg))
        return 0
    if args.command == "summary":
        return print_summary(cfg, args.classes)
    if args.command == "results":
        return print_results(cfg)
    from importlib import import_module

    module, function = STAGES[args.command]
    try:
        getattr(import_module(module), function)(cfg, settings)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2 if isinstance(error, ConfigError) else 1
    return 0


def use_model(command: str, argv: list[str]) -> int:
    """`predict` / `export` (audiocnn.inference): a missing or refused model is one `error:` line."""
    from importlib import import_module

    try:
        return import_module(f"audiocnn.inference.{command}").main(argv)
    except (FileNotFoundError, ValueError, InputError) as error:
        print(f"error: {str(error).splitlines()[0]}", file=sys.stderr)
        return 2


def print_summary(cfg, n_classes: int) -> int:
    """Build `cfg.model` for an `(n_bins, window_frames)` input and print its layer table."""
    from audiocnn.models import build_model
    from audiocnn.models.summary import summarize

    model = build_model(OmegaConf.to_container(cfg.model, resolve=True), n_classes=n_classes,
                        n_bins=cfg.features.n_bins, top_db=cfg.features.get("top_db"))
    summary = summarize(model, cfg.features.n_bins, cfg.features.window_frames, name=cfg.model.get("name"))
    print(summary.table())
    return 0


def print_results(cfg) -> int:
    """`<paths.metrics>/test.json` as a few lines: accuracy with its CI, macro-F1, ECE, the worst class."""
    import json
    from pathlib import Path

    from audiocnn.evaluation.reports import describe_results

    path = Path(cfg.paths.metrics) / "test.json"
    if not path.is_file():
        print(f"error: {path}: no test results yet; run `dvc repro` (or the evaluate stage) first", file=sys.stderr)
        return 2
    print(describe_results(json.loads(path.read_text())))
    print(f"(all figures: {path}, {path.with_name('per_class.json')}, {path.with_name('confusion_matrix.png')})")
    return 0


def explain(args) -> int:
    """`audiocnn explain AUDIO --model SOURCE [--output PNG]`: write the Grad-CAM PNG of one file."""
    from pathlib import Path

    if len(args.overrides) != 1 or not args.model:
        print("error: usage: audiocnn explain AUDIO --model SOURCE [--output PNG]", file=sys.stderr)
        return 2
    audio = Path(args.overrides[0])
    if not audio.is_file():
        print(f"error: {audio}: no such audio file", file=sys.stderr)
        return 2
    import soundfile

    from audiocnn.data.audio import probe_audio

    try:
        probe_audio(audio)  # a file that cannot be decoded is refused before the model is fetched
    except (soundfile.SoundFileError, ValueError, OSError) as error:
        print(f"error: {audio}: unreadable audio ({_decoder_reason(error)})", file=sys.stderr)
        return 2
    if args.model.startswith(("runs:/", "models:/")) or not Path(args.model).exists():
        import os

        import mlflow

        mlflow.set_tracking_uri(args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"))
    from audiocnn.inference.explain import explain_file

    output = Path(args.output) if args.output else audio.with_name(f"{audio.stem}_gradcam.png")
    try:
        path, label, probability = explain_file(audio, args.model, output)
    except soundfile.SoundFileError as error:  # decoding failed past the header (damaged audio data)
        print(f"error: {audio}: unreadable audio ({_decoder_reason(error)})", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, InputError) as error:  # a missing model, or one refused as unsafe
        print(f"error: {str(error).splitlines()[0] if str(error) else type(error).__name__}", file=sys.stderr)
        return 2
    print(f"explain: {audio.name}: predicted {label} ({probability:.2f}); Grad-CAM -> {path}")
    return 0


def _decoder_reason(error: Exception) -> str:
    """libsndfile's own words (`Error in WAV file. No 'data' chunk marker.`), without the path it prefixes."""
    text = getattr(error, "error_string", None) or str(error)
    return text.strip().splitlines()[0] if text.strip() else type(error).__name__


if __name__ == "__main__":
    sys.exit(main())
