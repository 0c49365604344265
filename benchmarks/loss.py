"""Full cross-entropy on a CPU: logits in cache tiles against materialised logits.

    python benchmarks/loss.py [--threads 2] [--repeat 7] [--train-steps 40]

``full_cross_entropy`` on a CPU either materialises the ``[T, n_items]`` logits (PyTorch's
``cross_entropy``) or, above ``losses.TILED_ABOVE`` logits, runs ``TiledCrossEntropy`` tile by
tile. Two measurements, each path timed alternately in one process so that a noisy shared
machine slows both alike:

- ``loss``: forward and backward of the loss alone on random data, at the batch shapes the
  benchmarks train with (targets per step x catalogue size);
- ``train_steps``: whole training steps of SASRec on Beauty's leave-one-out training windows
  (the quality benchmark's Beauty recipe, 64 windows per step), when the shared data is there.

Prints JSON: median milliseconds per path and the speed-up, materialised / tiled.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quality import DATASETS, FILES, Recipe, prepare

from stackrec import losses

SHAPES = {  # targets per step, items + 1 (padding row)
    "ml-100k, 16 windows": (800, 1_683),  # 1.3M logits: below losses.TILED_ABOVE
    "ml-100k, 128 windows": (6_400, 1_683),
    "ml-1m, 128 windows": (6_400, 3_707),
    "beauty, 64 windows": (368, 54_543),
    "beauty, 128 windows": (740, 54_543),
}
PATHS = {"materialised": math.inf, "tiled": 0}  # losses.TILED_ABOVE forcing each path


def alternate(run, repeat: int) -> dict:
    """Median seconds of ``run()`` under each path, the paths taking turns."""
    times: dict[str, list[float]] = {name: [] for name in PATHS}
    for rep in range(repeat + 1):  # the first round warms up
        for name, threshold in PATHS.items():
            losses.TILED_ABOVE = threshold
            began = time.perf_counter()
            run()
            if rep:
                times[name].append(time.perf_counter() - began)
    ms = {name: round(statistics.median(t) * 1000, 1) for name, t in times.items()}
    return {"ms": ms, "speedup": round(ms["materialised"] / ms["tiled"], 2)}


def loss_alone(targets: int, rows: int, repeat: int) -> dict:
    generator = torch.Generator().manual_seed(0)
    hidden = (0.1 * torch.randn(targets, 64, generator=generator)).requires_grad_()
    vectors = (0.1 * torch.randn(rows, 64, generator=generator)).requires_grad_()
    target = torch.randint(1, rows, (targets,), generator=generator)

    def step() -> None:
        hidden.grad = vectors.grad = None
        losses.full_cross_entropy(hidden, vectors, target).backward()

    return alternate(step, repeat)


def train_steps(steps: int, repeat: int) -> dict:
    """SASRec training steps on Beauty; targets/s under each path."""
    from stackrec.sasrec import SASRec, SASRecConfig
    from stackrec.train import TrainConfig, Trainer

    recipe = Recipe("sasrec", dropout=0.5, windows_per_step=64)
    with tempfile.TemporaryDirectory() as tmp:
        n_items, split = prepare("beauty", recipe, DATASETS, Path(tmp))
    windows = split.train.windows(recipe.max_len)[: steps * recipe.windows_per_step]
    model = SASRec(SASRecConfig(n_items=n_items, dropout=recipe.dropout))
    trainer = Trainer(model, TrainConfig(batch_size=recipe.windows_per_step), device="cpu")
    targets = trainer.fit(windows).targets
    result = alternate(lambda: trainer.fit(windows), repeat)
    per_s = {name: round(targets / ms * 1000) for name, ms in result["ms"].items()}
    return {"steps": steps, "targets": targets, **result, "targets_per_s": per_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--train-steps", type=int, default=40, help="0: skip train_steps")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    report = {
        "threads": args.threads,
        "tiles": [losses.ROWS_PER_TILE, losses.ITEMS_PER_TILE],
        "loss": {
            name: {"targets": t, "items": n - 1, **loss_alone(t, n, args.repeat)}
            for name, (t, n) in SHAPES.items()
        },
    }
    print(json.dumps(report["loss"]), file=sys.stderr)
    if args.train_steps and (DATASETS / FILES["beauty"]).exists():
        report["train_steps"] = train_steps(args.train_steps, max(1, args.repeat // 3))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
