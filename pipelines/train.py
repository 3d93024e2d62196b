"""Train stage.

DVC runs `python pipelines/train.py --params params.yaml` (train only; evaluate is the
next stage). By hand, `python pipelines/train.py model=cnn trainer.max_epochs=3` or a
sweep `-m model=cnn,crnn_gru optimizer.lr=1e-3,3e-4` runs a whole experiment per job:
missing inputs are made, then train and evaluate.
"""

from audiocnn.config import stage_main
from audiocnn.experiment import run_experiment, train_stage

if __name__ == "__main__":
    stage_main(train_stage, hydra_task=run_experiment)
