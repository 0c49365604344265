"""Every Prometheus metric stackrec exports, defined in one place.

A leaf module: it imports nothing of ours, so every layer may count what it does. Names follow
Prometheus conventions (``stackrec_`` prefix, unit in the name, ``_total`` for counters) and
labels stay low-cardinality: a topic, a model name, a stage, a reason; never a user or item id.

Long-running processes expose ``REGISTRY`` on ``/metrics``; short flow runs push it to a
Pushgateway (see ``push``). The Grafana dashboard and the alert rules may use only these names;
``tests/monitoring`` checks that.
"""

from __future__ import annotations

import urllib.request
from collections import defaultdict

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, push_to_gateway
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

REGISTRY = CollectorRegistry(auto_describe=True)

_STAGE_BUCKETS_S = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

# --- ingest -------------------------------------------------------------------------------
EVENTS_CONSUMED = Counter(
    "stackrec_events_consumed_total", "Messages read from Kafka.", ["topic"], registry=REGISTRY
)
EVENTS_LOGGED = Counter(
    "stackrec_events_logged_total",
    "Valid events made durable in the interaction log.",
    ["topic"],
    registry=REGISTRY,
)
EVENTS_DEAD_LETTERED = Counter(
    "stackrec_events_dead_lettered_total",
    "Invalid messages sent to the dead-letter topic, by rejection reason.",
    ["topic", "reason"],
    registry=REGISTRY,
)
EVENTS_DUPLICATE = Counter(
    "stackrec_events_duplicates_total",
    "Events repeating a recent (user, item, ts), handled per the duplicates policy.",
    ["topic"],
    registry=REGISTRY,
)
COMMITS_REJECTED = Counter(
    "stackrec_offset_commits_rejected_total",
    "Offset commits refused by a rebalance (the batch is logged; the next batch commits).",
    ["topic"],
    registry=REGISTRY,
)
DEAD_LETTERS_REPLAYED = Counter(
    "stackrec_dead_letters_replayed_total",
    "Dead letters re-driven to the main topic by `stackrec dlq replay`.",
    ["topic"],
    registry=REGISTRY,
)
CONSUMER_LAG = Gauge(
    "stackrec_consumer_lag_events",
    "Messages behind the end of the topic after the last batch (clamped at 0; informative only).",
    ["topic"],
    registry=REGISTRY,
)

# --- cycle ------------------------------------------------------------------------------------
STAGE_DURATION = Histogram(
    "stackrec_stage_duration_seconds",
    "Wall time of one stage of a continual cycle.",
    ["model", "stage"],
    buckets=_STAGE_BUCKETS_S,
    registry=REGISTRY,
)
CYCLE_DURATION = Histogram(
    "stackrec_cycle_duration_seconds",
    "Wall time of a whole continual cycle.",
    ["model"],
    buckets=_STAGE_BUCKETS_S,
    registry=REGISTRY,
)
CYCLES = Counter(
    "stackrec_cycles_total",
    "Continual cycles by outcome (published, noop, rejected, superseded, failed).",
    ["model", "outcome"],
    registry=REGISTRY,
)
LAST_SUCCESS = Gauge(
    "stackrec_last_success_timestamp_seconds",
    "Unix time of the last cycle that finished without error.",
    ["model"],
    registry=REGISTRY,
)

# --- training and quality ---------------------------------------------------------------------
TRAINING_LOSS = Gauge(
    "stackrec_training_loss", "Mean training loss of the last cycle.", ["model"], registry=REGISTRY
)
TRAINING_EXAMPLES = Counter(
    "stackrec_training_examples_total",
    "Next-item targets that carried a training loss.",
    ["model"],
    registry=REGISTRY,
)
PREQUENTIAL_HR = Gauge(
    "stackrec_prequential_hr_ratio",
    "Prequential hit rate at 10 of the serving model on a batch, before training on it.",
    ["model", "items"],
    registry=REGISTRY,
)
PREQUENTIAL_NDCG = Gauge(
    "stackrec_prequential_ndcg_ratio",
    "Prequential NDCG at 10 of the serving model on a batch, before training on it.",
    ["model", "items"],
    registry=REGISTRY,
)
PREQUENTIAL_MRR = Gauge(
    "stackrec_prequential_mrr_ratio",
    "Prequential MRR at 10 of the serving model on a batch, before training on it.",
    ["model", "items"],
    registry=REGISTRY,
)
MODEL_DEPTH = Gauge(
    "stackrec_model_depth_blocks", "Residual blocks in the model.", ["model"], registry=REGISTRY
)
MODEL_PARAMETERS = Gauge(
    "stackrec_model_parameters", "Trainable parameters in the model.", ["model"], registry=REGISTRY
)
VOCABULARY_ITEMS = Gauge(
    "stackrec_vocabulary_items", "Items the model can recommend.", ["model"], registry=REGISTRY
)
STACKING_EVENTS = Counter(
    "stackrec_stacking_events_total",
    "Times the model was deepened by stacking.",
    ["model", "operator", "mode"],
    registry=REGISTRY,
)
GROWTH_DECISIONS = Counter(
    "stackrec_growth_decisions_total",
    "Growth policy decisions by policy and decision (stack, keep).",
    ["model", "policy", "decision"],
    registry=REGISTRY,
)
GATE_DECISIONS = Counter(
    "stackrec_gate_decisions_total",
    "Promotion gate decisions by outcome (promoted, rejected).",
    ["model", "outcome"],
    registry=REGISTRY,
)

# --- registry and serving ---------------------------------------------------------------------
REGISTRY_VERSIONS = Gauge(
    "stackrec_registry_versions",
    "Versions kept in the model registry.",
    ["model"],
    registry=REGISTRY,
)
PUBLISHED_VERSION = Gauge(
    "stackrec_published_version",
    "Version that Redis serves (the value of <prefix>:current).",
    ["model"],
    registry=REGISTRY,
)
PUBLISH_DURATION = Histogram(
    "stackrec_publish_duration_seconds",
    "Wall time to write one version to Redis and flip current.",
    ["model"],
    buckets=_STAGE_BUCKETS_S,
    registry=REGISTRY,
)
PUBLISHED_VECTORS = Counter(
    "stackrec_published_vectors_total",
    "Item and user vectors written to Redis.",
    ["model", "kind"],
    registry=REGISTRY,
)
PUBLISH_FAILURES = Counter(
    "stackrec_publish_failures_total",
    "Publishes that failed after retries; the previous version stayed current.",
    ["model"],
    registry=REGISTRY,
)
FRESHNESS = Gauge(
    "stackrec_freshness_seconds",
    "Age of the newest event the serving version has trained on, at publish time.",
    ["model"],
    registry=REGISTRY,
)


def exposition() -> bytes:
    """The registry in Prometheus text format, as ``/metrics`` would serve it."""
    return generate_latest(REGISTRY)


def push(gateway: str, job: str, instance: str) -> None:
    """Push the registry to a Pushgateway under a bounded grouping key (job, instance).

    The grouping key names the deployment, never a run id, so the gateway holds one group per
    deployment instead of one per run.
    """
    push_to_gateway(gateway, job=job, registry=REGISTRY, grouping_key={"instance": instance})


def restore(gateway: str, job: str, instance: str, timeout_s: float = 5.0) -> int:
    """Load the values last pushed under (job, instance) into ``REGISTRY``; returns how many.

    Each flow run is a fresh process whose counters start at 0, and a push replaces the whole
    group, so without this the gateway would show every counter at one run's worth forever
    (``rate()`` sees no increase) and a failed run would drop the last success time. Restoring
    first makes the pushed counters and histograms keep counting across runs, as one
    long-running process's would. Setting, not adding, keeps it idempotent.
    """
    url = f"http://{gateway}/metrics"
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        text = response.read().decode()
    ours = {collector._name: collector for collector in REGISTRY._collector_to_names}
    histograms: dict[tuple, dict] = defaultdict(lambda: {"buckets": {}, "sum": 0.0})
    restored = 0
    for family in text_string_to_metric_families(text):
        collector = ours.get(family.name)
        if collector is None:
            continue
        for sample in family.samples:
            labels = dict(sample.labels)
            if (labels.pop("job", None), labels.pop("instance", None)) != (job, instance):
                continue
            suffix = sample.name[len(family.name) :]
            if collector._type == "histogram":
                key = (collector._name, tuple(labels.get(n, "") for n in collector._labelnames))
                if suffix == "_bucket":
                    histograms[key]["buckets"][float(labels["le"])] = sample.value
                elif suffix == "_sum":
                    histograms[key]["sum"] = sample.value
                continue
            if suffix in ("", "_total"):
                _child(collector, labels)._value.set(sample.value)
                restored += 1
    for (name, values), state in histograms.items():
        child = _child(ours[name], dict(zip(ours[name]._labelnames, values, strict=True)))
        _set_histogram(child, state["buckets"], state["sum"])
        restored += 1
    return restored


def _child(collector, labels: dict[str, str]):
    names = collector._labelnames
    return collector.labels(**{n: labels.get(n, "") for n in names}) if names else collector


def _set_histogram(child, cumulative: dict[float, float], total: float) -> None:
    """prometheus-client keeps per-bucket counts; the exposition shows cumulative ones."""
    below = 0.0
    for bound, bucket in zip(child._upper_bounds, child._buckets, strict=True):
        count = cumulative.get(bound, below)
        bucket.set(count - below)
        below = count
    child._sum.set(total)
