"""The pictures in docs/img/, made from this checkout's pipeline outputs and a real MLflow UI.

    make figures            # = .venv/bin/python tools/make_figures.py (after `make run`)

Writes into docs/img/ (or --out):
- `confusion_matrix.png`, `reliability_diagram.png`, `gradcam_grid.png`: the evaluate stage's
  figures of the current `dvc repro` (metrics/), copied so the docs show what `make run` makes;
- `cqt_demo.png`: the log-CQT (the model's input, `features` of params.yaml) of one test clip
  per class, titled with its class;
- `mlflow_runs.png`: the MLflow runs table of a two-job Hydra sweep (`-m model=cnn,crnn_gru`,
  one epoch each) logged to a throwaway `mlflow server` on 127.0.0.1, taken by headless
  Chromium. Needs `chromium` (Debian: `apt-get install chromium`); `--no-ui` skips it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
# A loopback address other than 127.0.0.1: the UI opens its assistant panel over the table
# the first time it is served from localhost / 127.0.0.1 (the server is told to allow this
# host and origin: its security checks know localhost only).
LOOPBACK = "127.0.0.2"
CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


def copy_stage_figures(out: Path) -> list[Path]:
    """metrics/{confusion_matrix,reliability_diagram}.png and metrics/explain/gradcam.png into `out`."""
    pairs = {"metrics/confusion_matrix.png": "confusion_matrix.png",
             "metrics/reliability_diagram.png": "reliability_diagram.png",
             "metrics/explain/gradcam.png": "gradcam_grid.png"}
    missing = [source for source in pairs if not (REPO / source).is_file()]
    if missing:
        sys.exit(f"error: {', '.join(missing)} missing: run `make run` (dvc repro) first")
    return [Path(shutil.copyfile(REPO / source, out / name)) for source, name in pairs.items()]


def plot_demo_cqts(out: Path) -> Path:
    """One test clip per class through the configured log-CQT front-end, in a grid titled by class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    import torch
    from omegaconf import OmegaConf

    from audiocnn.data.audio import load_audio
    from audiocnn.features.cqt import LogCQT

    features = OmegaConf.load(REPO / "params.yaml").features
    manifest = pd.read_csv(REPO / "data/prepared/manifest.csv")
    clips = manifest[manifest["split"] == "test"].groupby("label", sort=False).head(1)
    cqt = LogCQT.from_config(features).eval()
    columns = 4
    rows = -(-len(clips) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.6 * rows), squeeze=False)
    for ax, (_, clip) in zip(axes.flat, clips.iterrows()):
        with torch.no_grad():
            spectrogram = cqt(load_audio(REPO / clip["path"], features.sr).unsqueeze(0))[0].numpy()  # (bins, frames)
        seconds = spectrogram.shape[1] * features.hop_length / features.sr
        ax.imshow(spectrogram, origin="lower", aspect="auto", cmap="magma", extent=(0, seconds, 0, spectrogram.shape[0]))
        octaves = range(0, spectrogram.shape[0] + 1, features.bins_per_octave)
        ax.set_yticks(list(octaves), [f"{features.fmin * 2 ** (b // features.bins_per_octave):.0f}" for b in octaves])
        ax.set_title(str(clip["label"]), fontsize=11)
        ax.set_xlabel("seconds")
    for ax in axes.flat[len(clips):]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("Hz (octaves)")
    fig.suptitle(f"log-CQT of one demo test clip per class ({features.n_bins} bins, "
                 f"{features.bins_per_octave} per octave, from {features.fmin:g} Hz)")
    fig.tight_layout()
    path = out / "cqt_demo.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def wait_for(url: str, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"error: mlflow server exited: {process.stdout.read()[-2000:]}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    sys.exit(f"error: {url} did not answer in {timeout:.0f} s")


def screenshot(url: str, path: Path, profile: Path, size: str = "1600,720") -> Path:
    """`url` rendered by headless Chromium into the PNG `path`."""
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={profile}", f"--window-size={size}", "--virtual-time-budget=20000",
                    f"--screenshot={path}", url], check=True, capture_output=True, timeout=300)
    return path


def mlflow_sweep_screenshot(out: Path) -> Path:
    """A two-job sweep logged to a throwaway server; the experiment's runs table, parent and children."""
    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory(prefix="audiocnn-figures-") as scratch:
        home, port = Path(scratch), free_port()
        server = subprocess.Popen(
            [str(bin_dir / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}",
             "--artifacts-destination", str(home / "artifacts"), "-h", LOOPBACK, "-p", str(port), "--workers", "1",
             "--allowed-hosts", f"{LOOPBACK}:{port},{LOOPBACK}", "--cors-allowed-origins", f"http://{LOOPBACK}:{port}"],
            cwd=home, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        url = f"http://{LOOPBACK}:{port}"
        try:
            wait_for(f"{url}/health", server)
            env = {**os.environ, "MLFLOW_TRACKING_URI": url, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
            subprocess.run([sys.executable, "pipelines/train.py", "-m", "model=cnn,crnn_gru", "trainer.max_epochs=1",
                            "tracking.experiment=audiocnn-demo", f"hydra.sweep.dir={home / 'sweep'}",
                            f"paths.models={home / 'models'}"], cwd=REPO, env=env, check=True)
            from mlflow import MlflowClient

            client = MlflowClient(url)
            experiment = client.get_experiment_by_name("audiocnn-demo")
            parent = next(r for r in client.search_runs([experiment.experiment_id])
                          if "mlflow.parentRunId" not in r.data.tags)
            # Sorted by a metric (URL search parameters), the UI lists the parent and its
            # children flat; nested rows would start collapsed.
            page = (f"{url}/#/experiments/{experiment.experiment_id}/runs"
                    "?orderByKey=metrics.%60best_val_acc%60&orderByAsc=false&workflowType=machine_learning")
            print(f"figures: sweep parent {parent.info.run_name}; rendering {page}")
            return screenshot(page, out / "mlflow_runs.png", home / "chromium")
        finally:
            server.terminate()
            server.wait(timeout=30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "docs/img", help="folder for the PNGs (default docs/img)")
    parser.add_argument("--no-ui", action="store_true", help="skip the MLflow UI screenshot")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    made = copy_stage_figures(args.out) + [plot_demo_cqts(args.out)]
    if not args.no_ui:
        if CHROMIUM is None:
            sys.exit("error: chromium not found (apt-get install chromium), or pass --no-ui")
        made.append(mlflow_sweep_screenshot(args.out))
    for path in made:
        print(f"figures: {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
