"""Train DAPT from a YAML config, as `pointpeft train --config ...` does, from Python.

Run: python examples/train_from_config.py

The synthetic config needs nothing on disk; for ScanObjectNN use configs/scanobjectnn_objbg.yaml with
data.root=... and model.pretrained=... (see docs/training.md). Here the run is shrunk to take seconds.
"""

import pathlib
import tempfile

from pointpeft.train import load_config, train

CONFIG = pathlib.Path(__file__).parents[1] / "configs" / "synthetic.yaml"

with tempfile.TemporaryDirectory() as run_dir:
    config = load_config(
        CONFIG,
        [
            "optim.epochs=3",  # the config's 8 epochs take about a minute on a 2-core CPU
            "optim.warmup_epochs=0",
            "data.synthetic_train=320",
            "data.synthetic_test=80",
            "run.progress=false",
            f"run.output_dir={run_dir}",
        ],
    )
    result = train(config)  # prints the trainable-parameter line and one line per epoch
    print(f"best test accuracy {result.best_accuracy:.1f}% (chance 10%), epoch {result.best_epoch + 1}")
