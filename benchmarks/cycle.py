"""Wall time of one continual cycle by stage, and its events/s, on the local stack.

    python benchmarks/cycle.py [--events 10000] [--steps N] [--repeat 2]

Starts a broker and Redis on free ports in a temporary run directory, replays a synthetic
stream, runs ``--repeat`` cycles of ``--events`` events each (the first one creates the model;
later ones continue it), and prints JSON: per cycle the stage seconds, wall seconds and events/s
(events ingested and trained on per wall second of the cycle). A Prefect ephemeral API serves
the flow runs; its start-up happens before the first cycle and is reported separately.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--steps", type=int, help="most steps a cycle (default: the product's)")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="stackrec-bench-"))
    os.environ["STACKREC_HOME"] = str(home)

    from flows.cli import replay_table
    from flows.settings import Settings
    from stackrec.synthetic import StreamConfig, generate
    from streaming import services, stack

    host = "127.0.0.1"
    kafka_port, redis_port = services.free_port(), services.free_port()
    settings = Settings.load(
        kafka_bootstrap=f"{host}:{kafka_port}",
        redis_url=f"redis://{host}:{redis_port}/0",
        train_steps=args.steps,
        batch_max_events=args.events,
        batch_max_wait_s=15,
    )
    stack.up(settings.run_dir, (host, kafka_port), (host, redis_port))
    try:
        began = time.perf_counter()
        from prefect.testing.utilities import prefect_test_harness

        from flows.cycle import continual_cycle

        with prefect_test_harness(server_startup_timeout=180):
            startup_s = time.perf_counter() - began
            table = generate(
                StreamConfig(n_events=args.events * args.repeat, n_users=5_000, n_items=20_000)
            )
            cycles = []
            overrides = {
                k: (str(v) if isinstance(v, Path) else v)
                for k, v in settings.model_dump(exclude_defaults=True).items()
            }
            for index in range(args.repeat):
                replay_table(
                    settings, table.slice(index * args.events, args.events), progress=False
                )
                report = continual_cycle(overrides=overrides)
                events = report["events"]["to_train"]
                cycles.append(
                    {
                        "cycle": index + 1,
                        "outcome": report["outcome"],
                        "gate": report["gate"].get("reason"),
                        "events": events,
                        "wall_s": report["wall_s"],
                        "stages_s": report["stages_s"],
                        "events_per_s": round(events / report["wall_s"], 1),
                        "train_targets_per_s": round(
                            report["training"].get("targets_per_s", 0.0), 1
                        ),
                    }
                )
                print(json.dumps(cycles[-1]), file=sys.stderr)
    finally:
        stack.down(settings.run_dir)
    print(
        json.dumps(
            {
                "benchmark": "cycle",
                "events_per_cycle": args.events,
                "train_steps": settings.train_steps,
                "prefect_startup_s": round(startup_s, 1),
                "cycles": cycles,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
