"""`audiocnn predict INPUT... --model SOURCE`: classify recordings with a trained model.

INPUT: audio files, folders (recursive: every file with an extension soundfile reads), glob
patterns, or a `.txt` / `.csv` list of paths (one per line, or a `path` column). SOURCE: a
model folder, `model.pt`, `runs:/<id>/model`, `models:/<name>/<version|alias|latest>`, a run
id, or an exported `.onnx` / TorchScript file. Output: a table on stdout, or `--output
preds.csv|.jsonl` with one row per file; `--timeline` adds one row per window (which class
when); `--events` (an events model) writes each file's events instead, `--output events.tsv` (DCASE:
filename, onset, offset, event_label) or `.jsonl` (with scores), streaming long files (docs/events.md);
a multi-label model adds `labels`, every class over its threshold (`;`-joined), to each; `--tta-pitch-bins -2,0,2 --tta-time-frames 0,8` scores every window in each of those
shifted views and averages their probabilities (docs/using-a-model.md). A file that cannot be
read, or has no answer (too short, no finite sample, non-finite or improper probabilities), is
reported with its reason and the rest go on; the exit status is 1 only when nothing could be
predicted. A bad option is one `error:` line (exit status 2), before anything is loaded.

Outputs never destroy inputs: an `--output` (or its `_timeline` sibling) that is one of the
inputs is refused before any work; the output is replaced atomically. Text is written as valid
UTF-8: bytes of a file name that are not UTF-8 are written as `\\xNN` (backslashreplace), so a
name is never lost and never sinks the file. CSV cells that a spreadsheet would run as a formula
are escaped as in the manifest (`audiocnn.data.names.csv_cell`: `=1+2.wav` -> `'=1+2.wav`).
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import re
import sys
from pathlib import Path
from typing import Iterator

import soundfile as sf
from tqdm import tqdm

from audiocnn import atomic
from audiocnn.data.names import csv_cell
from audiocnn.data.sources._common import LABEL_SEPARATOR

# What soundfile (libsndfile) reads, as file extensions, plus common aliases.
AUDIO_SUFFIXES = {f".{name.lower()}" for name in sf.available_formats()} | {".aif", ".aiff", ".oga", ".opus"}


def expand_inputs(inputs: list[str]) -> list[str]:
    """Files, folders (recursive), globs and path lists -> the audio paths, in order, without repeats."""
    paths: list[str] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            paths += [str(p) for p in sorted(path.rglob("*")) if p.suffix.lower() in AUDIO_SUFFIXES
                      and not p.name.startswith(".")]
        elif path.suffix.lower() in (".txt", ".csv") and path.is_file():
            paths += read_list(path)
        elif not path.exists() and glob.has_magic(item):
            paths += sorted(glob.glob(item, recursive=True))
        else:
            paths.append(item)  # a file (or a missing one: reported with its reason)
    return list(dict.fromkeys(paths))


def read_list(path: Path) -> list[str]:
    """A `.csv` with a `path` column (or paths in its first column), or a `.txt` of one path per line;
    relative paths are taken from the list's folder."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = [row for row in csv.reader(handle) if row and row[0].strip() and not row[0].startswith("#")]
    column = 0
    if path.suffix == ".csv" and rows and "path" in rows[0]:  # a header row names the column
        column, rows = rows[0].index("path"), rows[1:]
    return [str(p if (p := Path(row[column].strip())).is_absolute() else path.parent / p) for row in rows]


def printable(text: str) -> str:
    """`text` as valid UTF-8: the undecodable bytes of a file name (Python's surrogate escapes)
    as `\\xNN`, any other lone surrogate as `\\udNNN`; other text unchanged."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def joined(labels: list[list]) -> str:
    """A multi-label answer's `[[class, probability], ...]` as one cell: the classes, `;`-joined."""
    return LABEL_SEPARATOR.join(name for name, _ in labels)


def file_rows(record: dict, top_k: int) -> dict:
    """One output row; a file without an answer has an empty label and confidence (JSON null) and its `error`."""
    row = {"path": record["path"], "label": record.get("label"), "confidence": record.get("confidence"),
           "duration": record["duration"]}
    if "labels" in record:  # a multi-label model: every class over its threshold
        row["labels"] = joined(record["labels"])
    for rank, (label, probability) in enumerate(record.get("top_k", [])[:top_k], 1):
        row[f"top{rank}_label"], row[f"top{rank}_probability"] = label, round(probability, 6)
    if record.get("error"):
        row["error"] = record["error"]
    return row


def write_output(path: Path, rows: list[dict]) -> None:
    """`.jsonl`: one JSON object per line; anything else: CSV with the union of the rows' columns,
    text cells escaped against formulas. Text is made `printable`; no NaN or inf is written."""
    rows = [{key: printable(value) if isinstance(value, str) else value for key, value in row.items()} for row in rows]
    with atomic.atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            if path.suffix == ".jsonl":
                handle.writelines(json.dumps(row, allow_nan=False) + "\n" for row in rows)
            else:
                columns = list(dict.fromkeys(key for row in rows for key in row))
                writer = csv.DictWriter(handle, fieldnames=columns)
                writer.writeheader()
                writer.writerows({key: csv_cell(value) for key, value in row.items()} for row in rows)


def print_table(records: list[dict]) -> None:
    paths = [printable(r["path"]) for r in records]
    width = max([len(p) for p in paths] + [4])
    print(f"{'path':<{width}}  {'label':<12} {'confidence':>10} {'duration':>9}")
    for path, r in zip(paths, records):
        if r.get("error"):
            print(f"{path:<{width}}  error: {printable(r['error'])}")
        else:
            print(f"{path:<{width}}  {printable(r['label']):<12} {r['confidence']:>10.4f} {r['duration']:>8.2f}s"
                  + (f"  labels: {printable(joined(r['labels'])) or '(none)'}" if "labels" in r else ""))


def refuse_overwriting_inputs(outputs: list[Path], inputs: list[str]) -> None:
    """`ValueError` if an output is a folder or one of the inputs (a recording, or a list of paths
    given as an input): writing it would destroy that input. Compared as files (`os.path.samefile`:
    links and other spellings of one path are caught), else as resolved paths."""
    for output in outputs:
        if output.is_dir():
            raise ValueError(f"--output={printable(str(output))}: is a folder; name a .csv or .jsonl file")
        resolved = os.path.realpath(output)
        for item in inputs:
            try:
                same = os.path.samefile(output, item)
            except OSError:  # one of them does not exist (yet)
                same = os.path.realpath(item) == resolved
            if same:
                raise ValueError(f"--output={printable(str(output))}: is the input {printable(item)}; writing it "
                                 "would destroy that input: name another output file")


def timeline_path(output: Path) -> Path:
    """Where `--timeline` rows go beside `--output`: `<stem>_timeline<suffix>`."""
    return output.with_name(f"{output.stem}_timeline{output.suffix}")


def use_tracking(source: str, uri: str | None) -> None:
    """MLflow sources (`runs:/`, `models:/`, a run id) are read from `--tracking-uri`, else
    `MLFLOW_TRACKING_URI`, else the project's `sqlite:///mlflow.db` (what the train stage logs to)."""
    if uri or (source.startswith(("runs:/", "models:/")) or re.fullmatch(r"[0-9a-f]{32}", source)):
        if uri or not os.environ.get("MLFLOW_TRACKING_URI"):
            import mlflow

            mlflow.set_tracking_uri(uri or "sqlite:///mlflow.db")


def add_tta_arguments(parser: argparse.ArgumentParser) -> None:
    """`--tta-pitch-bins` and `--tta-time-frames` (`models.tta.Views`), for predict and export."""
    for name, what in (("pitch-bins", "CQT bins (one semitone = bins_per_octave / 12; > 0 is up)"),
                       ("time-frames", "frames (> 0 is later)")):
        parser.add_argument(f"--tta-{name}", type=_integers, metavar="K,K,...",
                            help=f"test-time views: shifts in {what}, e.g. -2,0,2; the mean of the views' "
                                 "probabilities is reported (default 0: no augmentation)")


def _integers(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: must be comma-separated integers such as -2,0,2") from None
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"{text!r}: the shifts must be distinct")
    return values


def tta_arguments(args: argparse.Namespace) -> dict | None:
    """The `tta` mapping of `Predictor` from `add_tta_arguments`' options (None: no augmentation)."""
    if args.tta_pitch_bins is None and args.tta_time_frames is None:
        return None
    return {"pitch_bins": args.tta_pitch_bins or [0], "time_frames": args.tta_time_frames or [0]}


def event_lines(model, paths: list[str], jsonl: bool, failed: list[str]) -> Iterator[str]:
    """Each file's events as output lines, file after file, as they are decoded (a DCASE TSV row
    `filename onset offset event_label`, or with `jsonl` a JSON object with the score); a file that
    fails is added to `failed` with its reason and the others go on."""
    for path in tqdm(paths, desc="predict", unit="file", disable=None, file=sys.stderr):
        name = printable(path)
        try:
            for event in model.stream_events(path):
                if jsonl:
                    yield json.dumps({"filename": name, "onset": round(event.onset, 4), "offset": round(event.offset, 4),
                                      "event_label": printable(event.label), "score": round(event.score, 6)},
                                     allow_nan=False) + "\n"
                else:  # a tab or a line break in a name would break the row: written escaped
                    cells = [name, f"{event.onset:.4f}", f"{event.offset:.4f}", printable(event.label)]
                    yield "\t".join(c.replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
                                     for c in cells) + "\n"
        except Exception as error:  # noqa: BLE001 - reported with its reason; the other files go on
            failed.append(f"{name}: {type(error).__name__}: {printable(str(error).splitlines()[0] if str(error) else '')}")


def predict_events(model, paths: list[str], output: Path | None) -> int:
    """`--events`: every file's events to `output` (`.tsv` DCASE, `.jsonl`; replaced atomically, written as
    decoded) or stdout; exit status 1 only when no file could be scored."""
    failed: list[str] = []
    jsonl = output is not None and output.suffix == ".jsonl"
    lines = event_lines(model, paths, jsonl, failed)
    header = "" if jsonl else "filename\tonset\toffset\tevent_label\n"
    if output is not None:
        with atomic.atomic_path(output) as tmp:
            with open(tmp, "w", encoding="utf-8") as handle:
                handle.write(header)
                handle.writelines(lines)
    else:
        sys.stdout.write(header)
        for line in lines:
            sys.stdout.write(line)
    for reason in failed:
        print(f"skipped {reason}", file=sys.stderr)
    print(f"predict: events of {len(paths) - len(failed)} of {len(paths)} files"
          f"{f', {len(failed)} skipped' if failed else ''}", file=sys.stderr)
    return 0 if len(failed) < len(paths) else 1


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line, `error: <message>` with exit status 2 (`cli.use_model`),
    as every other refusal of predict is: no usage block."""

    def error(self, message: str):
        raise ValueError(message)


def main(argv: list[str]) -> int:
    parser = OneLineParser(prog="audiocnn predict", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help="audio files, folders, globs, or .txt/.csv lists of paths")
    parser.add_argument("--model", required=True, help="the trained model (see above)")
    parser.add_argument("--output", help="write preds.csv or preds.jsonl instead of printing a table")
    parser.add_argument("--top-k", type=int, default=3, help="labels and probabilities kept per file (default 3)")
    parser.add_argument("--timeline", action="store_true", help="also one row per window: path, start_s, end_s, "
                        "label, probability (to <output stem>_timeline.<ext>, or printed)")
    parser.add_argument("--hop-s", type=float, help="window hop in seconds (default: half a window, as evaluate)")
    parser.add_argument("--batch-size", type=int, default=64, help="windows per model call (default 64)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | auto (model.pt sources)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI for runs:/ and models:/ sources (default: "
                        "MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    parser.add_argument("--trust-torchscript", action="store_true",
                        help="load --model as TorchScript (a program: loading it runs its code); only for "
                        "files you exported yourself. Without it a TorchScript file is refused, whatever its name")
    parser.add_argument("--events", action="store_true", help="an events model: write each file's events "
                        "(onset, offset, label) instead of clip labels: --output events.tsv (DCASE format) or "
                        ".jsonl (with scores), or printed; long files are scored chunk by chunk")
    add_tta_arguments(parser)
    args = parser.parse_args(argv)
    if args.events:
        for name, value in (("--timeline", args.timeline), ("--hop-s", args.hop_s is not None),
                            ("--tta-pitch-bins / --tta-time-frames", tta_arguments(args) is not None)):
            if value:
                parser.error(f"{name}: not with --events (events come from the model's frame outputs, on the "
                             "evaluate stage's grid, decoded as stored in the model)")
        if args.output and Path(args.output).suffix not in (".tsv", ".jsonl"):
            parser.error(f"--output={printable(args.output)}: with --events, name a .tsv (DCASE: filename, onset, "
                         "offset, event_label) or a .jsonl file (one event per line, with its score)")
    for name, value in (("--top-k", args.top_k), ("--batch-size", args.batch_size)):
        if value < 1:
            parser.error(f"{name}={value}: must be a positive integer")
    from audiocnn.inference.api import check_hop_seconds, load_model, refuse_untrusted_torchscript

    if args.hop_s is not None:
        check_hop_seconds(args.hop_s, "--hop-s")

    if not args.trust_torchscript:
        refuse_untrusted_torchscript(Path(args.model))  # before anything is read, loaded or created
    use_tracking(args.model, args.tracking_uri)
    paths = expand_inputs(args.inputs)
    if not paths:
        print("error: no audio files in the inputs", file=sys.stderr)
        return 1
    if args.output:
        output = Path(args.output)
        outputs = [output, *([timeline_path(output)] if args.timeline else [])]
        refuse_overwriting_inputs(outputs, list(dict.fromkeys([*args.inputs, *paths])))
    model = load_model(args.model, device=args.device, batch_size=args.batch_size, tta=tta_arguments(args),
                       trust_code=args.trust_torchscript)
    if args.events:
        return predict_events(model, paths, Path(args.output) if args.output else None)
    records = []
    with tqdm(total=len(paths), desc="predict", unit="file", disable=None, file=sys.stderr) as bar:
        for record in model.iter_predict(paths, top_k=args.top_k, timeline=args.timeline, hop_seconds=args.hop_s):
            records.append(record)
            bar.update(1)
    failed = [r for r in records if r.get("error")]
    for record in failed:
        print(f"skipped {printable(record['path'])}: {printable(record['error'])}", file=sys.stderr)
    timeline = [{"path": r["path"], **w, **({"labels": joined(w["labels"])} if "labels" in w else {})}
                for r in records for w in r.get("timeline", [])]
    if args.output:
        write_output(output, [file_rows(r, args.top_k) for r in records])
        if args.timeline:
            write_output(timeline_path(output), timeline)
    else:
        try:
            print_table(records)
            for row in timeline:
                print(f"{printable(row['path'])}  {row['start_s']:8.2f}-{row['end_s']:<8.2f} "
                      f"{printable(row['label']):<12} {row['probability']:.4f}"
                      + (f"  labels: {printable(row['labels']) or '(none)'}" if "labels" in row else ""))
            sys.stdout.flush()
        except BrokenPipeError:  # `| head`: the reader has what it wanted; the summary still goes to stderr
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    print(f"predict: {len(records) - len(failed)} of {len(records)} files predicted"
          f"{f', {len(failed)} skipped' if failed else ''}", file=sys.stderr)
    return 0 if len(failed) < len(records) else 1
