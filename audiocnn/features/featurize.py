"""The featurize stage: manifest -> feature store (decode, resample, batched CQT, write).

Decoding and resampling run in DataLoader workers (pinned memory on CUDA); the CQT runs
batched on the GPU when there is one. Clips are bucketed by length (little padding) and
clips longer than `features.chunk_seconds` are cut into overlapping chunks, so memory
is bounded by the batch, never by the dataset or the longest file. Frames go to the
store folder `<paths.features>/<data.name>-<hash>`, where the hash covers every parameter
that shapes the frames. A killed run resumes after its finished shards. Under `torchrun`
each rank featurizes its share of the clips into its own shards and rank 0 writes the
index once all are done.

The store checks itself: every shard's size and blake2b checksum are recorded as it is
written. An existing store is up to date only if every shard still has its recorded size
(and, when resuming an incomplete store or with `features.verify=true`, its checksum);
shards that fail are dropped and just their clips featurized again into new shards.

One writer at a time: featurize holds the store folder's lock (`atomic.folder_lock`) while
it checks and writes. A second featurize of the same store waits (up to `lock_timeout_s`)
and then finds it up to date, or, when the store holds another manifest's clips (the
folder name covers the feature parameters, not the clips), rebuilds it for its own
manifest: the last writer's clips win, and readers of the other manifest see a store of
other clips and are told to featurize again.
"""

from __future__ import annotations

import errno
import json
import os
from contextlib import contextmanager, nullcontext
from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from audiocnn import atomic
from audiocnn.errors import ConfigError, InputError, MissingInputError, StoreError
from audiocnn.data.audio import clip_samples, load_audio, load_segment
from audiocnn.data.prepare import read_manifest
from audiocnn.features import distributed
from audiocnn.features.cqt import FEATURE_KEYS, FRONTEND_VERSION, LogCQT, n_frames
from audiocnn.features.plan import Piece, batches, chunk_margin, plan_pieces, rank_share
from audiocnn.features.settings import FeatureSettings, StoreSettings
from audiocnn.features.store import (CHECKSUM, ShardWriter, check_shards, clips_md5, finished_shards, next_shard,
                                     open_store, params_hash, shard_prefix, shard_rows)


# Most samples in one padded CQT batch (32 MB of float32): with chunked long clips, the
# memory featurize needs is bounded by constants, never by the data.
BATCH_SAMPLES = 1 << 23


def store_params(store: StoreSettings) -> dict:
    """The parameters that shape the stored frames (and so name the store)."""
    return {**{key: getattr(store.features, key) for key in FEATURE_KEYS}, "frontend_version": FRONTEND_VERSION}


def store_dir(store: StoreSettings) -> Path:
    """`<paths.features>/<data.name>-<hash of the feature parameters>`."""
    return store.stores / f"{store.data_name}-{params_hash(store_params(store))}"


def store_problem(store: StoreSettings, checksum: bool | None = None) -> InputError | None:
    """Why `store` cannot be used as it is, as the error to raise; None when it can.

    Usable: complete, holding the current manifest's clips, and every shard of the size
    (and, with `checksum`, default `features.verify`, the checksum) recorded when it was
    written. Only the clips (paths, labels) count: a manifest re-split into other folds or
    splits keeps its store.
    """
    root = store_dir(store)
    checksum = store.features.verify if checksum is None else checksum
    meta_path = root / "store.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    if not meta.get("complete") or not (store.prepared / "manifest.csv").exists() or \
            meta.get("clips_md5") != clips_md5(read_manifest(store.prepared)):
        return MissingInputError(f"paths.features={store.stores}: no complete feature store for this manifest "
                                 "and these features; run the featurize stage first (`dvc repro featurize` or "
                                 "`audiocnn featurize`)")
    records = meta.get("shard_files")
    problems = check_shards(root, records, checksum) if records is not None else {
        "": "written without shard sizes and checksums (by an older audiocnn)"}
    if problems:
        return StoreError(f"feature store {root}: {next(iter(problems.values()))}; run the featurize stage "
                          "again to rewrite it")
    return None


def is_featurized(store: StoreSettings) -> bool:
    """True when `store` is usable as it is (`store_problem`: sizes, and checksums with
    `features.verify=true`, so that a Hydra run with it featurizes, which rewrites the bad shards)."""
    return store_problem(store) is None


class DecodedPieces(Dataset):
    """Pieces of manifest clips -> (piece number, waveform (samples,) at `sr`, error message or "")."""

    def __init__(self, paths: list[str], pieces: list[Piece], sr: int):
        self.paths, self.pieces, self.sr = paths, pieces, sr

    def __len__(self) -> int:
        return len(self.pieces)

    def __getitem__(self, number: int):
        piece = self.pieces[number]
        path = self.paths[piece.position]
        try:
            wave = load_audio(path, self.sr) if piece.whole else load_segment(path, self.sr, piece.start, piece.stop)
            return number, wave, ""
        except Exception as error:  # noqa: BLE001 - reported and skipped, the run goes on
            return number, torch.zeros(0), f"undecodable: {str(error).splitlines()[0]}"


def pad_batch(items):
    """Zero-pad waveforms to the longest: (piece numbers, (batch, samples), lengths, errors)."""
    numbers, waves, errors = zip(*items)
    lengths = torch.tensor([len(w) for w in waves])
    batch = torch.zeros(len(waves), max(int(lengths.max()), 1))
    for row, wave in enumerate(waves):
        batch[row, : len(wave)] = wave
    return list(numbers), batch, lengths, list(errors)


def _one_thread(worker_id: int) -> None:
    torch.set_num_threads(1)  # decoding workers; the main process's CQT gets the cores


@contextmanager
def _cores_beside(workers: int, device: torch.device):
    """On CPU, the CQT's intra-op threads take only the cores the decoding workers leave (at least
    one). With 2 threads beside 2 workers on 2 cores, batches of 64 FSDD clips took 4 to 660 ms
    each (a parallel region waits for whichever of its threads a worker has preempted), and
    featurize 2-4x the wall time it takes with one thread (2-core machine, shared)."""
    threads = torch.get_num_threads()
    if device.type == "cpu" and workers:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        torch.set_num_threads(max(1, min(threads, cores - workers)))
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def featurize_share(f: FeatureSettings, root: Path, manifest: pd.DataFrame, rank: int, world: int,
                    device: torch.device) -> list[dict]:
    """Featurize this rank's share of the plan into its shards; returns the clips it skipped."""
    frontend = LogCQT.from_config(f.model_dump()).to(device).eval()
    paths, labels = manifest["path"].tolist(), manifest["label"].tolist()  # a pandas lookup per clip: ~0.3 ms
    margin = chunk_margin(frontend.radius, f.hop_length)
    def samples_of(position: int) -> int | None:
        try:
            return clip_samples(paths[position], f.sr)
        except Exception:  # noqa: BLE001 - decoded whole in a worker, which reports why it fails
            return None

    plan = plan_pieces(manifest, f.sr, f.hop_length, f.chunk_seconds, margin, samples_of=samples_of)
    prefix = shard_prefix(rank, world)
    done = finished_shards(root)  # any rank's (a repaired store keeps the shards of another world size)
    done_ids = set(shard_rows(root, done)["clip_id"].tolist())
    todo = [p for p in rank_share(plan, rank, world) if p.position not in done_ids]
    writer = ShardWriter(root, f.n_bins, int(f.shard_mb * 2**20), first_shard=next_shard(done, prefix),
                         prefix=prefix)
    loader = DataLoader(
        DecodedPieces(paths, todo, f.sr), batch_sampler=batches(todo, f.batch_size, BATCH_SAMPLES), collate_fn=pad_batch,
        num_workers=f.num_workers, pin_memory=device.type == "cuda",
        worker_init_fn=_one_thread if f.num_workers else None,
    )
    durations = manifest["duration"].to_numpy(dtype=float)
    skipped, failed = [], set()
    with writer, _cores_beside(f.num_workers, device), \
            tqdm(total=float(sum(durations[p.position] for p in todo if p.last)), disable=rank != 0,
                 desc=f"featurize ({device.type}{f', {world} ranks' if world > 1 else ''})",
                 bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} audio-s [{elapsed}<{remaining}]") as bar:
        for numbers, batch, lengths, errors in loader:
            with torch.inference_mode():
                spectra = frontend(batch.to(device, non_blocking=True)).to(torch.float16).cpu().numpy()
            for number, spectrum, length, error in zip(numbers, spectra, lengths.tolist(), errors):
                piece = todo[number]
                clip = {"clip_id": piece.position, "path": paths[piece.position],
                        "label": labels[piece.position]}
                if piece.position in failed:
                    continue
                if error:
                    skipped.append({"path": clip["path"], "reason": error})
                    failed.add(piece.position)
                    writer.abandon_clip()
                    continue
                keep = n_frames(length, f.hop_length) if piece.whole else piece.keep
                writer.add(clip, spectrum[:, piece.skip: piece.skip + keep].T, last=piece.last)
                if piece.last:
                    bar.update(float(durations[piece.position]))
    return skipped


def featurize(store: StoreSettings) -> Path:
    """Compute the CQT of every manifest clip into `store`; return its folder.

    Under `torchrun` (WORLD_SIZE > 1) every rank runs this; each takes its share.
    """
    rank, world = distributed.setup(store.features.device)
    try:
        return _featurize(store, rank, world)
    finally:
        distributed.teardown()


def _featurize(store: StoreSettings, rank: int, world: int) -> Path:
    manifest = read_manifest(store.prepared)
    root = store_dir(store)
    lock = atomic.folder_lock(root, store.lock_timeout_s, "lock_timeout_s", "featurize") \
        if rank == 0 else nullcontext()  # rank 0 holds it for all ranks
    with lock:
        try:
            return _featurize_locked(store, rank, world, manifest, root)
        except OSError as error:
            if error.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise ConfigError(f"paths.features={store.stores}: {error.strerror} while writing {root}; free "
                              "space and run featurize again (it goes on after the shards it finished), or set "
                              "paths.features to a disk with room") from None


def _featurize_locked(store: StoreSettings, rank: int, world: int, manifest: pd.DataFrame, root: Path) -> Path:
    if rank == 0:
        fresh = {"params": store_params(store), "clips_md5": clips_md5(manifest), "prepared": str(store.prepared),
                 "world": world, "complete": False}
        open_store(root, fresh, checksum=store.features.verify)
    distributed.barrier()
    meta = json.loads((root / "store.json").read_text())
    if meta.get("complete"):
        if rank == 0:
            print(f"featurize: {root} is up to date ({meta['clips']} clips)")
        return root

    device = distributed.device(store.features.device)
    skipped = featurize_share(store.features, root, manifest, rank, world, device)
    skipped = distributed.gather(skipped)
    if rank == 0:
        records = finished_shards(root)
        index = shard_rows(root, records).sort_values("clip_id", kind="stable").reset_index(drop=True)
        with atomic.atomic_path(root / "index.csv") as tmp:
            index.to_csv(tmp, index=False)
        atomic.write_json(root / "store.json", {
            **meta, "complete": True, "clips": len(index), "frames": int(index["length"].sum()),
            "shards": int(index["shard"].nunique()), "skipped": skipped,
            "shard_files": {name: {"bytes": r["bytes"], CHECKSUM: r[CHECKSUM]} for name, r in records.items()},
        })
        print(f"featurize: wrote {len(index)} clips ({int(index['length'].sum())} frames) to {root}; "
              f"skipped {len(skipped)}")
    distributed.barrier()
    return root
