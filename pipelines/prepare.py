"""Prepare stage. DVC: `python pipelines/prepare.py --params params.yaml`; by hand: Hydra overrides."""

from audiocnn.config import stage_main
from audiocnn.stages import prepare_stage

if __name__ == "__main__":
    stage_main(prepare_stage)
