"""complete(): a recovery step run again when another interrupt lands in it, twice at most;
claim(): what such a step takes away from the others, found again by its next run."""

from __future__ import annotations

import pytest

from keyedlock._core import claim, complete


class Step:
    """A recovery step whose first ``interrupted`` runs are stopped by a KeyboardInterrupt."""

    def __init__(self, interrupted: int) -> None:
        self.interrupted = interrupted
        self.runs: list[tuple[object, ...]] = []
        self.done = 0

    def __call__(self, *args: object) -> None:
        self.runs.append(args)
        if len(self.runs) <= self.interrupted:
            raise KeyboardInterrupt(f"run {len(self.runs)}")
        self.done += 1


def test_a_step_that_is_not_interrupted_runs_once() -> None:
    step = Step(0)
    complete(step, "k", 1)
    assert step.runs == [("k", 1)]
    assert step.done == 1


def test_a_step_interrupted_once_runs_again_to_its_end_then_the_interrupt_is_raised() -> None:
    step = Step(1)
    with pytest.raises(KeyboardInterrupt, match="run 1"):
        complete(step, "k")
    assert step.runs == [("k",), ("k",)]
    assert step.done == 1


def test_a_step_interrupted_twice_is_given_up_so_that_ctrl_c_still_stops_it() -> None:
    step = Step(5)
    with pytest.raises(KeyboardInterrupt, match="run 2"):
        complete(step)
    assert len(step.runs) == 2
    assert step.done == 0


def test_an_error_that_is_no_interrupt_is_raised_at_once() -> None:
    runs = []

    def failing() -> None:
        runs.append(1)
        raise LookupError("not an interrupt")

    with pytest.raises(LookupError):
        complete(failing)
    assert runs == [1]


def test_a_claim_moves_the_record_and_a_second_run_finds_it_there() -> None:
    records = {"hold": 7, "other": 8}
    claims: dict[str, int] = {}
    assert claim(records, claims, "hold") == 7
    assert (records, claims) == ({"other": 8}, {"hold": 7})
    assert claim(records, claims, "hold") == 7  # the run after an interrupt: its own claim
    del claims["hold"]  # the step acted on it
    assert claim(records, claims, "hold") is None  # nothing left to act on
