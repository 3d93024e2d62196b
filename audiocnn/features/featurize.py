"""The featurize stage: manifest -> feature store (decode, resample, batched CQT, write).

Decoding and resampling run in DataLoader workers; the CQT runs batched on the GPU when
there is one. Frames go to the store folder `<paths.features>/<data.name>-<hash>`, where
the hash covers every parameter that shapes the frames, so changing `features.*` never
reuses stale frames. A killed run resumes after the last finished shard.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from audiocnn import atomic
from audiocnn.data.audio import load_audio
from audiocnn.features.cqt import FEATURE_KEYS, FRONTEND_VERSION, LogCQT, n_frames, pick_device
from audiocnn.features.store import INDEX_COLUMNS, TEXT_COLUMNS, ShardWriter, file_md5, finished_shards, params_hash


def store_params(cfg: DictConfig) -> dict:
    """The parameters that shape the stored frames (and so name the store)."""
    return {**{key: cfg.features[key] for key in FEATURE_KEYS}, "frontend_version": FRONTEND_VERSION}


def store_dir(cfg: DictConfig) -> Path:
    """`<paths.features>/<data.name>-<hash of the feature parameters>`."""
    return Path(cfg.paths.features) / f"{cfg.data.name}-{params_hash(store_params(cfg))}"


def is_featurized(cfg: DictConfig) -> bool:
    """True when the store for `cfg` is complete and was made from the current manifest."""
    meta_path = store_dir(cfg) / "store.json"
    manifest = Path(cfg.paths.prepared) / "manifest.csv"
    if not meta_path.exists() or not manifest.exists():
        return False
    meta = json.loads(meta_path.read_text())
    return bool(meta.get("complete")) and meta.get("manifest_md5") == file_md5(manifest)


class DecodedClips(Dataset):
    """Manifest rows -> (position, waveform (samples,) at `sr`, error message or "")."""

    def __init__(self, rows: pd.DataFrame, sr: int):
        self.paths, self.sr = rows["path"].tolist(), sr

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, position: int):
        try:
            return position, load_audio(self.paths[position], self.sr), ""
        except Exception as error:  # noqa: BLE001 - reported and skipped, the run goes on
            return position, torch.zeros(0), f"undecodable: {str(error).splitlines()[0]}"


def pad_batch(items):
    """Zero-pad waveforms to the longest: (positions, (batch, samples), lengths, errors)."""
    positions, waves, errors = zip(*items)
    lengths = torch.tensor([len(w) for w in waves])
    batch = torch.zeros(len(waves), max(int(lengths.max()), 1))
    for row, wave in enumerate(waves):
        batch[row, : len(wave)] = wave
    return list(positions), batch, lengths, list(errors)


def _open_store(root: Path, params: dict, manifest_md5: str) -> list[pd.DataFrame]:
    """Reuse finished shards of an interrupted run on the same inputs; wipe anything else."""
    meta_path = root / "store.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("params") == params and meta.get("manifest_md5") == manifest_md5:
            return finished_shards(root)
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    atomic.write_json(meta_path, {"params": params, "manifest_md5": manifest_md5, "complete": False})
    return []


def featurize(cfg: DictConfig) -> Path:
    """Compute the CQT of every manifest clip into the store for `cfg`; return its folder."""
    manifest_path = Path(cfg.paths.prepared) / "manifest.csv"
    manifest = pd.read_csv(manifest_path, dtype=TEXT_COLUMNS)
    manifest.insert(0, "clip_id", np.arange(len(manifest)))
    root, params = store_dir(cfg), store_params(cfg)
    done = _open_store(root, params, file_md5(manifest_path))
    meta = json.loads((root / "store.json").read_text())
    if meta.get("complete"):
        print(f"featurize: {root} is up to date ({meta['clips']} clips)")
        return root

    last_done = int(done[-1]["clip_id"].max()) if done else -1
    todo = manifest[manifest["clip_id"] > last_done].reset_index(drop=True)
    device = pick_device(cfg.features.device)
    frontend = LogCQT.from_config(cfg.features).to(device).eval()
    writer = ShardWriter(root, cfg.features.n_bins, int(float(cfg.features.shard_mb) * 2**20), first_shard=len(done))
    loader = DataLoader(
        DecodedClips(todo, cfg.features.sr), batch_size=cfg.features.batch_size, collate_fn=pad_batch,
        num_workers=cfg.features.num_workers, pin_memory=device.type == "cuda",
    )
    skipped = []
    hop = cfg.features.hop_length
    with tqdm(total=float(todo["duration"].sum()), desc=f"featurize ({device.type})",
              bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} audio-s [{elapsed}<{remaining}]") as bar:
        for positions, batch, lengths, errors in loader:
            with torch.inference_mode():
                spectra = frontend(batch.to(device, non_blocking=True)).to(torch.float16).cpu().numpy()
            for position, spectrum, length, error in zip(positions, spectra, lengths.tolist(), errors):
                clip = todo.iloc[position]
                if error:
                    skipped.append({"path": clip["path"], "reason": error})
                    continue
                writer.add(clip[INDEX_COLUMNS[:4]].to_dict(), spectrum[:, : n_frames(length, hop)].T)
            bar.update(float(todo["duration"].iloc[positions].sum()))
    writer.close_shard()

    index = pd.concat(finished_shards(root), ignore_index=True)
    with atomic.atomic_path(root / "index.csv") as tmp:
        index.to_csv(tmp, index=False)
    atomic.write_json(root / "store.json", {
        **meta, "complete": True, "clips": len(index), "frames": int(index["length"].sum()),
        "shards": int(index["shard"].nunique()), "skipped": skipped,
    })
    print(f"featurize: wrote {len(index)} clips ({int(index['length'].sum())} frames) to {root}; "
          f"skipped {len(skipped)}")
    return root
