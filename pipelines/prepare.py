"""Prepare stage. DVC: `python pipelines/prepare.py --params params.yaml`; by hand: Hydra overrides."""

from audiocnn.config import stage_main
from audiocnn.data.prepare import prepare

if __name__ == "__main__":
    stage_main(prepare)
