"""trainer.threads (torch CPU threads for the run, given back after it) and a console without
terminal escapes when the output is not a terminal."""
from __future__ import annotations

import io

import pytest
import torch

from app.callbacks.progress import ProgressLogger
from app.run.build import build_run
from tests.conftest import FAST, run_dirs


def test_trainer_threads_applies_to_the_run_and_is_given_back(compose_cfg, tmp_path):
    before = torch.get_num_threads()
    wanted = 1 if before != 1 else 2
    run = build_run(compose_cfg(*FAST, f"trainer.threads={wanted}"), tmp_path)
    assert torch.get_num_threads() == wanted
    run.release()
    assert torch.get_num_threads() == before
    build_run(compose_cfg(*FAST), tmp_path).release()  # null: torch's own count, untouched
    assert torch.get_num_threads() == before


def test_trainer_threads_must_be_null_or_positive(compose_cfg, tmp_path):
    from app.errors import ConfigError

    with pytest.raises(ConfigError, match="trainer.threads.*null .* or an integer >= 1"):
        build_run(compose_cfg(*FAST, "trainer.threads=0"), tmp_path)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Trainer:
    epochs, should_stop = 2, False


@pytest.mark.parametrize("stream, escapes", [(io.StringIO(), False), (Terminal(), True)])
def test_the_progress_bar_draws_only_on_a_terminal(stream, escapes):
    bar = ProgressLogger(log_every=1, progress_bar=True, stream=stream)
    bar.on_fit_start(Trainer())
    bar.on_epoch_end(Trainer(), {"epoch": 1, "train_loss": 0.5})
    assert ("\x1b" in stream.getvalue()) is escapes


@pytest.mark.slow
def test_a_run_whose_output_is_not_a_terminal_prints_no_escapes(run_app, tmp_path):
    proc = run_app(*FAST, "trainer.progress_bar=true", "trainer.threads=1", check=True)
    [run] = run_dirs(tmp_path)
    output = proc.stdout + proc.stderr + (run / "train.log").read_text()
    assert "completed:" in output and "\x1b" not in output and "\r" not in output
