"""Adaptive task weighting against values worked by hand from REFERENCE.md 3."""

import pytest
import torch

from adapmtl_cli.engine.weighting import AdaptiveWeighting, EqualWeighting


def paper_order(weighting, losses):
    """The weights applied at each step in the reference's (paper mode's) order: the step's losses
    are recorded first, then the weights that multiply them are read."""
    used = []
    for step, loss in enumerate(losses):
        weighting.update(torch.tensor(loss), step)
        used.append(weighting.weights().tolist())
    return used


def lagged_order(weighting, losses):
    """The weights applied at each step in standard mode's order: read before the step's update."""
    used = []
    for step, loss in enumerate(losses):
        used.append(weighting.weights().tolist())
        weighting.update(torch.tensor(loss), step)
    return used


# Two tasks, begin=2, window=3 (REFERENCE.md 3). The loss at step 2 only seeds the previous value;
# d(i) = |L(i-1) - L(i)| / L(i) is recorded from step 3 on:
#   d(3) = [|2-1|/1, |2-2|/2] = [1, 0]        d(4) = [|1-1|/1, |2-1|/1] = [0, 1]
#   d(5) = [|1-2|/2, |1-1|/1] = [1/2, 0]      d(6) = [|2-1|/1, |1-4|/4] = [1, 3/4]
#   d(7) = [|1-1|/1, |4-3|/3] = [0, 1/3]      d(8) = [|1-4|/4, |3-2|/2] = [3/4, 1/2]
#   d(9) = [|4-2|/2, |2-1|/1] = [1, 1]
# The reference sets the weights once its list holds window + 1 = 4 changes, i.e. after d(6), and
# then uses the mean of the last 3 (the first one, d(3), never counts):
#   step 6: mean(d4, d5, d6) = [3/2 / 3, 7/4 / 3] = [1/2, 7/12];  sum 13/12
#   step 7: mean(d5, d6, d7) = [3/2 / 3, 13/12 / 3] = [1/2, 13/36]; sum 31/36
#   step 8: mean(d6, d7, d8) = [7/4 / 3, 19/12 / 3] = [7/12, 19/36]; sum 40/36
#   step 9: mean(d7, d8, d9) = [7/4 / 3, 11/6 / 3] = [7/12, 11/18]; sum 43/36
# Renormalised to sum to 2 (T) or to 3 (the quirk): w = raw * to / sum.
LOSSES = [[4.0, 1.0], [2.0, 1.0], [2.0, 2.0], [1.0, 2.0], [1.0, 1.0], [2.0, 1.0], [1.0, 4.0], [1.0, 3.0], [4.0, 2.0], [2.0, 1.0]]
ADAPTIVE_TO_2 = {6: [12 / 13, 14 / 13], 7: [36 / 31, 26 / 31], 8: [21 / 20, 19 / 20], 9: [42 / 43, 44 / 43]}
ADAPTIVE_TO_3 = {6: [18 / 13, 21 / 13], 7: [54 / 31, 39 / 31], 8: [63 / 40, 57 / 40], 9: [63 / 43, 66 / 43]}


def test_paper_order_weighs_each_step_with_its_own_change():
    used = paper_order(AdaptiveWeighting(2, begin=2, window=3), LOSSES)
    for step in range(6):  # steps 0..5: fewer than window + 1 changes recorded
        assert used[step] == [1.0, 1.0], step
    for step, expected in ADAPTIVE_TO_2.items():
        assert used[step] == pytest.approx(expected, rel=1e-12), step


def test_standard_order_lags_one_step():
    # Standard mode reads the weights before recording the step: step i gets what the reference
    # applied at step i - 1, so the first adaptive weight multiplies step 7, not 6 (a deliberate
    # difference, documented in engine/weighting/adaptive.py and the trainer).
    used = lagged_order(AdaptiveWeighting(2, begin=2, window=3), LOSSES)
    for step in range(7):
        assert used[step] == [1.0, 1.0], step
    for step in (7, 8, 9):
        assert used[step] == pytest.approx(ADAPTIVE_TO_2[step - 1], rel=1e-12), step


def test_quirk_normalises_two_tasks_to_three():
    used = paper_order(AdaptiveWeighting(2, begin=2, window=3, normalise_to=3), LOSSES)
    for step in range(6):  # ones renormalised: 1 * 3 / 2
        assert used[step] == [1.5, 1.5], step
    for step, expected in ADAPTIVE_TO_3.items():
        assert used[step] == pytest.approx(expected, rel=1e-12), step


def test_three_tasks_by_hand():
    # begin=1, window=2: d(2) = [|1-.5|/.5, |2-2|/2, |4-2|/2] = [1, 0, 1] (step 1 only seeds);
    # d(3) = [|.5-.25|/.25, |2-1|/1, |2-2|/2] = [1, 1, 0]; d(4) = [0/.25, |1-.5|/.5, |2-1|/1] = [0, 1, 1];
    # d(5) = [|.25-.5|/.5, |.5-.5|/.5, |1-.5|/.5] = [1/2, 0, 1].
    # Adaptive once 3 changes are recorded (after d(4)): step 4 weighs mean(d3, d4) = [1/2, 1, 1/2]
    # (sum 2) * 3/2 = [3/4, 3/2, 3/4]; step 5 mean(d4, d5) = [1/4, 1/2, 1] (sum 7/4) * 12/7.
    # This test used to expect the weights of the old off-by-one: d(1) was recorded at step `begin`
    # and `window` changes counted as a full window, so with the trainer's lagged order the weights
    # turned adaptive at step 3 (mean(d1, d2)), one step before the reference.
    losses = [[1.0, 2.0, 4.0], [1.0, 2.0, 4.0], [0.5, 2.0, 2.0], [0.25, 1.0, 2.0], [0.25, 0.5, 1.0], [0.5, 0.5, 0.5]]
    used = paper_order(AdaptiveWeighting(3, begin=1, window=2), losses)
    assert used[:4] == [[1.0, 1.0, 1.0]] * 4
    assert used[4] == pytest.approx([0.75, 1.5, 0.75])
    assert used[5] == pytest.approx([3 / 7, 6 / 7, 12 / 7])


def test_five_tasks_normalise_to_five_and_quirk_to_three():
    # begin=0, window=1: d(1) = 0 (flat), d(2) = [0.5/0.5, 0, 1/2, 0, 0.75/0.25] = [1, 0, 0.5, 0, 3],
    # sum 4.5; adaptive from step 2 (window + 1 = 2 changes recorded), mean of the last 1 = d(2).
    losses = [[1.0] * 5, [1.0] * 5, [0.5, 1.0, 2.0, 1.0, 0.25]]
    standard = paper_order(AdaptiveWeighting(5, begin=0, window=1), losses)
    quirk = paper_order(AdaptiveWeighting(5, begin=0, window=1, normalise_to=3), losses)
    assert standard[1] == [1.0] * 5 and quirk[1] == pytest.approx([0.6] * 5)
    assert standard[2] == pytest.approx([5 / 4.5, 0.0, 2.5 / 4.5, 0.0, 15 / 4.5])
    assert sum(standard[2]) == pytest.approx(5.0)
    assert quirk[2] == pytest.approx([1 / 1.5, 0.0, 0.5 / 1.5, 0.0, 2.0])


def test_default_schedule_first_weighs_step_index_5501():
    # Losses alternate so that every d_t is non-zero and task 0 moves twice as much as task 1.
    # REFERENCE.md 3: with begin 5000 and window 500 the first adaptive weight multiplies the loss
    # of step index 5501 (the paper order); standard mode's lagged order first uses it at 5502.
    paper, lagged = AdaptiveWeighting(2), AdaptiveWeighting(2)  # begin 5000, window 500
    for step in range(5502):
        losses = torch.tensor([1.0 if step % 2 else 2.0, 1.0 + 0.5 * (step % 2)])
        before = lagged.weights().tolist()
        lagged.update(losses, step)
        paper.update(losses, step)
        if step == 5500:
            assert paper.weights().tolist() == [1.0, 1.0]  # 500 changes: d(5001)..d(5500)
        if step == 5501:
            assert before == [1.0, 1.0]
    w = paper.weights()
    # Task 0: d alternates |2-1|/1 = 1 and |1-2|/2 = 0.5; task 1: |1-1.5|/1.5 = 1/3 and |1.5-1|/1 = 0.5.
    # The last 500 values (d(5002)..d(5501)), 250 of each: means 0.75 and 5/12, normalised to sum 2.
    expected = [2 * 0.75 / (0.75 + 5 / 12), 2 * (5 / 12) / (0.75 + 5 / 12)]
    assert w.tolist() == pytest.approx(expected)
    assert lagged.weights().tolist() == pytest.approx(expected)  # what standard mode applies at 5502


def test_state_round_trip_continues_identically():
    losses = [[1.0, 2.0], [0.5, 1.5], [0.4, 1.0], [0.2, 0.9], [0.1, 0.8], [0.3, 0.7]]
    a = AdaptiveWeighting(2, begin=1, window=2, current_step=True)
    for step, loss in enumerate(losses[:3]):
        a.update(torch.tensor(loss), step)
    b = AdaptiveWeighting(2, begin=1, window=2, current_step=True)
    b.load_state_dict(a.state_dict())
    for step, loss in enumerate(losses[3:], start=3):
        a.update(torch.tensor(loss), step)
        b.update(torch.tensor(loss), step)
        assert torch.equal(a.weights(), b.weights())
    assert a.weights().tolist() != [1.0, 1.0]  # the round trip carried the window into adaptive weights


@pytest.mark.parametrize("mode, current", [("paper", True), ("standard", False)])
def test_the_mode_picks_the_order(mode, current):
    from adapmtl_cli import builders
    from adapmtl_cli.config import load_config

    assert builders.build_weighting(load_config("demo", [f"mode={mode!r}"])).weighs_current_step is current
    assert builders.build_weighting(load_config("demo", [f"mode={mode!r}", "weighting.method='equal'"])).weighs_current_step is False


def test_equal_weighting_is_ones():
    assert EqualWeighting(4).weights().tolist() == [1.0, 1.0, 1.0, 1.0]


def test_wrong_number_of_losses_is_an_error():
    with pytest.raises(ValueError):
        AdaptiveWeighting(3).update(torch.tensor([1.0, 2.0]), 0)


def reference_weights(losses, begin, window, normalise_to):
    """A second, literal implementation of REFERENCE.md 3: a growing list per task, trimmed back
    to `window` values when it holds window + 1, and only then the raw weight set to its mean;
    the weights renormalised every step. Returns the weights that multiply each step's losses."""
    tasks = len(losses[0])
    history = [[] for _ in range(tasks)]
    raw = [1.0] * tasks
    previous = None
    applied = []
    for step, current in enumerate(losses):
        if step == begin:
            previous = current
        elif step > begin:
            for t in range(tasks):
                history[t].append(abs(previous[t] - current[t]) / current[t])
            previous = current
            if len(history[0]) == window + 1:
                for t in range(tasks):
                    history[t] = history[t][1:]
                    raw[t] = sum(history[t]) / window
        total = sum(raw)
        raw = [value * normalise_to / total for value in raw]
        applied.append(list(raw))
    return applied


TINY = ["model.width=4", "data.resolution=16", "data.train_size=32", "data.val_size=4", "data.test_size=4",
        "train.batch_size=2", "train.steps=12", "weighting.begin=2", "weighting.window=3", "train.val_every=100"]


@pytest.mark.parametrize("mode", ["paper", "standard"])
def test_training_logs_the_reference_weights(tmp_path, mode):
    """A real run's per-step losses and weights from TensorBoard, against the reference's weights
    recomputed from those losses: equal at every step in paper mode; one step behind in standard
    mode (its documented, deliberate difference)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from adapmtl_cli.cli import main

    assert main(["train", "--preset", "demo", "--out", str(tmp_path), "--quiet", f"mode={mode!r}", *TINY]) == 0
    (events,) = tmp_path.glob("events.out.tfevents.*")
    log = EventAccumulator(str(events), size_guidance={"scalars": 0})
    log.Reload()
    tasks = ["segment_semantic", "normal", "depth_zbuffer"]

    def series(tag):
        values = {event.step: event.value for event in log.Scalars(tag)}
        assert sorted(values) == list(range(1, 13)), tag  # logged after every step (step + 1)
        return [values[done] for done in range(1, 13)]

    losses = list(zip(*(series(f"Loss/train/{task}") for task in tasks)))
    weights = list(zip(*(series(f"LR/{task}/weights") for task in tasks)))
    expected = reference_weights(losses, begin=2, window=3, normalise_to=3)
    if mode == "standard":
        expected = [[1.0] * 3] + expected[:-1]
    for step in range(12):
        assert weights[step] == pytest.approx(expected[step], abs=1e-5), step
    first = 6 if mode == "paper" else 7  # begin + window + 1, and one later in standard mode
    assert weights[first - 1] == pytest.approx([1.0] * 3) and weights[first] != pytest.approx([1.0] * 3, abs=1e-3)
