"""Featurize stage. DVC: `python pipelines/featurize.py --params params.yaml`; by hand: Hydra overrides."""

from audiocnn.config import stage_main
from audiocnn.features.featurize import featurize

if __name__ == "__main__":
    stage_main(featurize)
