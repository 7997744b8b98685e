"""Adaptive task weighting against values worked by hand from REFERENCE.md 3."""

import pytest
import torch

from adapmtl_cli.engine.weighting import AdaptiveWeighting, EqualWeighting


def run(weighting, losses):
    """The weights used at each step, then that step's update, as the trainer does."""
    used = []
    for step, loss in enumerate(losses):
        used.append(weighting.weights().tolist())
        weighting.update(torch.tensor(loss), step)
    used.append(weighting.weights().tolist())
    return used


def test_three_tasks_by_hand():
    # begin=1, window=2. d(i) = |L(i-1) - L(i)| / L(i):
    # d(1) = [0.5/0.5, 0/2, 2/2] = [1, 0, 1]; d(2) = [0.25/0.25, 1/1, 0/2] = [1, 1, 0];
    # d(3) = [0/0.25, 0.5/0.5, 1/1] = [0, 1, 1].
    # Step 3 weighs with mean(d1, d2) = [1, .5, .5] (sum 2) * 3/2 = [1.5, .75, .75];
    # step 4 with mean(d2, d3) = [.5, 1, .5] * 3/2 = [.75, 1.5, .75].
    losses = [[1.0, 2.0, 4.0], [0.5, 2.0, 2.0], [0.25, 1.0, 2.0], [0.25, 0.5, 1.0]]
    used = run(AdaptiveWeighting(3, begin=1, window=2), losses)
    assert used[0] == used[1] == used[2] == [1.0, 1.0, 1.0]
    assert used[3] == pytest.approx([1.5, 0.75, 0.75])
    assert used[4] == pytest.approx([0.75, 1.5, 0.75])


def test_five_tasks_normalise_to_five_and_quirk_to_three():
    # begin=0, window=1: d(1) = [0.5/0.5, 0, 1/2, 0, 0.75/0.25] = [1, 0, 0.5, 0, 3], sum 4.5.
    losses = [[1.0] * 5, [0.5, 1.0, 2.0, 1.0, 0.25]]
    standard = run(AdaptiveWeighting(5, begin=0, window=1), losses)[2]
    quirk = run(AdaptiveWeighting(5, begin=0, window=1, normalise_to=3), losses)[2]
    assert standard == pytest.approx([5 / 4.5, 0.0, 2.5 / 4.5, 0.0, 15 / 4.5])
    assert sum(standard) == pytest.approx(5.0)
    assert quirk == pytest.approx([1 / 1.5, 0.0, 0.5 / 1.5, 0.0, 2.0])


def test_default_schedule_first_weighs_at_step_index_5500():
    # Losses alternate so that every d_t is non-zero and task 0 moves twice as much as task 1.
    weighting = AdaptiveWeighting(2)  # begin 5000, window 500
    for step in range(5500):
        base = 1.0 if step % 2 else 2.0
        weighting.update(torch.tensor([base, 1.0 + 0.5 * (step % 2)]), step)
        if step == 5498:
            assert weighting.weights().tolist() == [1.0, 1.0]  # 499 values: window not full
    w = weighting.weights()
    # Task 0: d alternates |2-1|/1 = 1 and |1-2|/2 = 0.5; task 1: |1-1.5|/1.5 = 1/3 and |1.5-1|/1 = 0.5.
    # 500 values, 250 of each: means 0.75 and 5/12, normalised to sum 2.
    assert w.tolist() == pytest.approx([2 * 0.75 / (0.75 + 5 / 12), 2 * (5 / 12) / (0.75 + 5 / 12)])


def test_state_round_trip_continues_identically():
    losses = [[1.0, 2.0], [0.5, 1.5], [0.4, 1.0], [0.2, 0.9], [0.1, 0.8]]
    a = AdaptiveWeighting(2, begin=1, window=2)
    for step, loss in enumerate(losses[:3]):
        a.update(torch.tensor(loss), step)
    b = AdaptiveWeighting(2, begin=1, window=2)
    b.load_state_dict(a.state_dict())
    for step, loss in enumerate(losses[3:], start=3):
        a.update(torch.tensor(loss), step)
        b.update(torch.tensor(loss), step)
    assert torch.equal(a.weights(), b.weights())


def test_equal_weighting_is_ones():
    assert EqualWeighting(4).weights().tolist() == [1.0, 1.0, 1.0, 1.0]


def test_wrong_number_of_losses_is_an_error():
    with pytest.raises(ValueError):
        AdaptiveWeighting(3).update(torch.tensor([1.0, 2.0]), 0)
