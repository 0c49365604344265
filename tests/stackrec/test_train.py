"""Training: it learns, it is deterministic, it resumes exactly, it carries state across growth."""

import io
import itertools

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from stackrec.checkpoint import from_payload, to_payload
from stackrec.evaluate import next_item_metrics, rank_targets
from stackrec.train import NoTargetsError, Schedule, TrainConfig, Trainer, train_with_validation
from stackrec.vocab import Vocabulary

N_ITEMS = 30  # n_items of the small models that conftest builds


def test_training_learns_a_deterministic_successor(build, cyclic):
    model = build(dropout=0.0)
    windows = cyclic()
    result = Trainer(model, TrainConfig(lr=1e-2, batch_size=16), device="cpu").fit(
        windows, epochs=15
    )
    assert result.steps == 45 and result.targets == 15 * 40 * 8
    contexts = windows[:, :-1]
    ranks = rank_targets(model, contexts, windows[:, -1])
    assert next_item_metrics(ranks, ks=(1,))["hr@1"] > 0.9


def test_only_counted_targets_carry_the_loss(build, cyclic):
    windows = cyclic(n_users=8)
    counted = torch.zeros(len(windows), windows.shape[1] - 1, dtype=torch.bool)
    counted[:, -1] = True  # the last target of each window: what a cycle's batch would add
    trainer = Trainer(build(), TrainConfig(batch_size=4), device="cpu")
    assert trainer.fit(windows, epochs=1, counted=counted).targets == 8
    with pytest.raises(NoTargetsError):
        trainer.fit(windows, counted=torch.zeros_like(counted))


def test_sampled_softmax_learns_too(build, cyclic):
    model = build(dropout=0.0)
    windows = cyclic()
    config = TrainConfig(lr=1e-2, batch_size=16, loss="sampled", n_negatives=8)
    Trainer(model, config, device="cpu").fit(windows, epochs=15)
    ranks = rank_targets(model, windows[:, :-1], windows[:, -1])
    assert next_item_metrics(ranks, ks=(1,))["hr@1"] > 0.5  # chance: 1/29


@pytest.mark.parametrize("loss", ["full", "sampled"])
def test_same_seed_same_loss_curve(loss, build, cyclic, losses):
    config = TrainConfig(batch_size=16, loss=loss, n_negatives=8)
    a = losses(Trainer(build(dropout=0.2), config, device="cpu"), cyclic())
    b = losses(Trainer(build(dropout=0.2), config, device="cpu"), cyclic())
    assert a == b and len(a) == 3


@pytest.mark.parametrize(
    "loss, schedule", [("full", "constant"), ("sampled", "constant"), ("full", "cosine")]
)
def test_resume_from_a_checkpoint_continues_the_same_loss_curve(
    loss, schedule, build, cyclic, losses
):
    config = TrainConfig(batch_size=16, loss=loss, n_negatives=8, lr_schedule=schedule)
    windows = cyclic()
    straight = losses(Trainer(build(dropout=0.2), config, device="cpu"), windows, epochs=2)

    first = Trainer(build(dropout=0.2), config, device="cpu")
    head = losses(first, windows, epochs=2, max_steps=4)
    buffer = io.BytesIO()
    vocab = Vocabulary.from_ids(["<pad>", *map(str, range(1, N_ITEMS))])
    torch.save(to_payload(first.model, vocab, first.optimizer_state()), buffer)
    buffer.seek(0)
    model, _, optimizer_state, _ = from_payload(torch.load(buffer, weights_only=True))
    torch.manual_seed(123)  # whatever happens in between must not matter
    tail = losses(Trainer(model, config, optimizer_state, device="cpu"), windows, epochs=2)
    assert len(straight) == 6 and head + tail == straight


def test_cosine_schedule_anneals_each_fit_from_lr_to_its_floor(build, cyclic):
    config = TrainConfig(lr=1e-2, batch_size=16, lr_schedule="cosine", lr_floor=0.1)
    trainer = Trainer(build(), config, device="cpu")
    rates: list[float] = []
    record = lambda step, loss: rates.append(trainer.optimizer.param_groups[0]["lr"])  # noqa: E731
    for _ in range(2):  # each fit is its own schedule: a cycle restarts from the top
        trainer.fit(cyclic(), epochs=3, on_step=record)
    first, second = rates[:9], rates[9:]
    assert first == second and first[0] == pytest.approx(1e-2) and first[-1] == pytest.approx(1e-3)
    assert all(a > b for a, b in itertools.pairwise(first))
    assert first[4] == pytest.approx(5.5e-3)  # halfway down the cosine


def test_a_validated_run_anneals_once_over_all_its_epochs_and_through_growth(build, cyclic):
    config = TrainConfig(lr=1e-2, batch_size=16, lr_schedule="cosine", lr_floor=0.1)
    rates: list[float] = []
    record = lambda optimizer, args, kwargs: rates.append(optimizer.param_groups[0]["lr"])  # noqa: E731
    hook = register_optimizer_step_post_hook(record)
    scores = iter(range(3))  # every epoch validates better than the last
    try:
        result = train_with_validation(
            build(), cyclic(), config, Schedule(epochs=3, stack_at=(1,)), lambda _: next(scores)
        )
    finally:
        hook.remove()
    assert len(rates) == 9 and rates[0] == pytest.approx(1e-2) and rates[-1] == pytest.approx(1e-3)
    assert all(a > b for a, b in itertools.pairwise(rates))  # no restart per epoch or at growth
    assert result.best_epoch == 3 and result.model.depth == 2 * build().depth
    assert result.optimizer_state["trainer"]["position"] == 0  # going on starts a fit of its own


def test_grown_vocabulary_keeps_optimizer_moments_of_old_rows(build, cyclic):
    trainer = Trainer(build(), TrainConfig(batch_size=16), device="cpu")
    trainer.fit(cyclic())
    state = trainer.optimizer_state()
    old = trainer.optimizer.state[trainer.model.embedding.weight]["exp_avg"].clone()
    trainer.model.grow_items(N_ITEMS + 3)
    grown = Trainer(trainer.model, TrainConfig(batch_size=16), state, device="cpu")
    moments = grown.optimizer.state[grown.model.embedding.weight]["exp_avg"]
    assert moments.shape == (N_ITEMS + 3, grown.model.config.dim)
    assert torch.equal(moments[:N_ITEMS], old)
    assert float(moments[N_ITEMS:].abs().sum()) == 0.0
    grown.fit(cyclic())  # and it trains on


def test_function_preserving_growth_carries_moments_to_the_copies(build, cyclic):
    trainer = Trainer(build(), TrainConfig(batch_size=16), device="cpu")
    trainer.fit(cyclic())
    state = trainer.optimizer_state()
    grown_model = trainer.model.stack("adjacent", "function_preserving")
    grown = Trainer(grown_model, TrainConfig(batch_size=16), state, device="cpu")
    old_params = dict(trainer.model.named_parameters())
    for name, param in grown_model.named_parameters():
        source = name.replace("blocks.1.", "blocks.0.").replace("blocks.2.", "blocks.1.")
        source = source.replace("blocks.3.", "blocks.1.")
        expected = trainer.optimizer.state[old_params[source]]["exp_avg_sq"]
        assert torch.equal(grown.optimizer.state[param]["exp_avg_sq"], expected), name


def test_faithful_growth_resets_the_optimizer(build, cyclic):
    trainer = Trainer(build(), TrainConfig(batch_size=16), device="cpu")
    trainer.fit(cyclic())
    grown_model = trainer.model.stack("adjacent", "faithful")
    grown = Trainer(grown_model, TrainConfig(), trainer.optimizer_state(), device="cpu")
    assert len(grown.optimizer.state) == 0


def test_windows_without_targets_are_refused(build):
    one_item_histories = torch.tensor([[0, 0, 5], [0, 0, 7]])
    with pytest.raises(NoTargetsError, match="2 windows"):
        Trainer(build(), device="cpu").fit(one_item_histories)


@pytest.mark.parametrize(
    ("sampled_above", "same_as"), [(N_ITEMS - 1, "sampled"), (N_ITEMS, "full")]
)
def test_auto_loss_samples_only_past_the_catalogue_threshold(
    sampled_above, same_as, build, cyclic, losses
):
    def curve(**loss) -> list[float]:
        config = TrainConfig(batch_size=16, n_negatives=8, **loss)
        return losses(Trainer(build(dropout=0.2), config, device="cpu"), cyclic())

    auto = TrainConfig(loss="auto", sampled_above=sampled_above)
    assert auto.loss_for(N_ITEMS) == same_as
    assert auto.loss_for(N_ITEMS, device="cuda") == "full"  # a GPU affords the full softmax
    assert curve(loss="auto", sampled_above=sampled_above) == curve(loss=same_as)
