"""The few-shot ModelNet40 protocol: every way × shot × fold episode trained by :func:`~pointpeft.train.train`,
the best test accuracy of each, and mean ± std per (way, shot) setting, as the papers' few-shot tables."""

from __future__ import annotations

import copy
import json
import math
import os
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from pointpeft.atomic_write import atomic_write_text
from pointpeft.train.config import FEWSHOT_FOLDS, FEWSHOT_SHOTS, FEWSHOT_WAYS, check_config
from pointpeft.train.loop import train

#: The files the protocol writes in ``run.output_dir`` (rewritten, atomically, after every episode).
RESULTS_JSON = "fewshot.json"
RESULTS_TABLE = "fewshot.md"


@dataclass
class FewShotResult:
    """What :func:`run_fewshot` measured.

    Attributes:
        accuracies: ``{(way, shot): [best test accuracy (%) of each fold, in the order of the folds]}``.
        table: the Markdown table of :data:`RESULTS_TABLE`: mean ± std (sample std over the folds) per
            setting.
        output_dir: the protocol's folder; each episode trains in ``{way}way_{shot}shot/fold{fold}/``.
    """

    accuracies: dict[tuple[int, int], list[float]]
    table: str
    output_dir: str


def _check_list(name: str, values: Sequence[int], allowed: tuple[int, ...]) -> list[int]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise TypeError(f"{name} must be a non-empty list of ints from {list(allowed)}, got {values!r}")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int) or value not in allowed:
            raise ValueError(f"{name} must hold values from {list(allowed)}, got {value!r} in {list(values)}")
    if len(set(values)) != len(values):
        raise ValueError(f"{name} holds a value twice: {list(values)}")
    return list(values)


def fewshot_table(accuracies: dict[tuple[int, int], list[float]]) -> str:
    """The Markdown table of mean ± std (sample std over the folds; ``-`` for a single fold) per setting.

    Args:
        accuracies: ``{(way, shot): [accuracy (%) of each fold]}``, each list non-empty.
    """
    lines = ["| setting | folds | accuracy (%) |", "|---|---|---|"]
    for (way, shot), values in accuracies.items():
        mean = statistics.mean(values)
        spread = f"{statistics.stdev(values):.1f}" if len(values) > 1 else "-"
        lines.append(f"| {way}-way {shot}-shot | {len(values)} | {mean:.1f} ± {spread} |")
    return "\n".join(lines) + "\n"


def run_fewshot(
    config: dict[str, dict[str, Any]],
    *,
    ways: Sequence[int] = FEWSHOT_WAYS,
    shots: Sequence[int] = FEWSHOT_SHOTS,
    folds: Sequence[int] = FEWSHOT_FOLDS,
    out: TextIO | None = None,
) -> FewShotResult:
    """Train every ``(way, shot, fold)`` episode of ``config`` (``data.dataset=modelnet40_fewshot``,
    ``data.root`` holding ``{way}way_{shot}shot/{fold}.pkl``) and report mean ± std per setting.

    Each episode is ``config`` with ``data.fewshot_way/_shot/_fold`` set, trained in
    ``run.output_dir/{way}way_{shot}shot/fold{fold}`` with ``run.resume`` on: a rerun after a crash skips
    the finished episodes (``train`` finds their ``last.pt`` at the last epoch) and continues the cut one.
    After every episode :data:`RESULTS_JSON` (every fold's best accuracy) and :data:`RESULTS_TABLE` are
    rewritten atomically.

    Args:
        config: a full training config (:func:`~pointpeft.train.load_config`).
        ways, shots, folds: the episodes to run (default: all, 5/10-way × 10/20-shot × folds 0 to 9).
        out: where the episodes' lines and the table go (default: stdout).

    Raises:
        ValueError / TypeError: for a config whose ``data.dataset`` is not ``modelnet40_fewshot`` or
            lacks ``data.root``, and for ``ways`` / ``shots`` / ``folds`` outside the protocol's (naming the
            argument), besides what :func:`~pointpeft.train.train` raises.
    """
    out = sys.stdout if out is None else out
    config = check_config(config)
    if config["data"]["dataset"] != "modelnet40_fewshot":
        raise ValueError(
            f"the few-shot protocol needs data.dataset=modelnet40_fewshot, got {config['data']['dataset']!r}"
        )
    ways = _check_list("ways", ways, FEWSHOT_WAYS)
    shots = _check_list("shots", shots, FEWSHOT_SHOTS)
    folds = _check_list("folds", folds, FEWSHOT_FOLDS)
    output_dir = config["run"]["output_dir"]
    # under torchrun each episode trains under DDP, and rank 0 alone prints and writes the results
    main = int(os.environ.get("RANK", "0")) == 0
    os.makedirs(output_dir, exist_ok=True)
    accuracies: dict[tuple[int, int], list[float]] = {}
    records: list[dict[str, Any]] = []
    episodes = [(way, shot, fold) for way in ways for shot in shots for fold in folds]
    for number, (way, shot, fold) in enumerate(episodes, 1):
        episode = copy.deepcopy(config)
        episode["data"].update(fewshot_way=way, fewshot_shot=shot, fewshot_fold=fold)
        folder = os.path.join(output_dir, f"{way}way_{shot}shot", f"fold{fold}")
        episode["run"].update(output_dir=folder, resume=True)
        if main:
            print(f"\n[{number}/{len(episodes)}] {way}-way {shot}-shot, fold {fold}: {folder}", file=out)
        result = train(episode, out=out)
        if not math.isfinite(result.best_accuracy):
            raise FloatingPointError(f"episode {way}-way {shot}-shot fold {fold} has no finite accuracy")
        accuracies.setdefault((way, shot), []).append(result.best_accuracy)
        records.append({"way": way, "shot": shot, "fold": fold, "best_accuracy": result.best_accuracy})
        if main:
            atomic_write_text(
                os.path.join(output_dir, RESULTS_JSON), json.dumps({"episodes": records}, indent=1)
            )
            atomic_write_text(os.path.join(output_dir, RESULTS_TABLE), fewshot_table(accuracies))
    table = fewshot_table(accuracies)
    if main:
        print("\n" + table, file=out, end="")
    return FewShotResult(accuracies, table, output_dir)
