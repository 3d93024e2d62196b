"""Featurize stage. DVC: `python pipelines/featurize.py --params params.yaml`; by hand: Hydra overrides.

Several processes (GPUs, or nodes): `torchrun --nproc_per_node=N pipelines/featurize.py --params params.yaml`;
each rank featurizes every N-th clip into its own shards, rank 0 writes the index.
"""

from audiocnn.config import stage_main
from audiocnn.stages import featurize_stage

if __name__ == "__main__":
    stage_main(featurize_stage)
