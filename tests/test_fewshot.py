"""The few-shot ModelNet40 protocol through ``pointpeft fewshot``: episodes written in the released file
format (``{way}way_{shot}shot/{fold}.pkl`` pickles of ``(points (N, 6), label, name)`` items), every fold
trained, the table's mean ± std the folds' best accuracies, a rerun training nothing, bad input refused."""

from __future__ import annotations

import json
import pathlib
import pickle
import statistics

import numpy as np
import pytest

from pointpeft.cli import main
from pointpeft.data import SyntheticShapes
from pointpeft.train import fewshot_table, load_config, run_fewshot
from tiny_run import TINY

CONFIG = pathlib.Path(__file__).parents[1] / "configs" / "fewshot_modelnet40.yaml"


def _write_episode(root: pathlib.Path, way: int, shot: int, fold: int) -> None:
    """A fold in the released format, with clouds of ``way`` synthetic shape classes (normals as zeros)."""

    def items(count: int, seed: int) -> list[tuple]:
        shapes = SyntheticShapes(count, 64, num_classes=way, seed=seed)
        out = []
        for i in range(count):
            points, label = shapes[i]
            xyz_normals = np.concatenate([points.numpy(), np.zeros((64, 3), np.float32)], axis=1)
            out.append((xyz_normals, np.int64(label), f"shape_{i}"))
        return out

    path = root / f"{way}way_{shot}shot" / f"{fold}.pkl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump({"train": items(way * 4, 10 * fold + 1), "test": items(way * 2, 10 * fold + 2)}, f)


def _args(tmp_path: pathlib.Path) -> list[str]:
    return ["fewshot", "--config", str(CONFIG), *TINY, f"data.root={tmp_path / 'data'}", "optim.epochs=2",
            "data.npoints=64", f"run.output_dir={tmp_path / 'run'}", "run.device=cpu"]  # fmt: skip


def test_two_folds_through_the_cli_give_the_table_of_their_best_accuracies(tmp_path, capsys):
    for fold in (0, 1):
        _write_episode(tmp_path / "data", 5, 10, fold)
    argv = [*_args(tmp_path), "--ways", "5", "--shots", "10", "--folds", "0", "1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "[1/2] 5-way 10-shot, fold 0" in out and "[2/2] 5-way 10-shot, fold 1" in out
    run = tmp_path / "run"
    best = []
    for fold in (0, 1):
        records = [
            json.loads(line) for line in (run / "5way_10shot" / f"fold{fold}" / "metrics.jsonl").open()
        ]
        assert len(records) == 2
        best.append(max(r["test_accuracy"] for r in records))
    episodes = json.loads((run / "fewshot.json").read_text())["episodes"]
    assert [(e["way"], e["shot"], e["fold"]) for e in episodes] == [(5, 10, 0), (5, 10, 1)]
    assert [e["best_accuracy"] for e in episodes] == best
    table = (run / "fewshot.md").read_text()
    assert f"| 5-way 10-shot | 2 | {statistics.mean(best):.1f} ± {statistics.stdev(best):.1f} |" in table
    assert table in out

    # a rerun finds every episode finished: nothing trains, the same table
    assert main(argv) == 0
    again = capsys.readouterr().out
    assert "epoch   1/2" not in again and (run / "fewshot.md").read_text() == table


def test_a_ten_way_episode_gets_a_ten_class_head(tmp_path, capsys):
    _write_episode(tmp_path / "data", 10, 20, 3)
    config = load_config(CONFIG, _args(tmp_path)[3:])
    result = run_fewshot(config, ways=[10], shots=[20], folds=[3])
    assert list(result.accuracies) == [(10, 20)] and len(result.accuracies[(10, 20)]) == 1
    assert "| 10-way 20-shot | 1 |" in result.table and " ± - |" in result.table
    assert "num_classes" not in capsys.readouterr().err


def test_the_protocol_refuses_what_it_cannot_run(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*_args(tmp_path), "--ways", "7"])
    assert (
        exit_info.value.code == 2 and "ways must hold values from [5, 10], got 7" in capsys.readouterr().err
    )
    _write_episode(tmp_path / "data", 5, 10, 0)
    with pytest.raises(SystemExit):
        main([*_args(tmp_path), "--ways", "5", "--shots", "10", "--folds", "4"])
    assert "5way_10shot/4.pkl" in capsys.readouterr().err  # the missing episode file, named
    with pytest.raises(ValueError, match=r"needs data.dataset=modelnet40_fewshot, got 'synthetic'"):
        run_fewshot(load_config(None, TINY))
    with pytest.raises(ValueError, match=r"folds holds a value twice"):
        run_fewshot(load_config(CONFIG, _args(tmp_path)[3:]), folds=[1, 1])


def test_the_table_is_mean_and_sample_std():
    table = fewshot_table({(5, 10): [90.0, 100.0], (10, 20): [80.0]})
    assert "| 5-way 10-shot | 2 | 95.0 ± 7.1 |" in table and "| 10-way 20-shot | 1 | 80.0 ± - |" in table
