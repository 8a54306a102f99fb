"""Ctrl-C during training is never lost: a SIGINT that lands in a callback whose exceptions Python only
prints (jax's gc callback, a ``__del__``) still stops the run at the next step, with a checkpoint of it."""

import csv
import os
import signal
import sys

import pytest

from helpers import checkpoint_state, tiny_train_config
from jaxmat.train import config_from_dict, train_and_evaluate
from jaxmat.train._interrupt import deferred_sigint


class _SigintInDel:
    """Sends SIGINT to this process from ``__del__``: Python runs its handler inside ``__del__``."""

    def __del__(self):
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(10_000):  # bytecode boundaries where the pending handler runs, still inside __del__
            pass


@pytest.fixture
def python_sigint(monkeypatch):
    """Python's default SIGINT handler (a program started from a shell has it; pytest-xdist's workers
    ignore SIGINT) and a record of the exceptions Python reports as "Exception ignored"."""
    swallowed = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: swallowed.append(u.exc_type))
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield swallowed
    signal.signal(signal.SIGINT, previous)


def test_a_ctrl_c_in_a_callback_is_lost_without_deferral_and_kept_with_it(python_sigint):
    _SigintInDel()  # the failure mode: KeyboardInterrupt raised inside __del__, printed and dropped
    assert python_sigint == [KeyboardInterrupt]
    with pytest.raises(KeyboardInterrupt):  # a SIGINT the body never looked at is raised on exit
        with deferred_sigint() as requested:
            assert not requested()
            _SigintInDel()
            assert requested()
    assert python_sigint == [KeyboardInterrupt]  # nothing more was swallowed
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    with pytest.raises(KeyboardInterrupt):  # pressed twice: raised at once, from the second signal
        with deferred_sigint() as requested:
            os.kill(os.getpid(), signal.SIGINT)
            while True:
                os.kill(os.getpid(), signal.SIGINT)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a handler of the caller's own is left alone (the fixture restores)
    with deferred_sigint() as requested:
        os.kill(os.getpid(), signal.SIGINT)
    assert not requested() and signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_ctrl_c_stops_training_at_the_next_step_with_a_checkpoint_of_it(tmp_path, labelled_file, python_sigint):
    """SIGINT delivered while the loop logs epoch 1 (its handler runs in a frame the loop does not own):
    the run checkpoints after the next step, the first of epoch 2, and raises KeyboardInterrupt."""
    cfg = config_from_dict(tiny_train_config(labelled_file, {"data": {"valid_fraction": 0.25, "graphs_per_batch": 2},
                                                             "optim": {"epochs": 2}, "run": {"progress": False}}))

    def log(msg):
        if msg.startswith("epoch    1 "):
            _SigintInDel()

    with pytest.raises(KeyboardInterrupt):
        train_and_evaluate(cfg, tmp_path, log=log)
    assert python_sigint == []
    first = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    state = checkpoint_state(tmp_path)
    assert len(first) == 1 and (int(state["epoch"]), int(state["batch_in_epoch"])) == (1, 1)
    assert int(state["step"]) == int(first[0]["step"]) + 1
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
