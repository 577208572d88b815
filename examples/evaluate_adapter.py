"""Evaluate a saved adapter on a test set: rebuild the backbone, load the adapter, measure accuracy.

Run: python examples/evaluate_adapter.py

A one-epoch synthetic run makes the adapter first; with your own run, point `adapter` at
runs/<name>/best. The command-line equivalent is `pointpeft eval --config FILE --adapter DIR`.
"""

import pathlib
import tempfile

import pointpeft
from pointpeft.train import build_backbone, build_datasets, evaluate, load_config, train

CONFIG = pathlib.Path(__file__).parents[1] / "configs" / "synthetic.yaml"

with tempfile.TemporaryDirectory() as run_dir:
    small = ["data.synthetic_train=160", "data.synthetic_test=80", "run.progress=false"]
    config = load_config(CONFIG, ["optim.epochs=1", *small, f"run.output_dir={run_dir}"])
    trained = train(config)

    adapter = pathlib.Path(run_dir) / "best"  # adapter_config.json + adapter_model.safetensors
    backbone = build_backbone(config)  # the same frozen backbone (pre-trained weights, or the same seed)
    model = pointpeft.load_adapter(backbone, adapter).eval()
    pointpeft.print_trainable_parameters(model)
    _, test_set, _ = build_datasets(config)
    accuracy = evaluate(model, test_set, config, device=next(model.parameters()).device)
    print(f"loaded adapter: test accuracy {accuracy:.1f}% (during training: {trained.best_accuracy:.1f}%)")
    assert abs(accuracy - trained.best_accuracy) < 1e-9
