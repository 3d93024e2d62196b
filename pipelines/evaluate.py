"""Evaluate stage. DVC: `python pipelines/evaluate.py --params params.yaml`; by hand: Hydra overrides."""

from audiocnn.config import stage_main
from audiocnn.experiment import evaluate_stage

if __name__ == "__main__":
    stage_main(evaluate_stage)
