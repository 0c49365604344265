"""Quality side by side: our SASRec and NextItNet against RecBole 1.2.1's, same split, same metrics.

Both sides get the same data, the same leave-one-out split (last item test, second-to-last
validation), the same width, depth, sequence length, dropout, learning rate, batch size and
epoch budget, and early stopping on validation NDCG@10 with the same patience. RecBole trains
with its own data pipeline and trainer (its leave-one-out split, ``LS: valid_and_test``, is the
same split); the final test ranking of *both* models is done here, by ``stackrec.evaluate``:
full ranking over all items with the user's earlier items removed, ties counted against the
target. Throughput is training targets per second (next-item predictions that carry a loss).

RecBole lives in its own virtualenv, outside the repository (its pins clash with ours):

    python3.11 -m venv /work/recbole-venv
    /work/recbole-venv/bin/pip install torch==2.13.0 recbole==1.2.1

``--recbole-python`` names another interpreter (a GPU machine's, say). RecBole 1.2.1 aliases
``np.float = np.float_`` and friends at start-up, names numpy 2 removed: the worker puts them
back first. Under pandas 3 it warns ``ChainedAssignmentError`` at dataset.py:648-650 (an in-place
``fillna`` that no longer writes); our data has no missing values, and on a 4,000-event sample
of ml-100k its figures match those under numpy 1.26 and pandas 2.1.4 to the last digit.

The worker names the data set ``stackrec-<name>``: for "ml-100k" RecBole reads its bundled copy
whatever ``data_path`` says, and its tokens are not our indices (the worker checks the count).

RecBole switches on ``torch.autograd.set_detect_anomaly(True)`` when imported, which slows its
training several times; the worker switches it off again, so the comparison is fair to it.

Run (one benchmark at a time; two multi-threaded jobs on two cores slow each other down, and
on a machine others are using, ``OMP_NUM_THREADS=1`` was several times faster than two threads):

    nice -n 10 .venv/bin/python benchmarks/quality.py --datasets ml-100k --epochs 20
    nice -n 10 .venv/bin/python benchmarks/quality.py --datasets beauty --models sasrec \
        --epochs 20 --lr-schedule cosine --patience 5 --dropout 0.2 --windows-per-step 128

That Beauty recipe (the rate falls on a cosine over 20 epochs; early stopping ends it near 15)
gave SASRec NDCG@10 0.0330, 0.0329 and 0.0328 over seeds 0-2 on an H200 in float32, above
the published 0.0327; the same with a constant rate gave 0.0325, 0.0325 and 0.0326.

``--seed 0 1 2`` runs the table once per seed and adds each recipe's mean and standard error
over the seeds: on ML-100K (943 test users) one seed's NDCG@10 moves by about 0.01 (RecBole's
SASRec gave 0.0953 and 0.1079 with the same seed on an H200 and on a CPU), so compare means.

On a GPU machine each row can run as its own process (``--implementations ours`` or
``recbole``, ``--out DIR`` each), and ``--merge DIR/*.json`` prints them as one table;
``benchmarks/quality_parallel.sh OUT`` does both.
``--hours`` is each side's training-time budget: no epoch starts after it. ``--no-amp`` trains
ours in float32 on CUDA, as RecBole does.

An "epoch" is one pass over the training targets on both sides. RecBole feeds every prefix as
its own sequence (one target, one forward pass each); we feed each history once, cut into
windows of ``max_len`` with a loss at every position, so an epoch costs us far fewer forward
passes. ``--windows-per-step`` sets our batch size (RecBole's is 128 sequences).

It prints one JSON document and a Markdown table, and writes both under benchmarks/results/.
benchmarks/quality.md keeps the tables these runs measured.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"
FILES = {"ml-100k": "ml-100k/ml-100k.inter", "beauty": "beauty/beauty.txt.gz"}
RECBOLE_PYTHON = Path("/work/recbole-venv/bin/python")
PUBLISHED = {  # Klenitskiy & Vasilev, RecSys 2023, SASRec with full cross-entropy on Beauty
    "beauty": {"hr@10": 0.0533, "ndcg@10": 0.0327, "source": "Klenitskiy & Vasilev 2023"}
}
KS = (10,)


@dataclass(frozen=True)
class Recipe:
    """What both implementations are given."""

    model: str
    dim: int = 64
    blocks: int = 2
    heads: int = 1
    max_len: int = 50
    dropout: float = 0.2
    lr: float = 1e-3
    lr_schedule: str = "constant"  # ours: or "cosine" over the epochs (RecBole: constant)
    batch_size: int = 128  # RecBole: sequences (one target each) per step
    windows_per_step: int = 128  # ours: windows (up to max_len targets each) per step
    stride: int | None = None  # ours: overlapping windows this far apart (None: disjoint)
    epochs: int = 20
    patience: int = 5
    seed: int = 0
    amp: bool = True  # ours: bfloat16 autocast on CUDA (RecBole trains in float32)
    hours: float | None = None  # training-time budget of each side (epochs started before it)


# -- ours -------------------------------------------------------------------------------------
def prepare(dataset: str, recipe: Recipe, data_dir: Path, workdir: Path):
    """Read and split the data; write it, and the test targets, for the RecBole worker."""
    from stackrec.datasets import read_interactions
    from stackrec.sequences import Sequences
    from stackrec.splits import leave_one_out
    from stackrec.vocab import Vocabulary

    table = read_interactions(data_dir / FILES[dataset])
    column = {
        name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names
    }
    items, users = Vocabulary(), Vocabulary()
    items.add(column["item_id"])
    users.add(column["user_id"])
    events = (users.lookup(column["user_id"]), items.lookup(column["item_id"]), column["ts"])
    split = leave_one_out(Sequences.from_arrays(*events), recipe.max_len)
    _write_for_recbole(workdir, dataset, events, split.test)
    return len(items), split


def run_ours(n_items: int, split, recipe: Recipe) -> dict:
    """Train on the split's training windows, stop early on validation, rank the test targets."""
    import numpy as np
    import torch

    from stackrec.checkpoint import MODELS
    from stackrec.evaluate import Protocol, evaluate_held_out
    from stackrec.train import Schedule, TrainConfig, train_with_validation

    began = time.perf_counter()
    torch.manual_seed(recipe.seed)
    model_cls, config_cls = MODELS[recipe.model]
    settings = dict(n_items=n_items, dim=recipe.dim, n_blocks=recipe.blocks,
                    max_len=recipe.max_len, dropout=recipe.dropout)  # fmt: skip
    if recipe.model == "sasrec":
        settings["n_heads"] = recipe.heads
    model = model_cls(config_cls(**settings))
    full = Protocol("full", mask_history=True)
    windows, counted = split.train.training_windows(recipe.max_len, recipe.stride or None)
    result = train_with_validation(
        model,
        windows,
        TrainConfig(
            lr=recipe.lr,
            lr_schedule=recipe.lr_schedule,
            batch_size=recipe.windows_per_step,
            seed=recipe.seed,
            amp=recipe.amp,
        ),
        Schedule(
            recipe.epochs, recipe.patience or None, max_seconds=recipe.hours and recipe.hours * 3600
        ),
        validate=lambda m: evaluate_held_out(m, split.valid, full, ks=KS)["ndcg@10"],
        on_epoch=lambda r: print(f"  ours {recipe.model} {r}", file=sys.stderr, flush=True),
        counted=counted,
    )
    test = evaluate_held_out(result.model, split.test, full, ks=KS)
    epochs = len(result.history)
    return {
        "implementation": "stackrec",
        "precision": "bf16 autocast" if recipe.amp and torch.cuda.is_available() else "float32",
        "test": test,
        "epochs": epochs,
        "best_epoch": result.best_epoch,
        "wall_s": round(time.perf_counter() - began, 1),
        "s_per_epoch": round(result.train_seconds / epochs, 2),
        "targets_per_s": round(result.targets / result.train_seconds, 1),
        "train_targets_per_epoch": int(result.targets / epochs),
        "n_items": n_items - 1,
        "test_users": int(np.asarray(split.test.users).size),
    }


def _write_for_recbole(workdir: Path, dataset: str, events, test) -> None:
    """The interactions as a RecBole atomic file (tokens = our indices) and our test targets."""
    import numpy as np
    import torch

    users, items, ts = events
    folder = workdir / recbole_name(dataset)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{recbole_name(dataset)}.inter", "w") as out:
        out.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for row in zip(users.tolist(), items.tolist(), ts.tolist(), strict=True):
            out.write("{}\t{}\t{}\n".format(*row))
    torch.save({"contexts": test.contexts, "targets": test.targets, "seen": test.seen},
               workdir / "test.pt")  # fmt: skip
    np.save(workdir / "sizes.npy", np.array([int(items.max()) + 1, len(items)]))


def recbole_name(dataset: str) -> str:
    """Not a name RecBole knows: for "ml-100k" it reads its own bundled copy, whatever data_path
    says (recbole/config/configurator.py), whose tokens are not our indices."""
    return f"stackrec-{dataset}"


class TimeBudgetSpent(Exception):
    """Raised before a RecBole epoch that would start after the training-time budget."""


# -- RecBole (runs inside /work/recbole-venv) ---------------------------------------------------
RECBOLE_CONFIG = {
    "sasrec": lambda r: {
        "n_layers": r.blocks,
        "n_heads": r.heads,
        "hidden_size": r.dim,
        "inner_size": r.dim,  # as our SASRec: feed-forward width = dim
        "hidden_dropout_prob": r.dropout,
        "attn_dropout_prob": r.dropout,
    },
    "nextitnet": lambda r: {
        "embedding_size": r.dim,
        # RecBole builds `dilations * block_num` residual blocks: one pass over the list gives
        # r.blocks blocks, as ours (block_num=r.blocks with [1, 4] gave it twice our depth)
        "block_num": 1,
        "dilations": [(1, 4)[i % 2] for i in range(r.blocks)],
        "kernel_size": 3,
        "reg_weight": 0.0,
    },
}


def numpy2_aliases() -> None:
    """Put back the numpy 1 names that RecBole 1.2.1 aliases at import (np.float = np.float_)."""
    import numpy as np

    for old, new in {"float_": np.float64, "complex_": np.complex128, "unicode_": np.str_}.items():
        if old not in np.__dict__:
            setattr(np, old, new)


def run_recbole_worker(dataset: str, recipe: Recipe, workdir: Path) -> dict:
    numpy2_aliases()
    import numpy as np
    import torch
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.data.interaction import Interaction
    from recbole.utils import get_model, get_trainer, init_seed

    sys.path.insert(0, str(ROOT))
    from stackrec.evaluate import rank_rows
    from stackrec.ranking import next_item_metrics

    name = {"sasrec": "SASRec", "nextitnet": "NextItNet"}[recipe.model]
    config = Config(
        model=name,
        dataset=recbole_name(dataset),
        config_dict={
            "data_path": str(workdir),
            "USER_ID_FIELD": "user_id",
            "ITEM_ID_FIELD": "item_id",
            "TIME_FIELD": "timestamp",
            "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
            "MAX_ITEM_LIST_LENGTH": recipe.max_len,
            "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full"},
            "train_neg_sample_args": None,
            "loss_type": "CE",
            "epochs": recipe.epochs,
            "stopping_step": recipe.patience or recipe.epochs,  # 0: never stop early
            "learning_rate": recipe.lr,
            "train_batch_size": recipe.batch_size,
            "eval_batch_size": 2048,
            "valid_metric": "NDCG@10",
            "metrics": ["Hit", "NDCG", "MRR"],
            "topk": [10],
            "seed": recipe.seed,
            "device": "cuda" if torch.cuda.is_available() else "cpu",
            "use_gpu": torch.cuda.is_available(),
            "show_progress": False,
            "checkpoint_dir": str(workdir / "saved"),
            **RECBOLE_CONFIG[recipe.model](recipe),
        },
    )
    init_seed(config["seed"], config["reproducibility"])
    data = create_dataset(config)
    n_ours, n_events = (int(n) for n in np.load(workdir / "sizes.npy"))
    if data.inter_num != n_events:
        raise SystemExit(f"RecBole read {data.inter_num} interactions, not our {n_events}")
    train_data, valid_data, _ = data_preparation(config, data)
    model = get_model(name)(config, train_data.dataset).to(config["device"])
    torch.autograd.set_detect_anomaly(False)  # importing its models (sine.py) turned it on
    trainer = get_trainer(config["MODEL_TYPE"], name)(config, model)
    epoch_seconds: list[float] = []
    train_epoch = trainer._train_epoch
    budget = recipe.hours * 3600 if recipe.hours else float("inf")

    def timed_epoch(*args, **kwargs):
        if sum(epoch_seconds) >= budget:  # the same training-time budget as ours
            raise TimeBudgetSpent
        began = time.perf_counter()
        out = train_epoch(*args, **kwargs)
        epoch_seconds.append(time.perf_counter() - began)
        return out

    trainer._train_epoch = timed_epoch
    began = time.perf_counter()
    with contextlib.suppress(TimeBudgetSpent):  # the best checkpoint so far is on disk
        trainer.fit(train_data, valid_data, saved=True, show_progress=False)
    wall = time.perf_counter() - began
    best = torch.load(trainer.saved_model_file, weights_only=False)
    model.load_state_dict(best["state_dict"])
    model.eval()

    test = torch.load(workdir / "test.pt")
    tokens = [str(i) for i in range(1, n_ours)]
    to_recbole = torch.zeros(n_ours, dtype=torch.long)
    to_recbole[1:] = torch.as_tensor(data.token2id("item_id", tokens))
    ranks = []
    with torch.no_grad():
        for start in range(0, len(test["targets"]), 1024):
            contexts = test["contexts"][start : start + 1024]
            lengths = (contexts != 0).sum(1)
            right = torch.zeros_like(contexts)  # RecBole pads on the right
            for row, (context, length) in enumerate(zip(contexts, lengths, strict=True)):
                right[row, :length] = to_recbole[context[context != 0]]
            batch = Interaction({"item_id_list": right, "item_length": lengths})
            scores_recbole = model.full_sort_predict(batch.to(config["device"])).cpu()
            scores = scores_recbole[:, to_recbole]  # column i = our item i
            seen = test["seen"][start : start + 1024]
            ranks.append(rank_rows(scores, test["targets"][start : start + 1024], seen))
    train_seconds = sum(epoch_seconds)
    targets = len(train_data.dataset)  # RecBole's augmented data: one row per training target
    return {
        "implementation": "recbole-1.2.1",
        "test": next_item_metrics(torch.cat(ranks).numpy(), KS),
        "epochs": len(epoch_seconds),
        "best_epoch": int(best.get("epoch", -1)) + 1,
        "wall_s": round(wall, 1),
        "s_per_epoch": round(train_seconds / max(len(epoch_seconds), 1), 2),
        "targets_per_s": round(targets * len(epoch_seconds) / train_seconds, 1),
        "train_targets_per_epoch": targets,
        "anomaly_detection": "switched off",
        "precision": "float32",
    }


def run_recbole(dataset: str, recipe: Recipe, workdir: Path, python: Path) -> dict:
    """Run the worker in RecBole's own interpreter; its log goes straight to our stderr."""
    if not python.exists():
        return {"implementation": "recbole-1.2.1", "error": f"no {python}; see docstring"}
    script = str(Path(__file__).resolve())
    recipe_json = json.dumps(asdict(recipe))
    command = [str(python.absolute()), script, "--worker", dataset, recipe_json, str(workdir)]
    # cwd: RecBole writes log/ and log_tensorboard/ into the working directory
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False, cwd=workdir)
    if done.returncode != 0:
        return {"implementation": "recbole-1.2.1", "error": f"worker exited {done.returncode}; "
                "its log is above"}  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- report -----------------------------------------------------------------------------------
def markdown_header() -> list[str]:
    return [
        "| dataset | model | implementation | HR@10 | NDCG@10 | MRR@10 | epochs | s/epoch | "
        "targets/s | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]


def markdown(rows: list[dict]) -> str:
    lines = markdown_header()
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['dataset']} | {row['model']} | {row['implementation']} | "
                         f"error: {row['error'][:80]} |||||||")  # fmt: skip
            continue
        t = row["test"]
        lines.append(
            f"| {row['dataset']} | {row['model']} | {row['implementation']}{_marks(row)} | "
            f"{t['hr@10']:.4f} | {t['ndcg@10']:.4f} | {t['mrr@10']:.4f} | {row['epochs']} | "
            f"{row['s_per_epoch']} | {row['targets_per_s']} | {row['wall_s']} |"
        )
    for dataset, ref in PUBLISHED.items():
        if any(r["dataset"] == dataset for r in rows):
            lines.append(f"| {dataset} | sasrec | published ({ref['source']}) | {ref['hr@10']} | "
                         f"{ref['ndcg@10']} | | | | | |")  # fmt: skip
    return "\n".join(lines + seed_means(rows))


def seed_means(rows: list[dict]) -> list[str]:
    """Mean and standard error over the seeds of one recipe: on ML-100K's 943 test users one
    seed's NDCG@10 moves by about 0.01, more than most gaps between the rows."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        if "error" not in row:
            recipe = {k: v for k, v in row["recipe"].items() if k not in ("seed", "hours")}
            key = (row["dataset"], row["model"], row["implementation"] + _marks(row, seed=False))
            groups.setdefault((*key, json.dumps(recipe, sort_keys=True)), []).append(row)
    lines = []
    for (dataset, model, label, _), group in groups.items():
        if len(group) > 1:
            cells = []
            for metric in ("hr@10", "ndcg@10", "mrr@10"):
                values = [row["test"][metric] for row in group]
                mean = sum(values) / len(values)
                se = (sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values)) ** 0.5
                cells.append(f"{mean:.4f} ± {se:.4f}")
            lines.append(f"| {dataset} | {model} | {label}, mean of {len(group)} seeds | "
                         f"{' | '.join(cells)} | | | | |")  # fmt: skip
    if not lines:
        return []
    return ["", "Mean ± standard error over seeds:", "", *markdown_header(), *lines]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["ml-100k", "beauty"], choices=FILES)
    parser.add_argument("--models", nargs="+", default=["sasrec", "nextitnet"],
                        choices=["sasrec", "nextitnet"])  # fmt: skip
    parser.add_argument("--implementations", nargs="+", default=["ours", "recbole"],
                        choices=["ours", "recbole"])  # fmt: skip
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--patience", type=int, default=5,
                        help="epochs without a better validation score; 0: off")  # fmt: skip
    parser.add_argument("--dropout", type=float, default=0.2)
    parser.add_argument("--windows-per-step", type=int, default=128, help="our batch size")
    parser.add_argument("--stride", type=int,
                        help="our windows overlap, this many targets apart")  # fmt: skip
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--lr-schedule", choices=["constant", "cosine"], default="constant",
                        help="our rate over the epochs (RecBole's is constant)")  # fmt: skip
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True,
                        help="our bfloat16 autocast on CUDA")  # fmt: skip
    parser.add_argument("--hours", type=float, help="training-time budget of each side")
    parser.add_argument("--seed", type=int, nargs="+", default=[0],
                        help="both sides' seed; several run the table once each")  # fmt: skip
    parser.add_argument("--data-dir", type=Path, default=DATASETS)
    parser.add_argument("--recbole-python", type=Path, default=RECBOLE_PYTHON)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--merge", nargs="+", type=Path, metavar="JSON",
                        help="one table of reports of a run split across processes")  # fmt: skip
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    return parser.parse_args()


def device_name() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def run(args: argparse.Namespace) -> dict:
    rows = []
    for dataset, model, seed in itertools.product(args.datasets, args.models, args.seed):
        recipe = Recipe(
            model, epochs=args.epochs, patience=args.patience, dropout=args.dropout,
            lr=args.lr, lr_schedule=args.lr_schedule, windows_per_step=args.windows_per_step,
            hours=args.hours, amp=args.amp, seed=seed, stride=args.stride,
        )  # fmt: skip
        with tempfile.TemporaryDirectory() as tmp:
            n_items, split = prepare(dataset, recipe, args.data_dir, Path(tmp))
            row = {"dataset": dataset, "model": model, "recipe": asdict(recipe)}
            if "ours" in args.implementations:
                rows.append({**row, **run_ours(n_items, split, recipe)})
                print(markdown(rows[-1:]), file=sys.stderr)
            if "recbole" in args.implementations:
                rows.append({**row, **run_recbole(dataset, recipe, Path(tmp),
                                                  args.recbole_python)})  # fmt: skip
                print(markdown(rows[-1:]), file=sys.stderr)
    return {
        "protocol": "leave-one-out, full ranking, history masked, ties against the target",
        "device": device_name(),
        "published": PUBLISHED,
        "rows": rows,
    }


def merged(paths: list[Path]) -> dict:
    reports = [json.loads(path.read_text()) for path in paths]
    rows = [row for report in reports for row in report["rows"]]
    devices = sorted({report.get("device", "cpu") for report in reports})
    return {
        **reports[0],
        "device": ", ".join(devices),
        "rows": rows,
        "merged_from": list(map(str, paths)),
    }


def _marks(row: dict, seed: bool = True) -> str:
    """What sets a row apart from the plain recipe: bf16, our rate, dropout, batch, a seed."""
    recipe, ours = row["recipe"], row["implementation"] == "stackrec"
    marks = ["bf16"] if row.get("precision") == "bf16 autocast" else []
    if recipe.get("lr_schedule", "constant") != "constant" and ours:
        marks.append(f"{recipe['lr_schedule']} over {recipe['epochs']}")
    if recipe.get("dropout", Recipe.dropout) != Recipe.dropout:
        marks.append(f"dropout {recipe['dropout']}")
    if recipe.get("windows_per_step", Recipe.windows_per_step) != Recipe.windows_per_step and ours:
        marks.append(f"{recipe['windows_per_step']} windows per step")
    if recipe.get("stride") and ours:
        marks.append(f"stride {recipe['stride']}")
    if seed and recipe.get("seed"):
        marks.append(f"seed {recipe['seed']}")
    return f" ({', '.join(marks)})" if marks else ""


def main() -> None:
    args = parse_args()
    if args.worker:
        dataset, recipe, workdir = args.worker
        result = run_recbole_worker(dataset, Recipe(**json.loads(recipe)), Path(workdir))
        print(json.dumps(result))
        return
    sys.path.insert(0, str(ROOT))
    report = merged(args.merge) if args.merge else run(args)
    table = markdown(report["rows"])
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (args.out / f"quality-{stamp}.json").write_text(json.dumps(report, indent=2))
    (args.out / f"quality-{stamp}.md").write_text(table + "\n")
    print(json.dumps(report, indent=2))
    print(table)


if __name__ == "__main__":
    main()
