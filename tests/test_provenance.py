"""Config hash, which keys count as result-changing, comparing runs, and the resume command line."""
from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from app.run import provenance, resume
from app.errors import ConfigError
from app.run.record import provenance as provenance_record


def test_config_hash_ignores_result_neutral_keys_only(compose_cfg):
    base = provenance.config_hash(compose_cfg())
    assert base.startswith("sha256:") and base == provenance.config_hash(compose_cfg())
    for neutral in ("logger=none", "trainer.log_every=1", "trainer.progress_bar=false", "task_name=x",
                    "trainer.checkpoint_every=5", "trainer.keep_last_k=3", "device.index=1", "resume=/x"):
        assert provenance.config_hash(compose_cfg(neutral)) == base, neutral
    for result in ("seed=1", "optimizer.lr=0.1", "trainer.epochs=5", "model=resmlp", "deterministic=true",
                   "trainer.eval_batch_size=64", "data.n_samples=100"):
        assert provenance.config_hash(compose_cfg(result)) != base, result


def test_config_changes_are_resolved_leaves(compose_cfg):
    changes = provenance.config_changes(compose_cfg(), compose_cfg("trainer.epochs=7"))
    assert changes == {"trainer.epochs": (100, 7), "scheduler.T_max": (100, 7)}  # T_max follows epochs


def test_provenance_record_names_code_command_versions_and_config(compose_cfg):
    record = provenance_record("CPU", ["a=1"], provenance.config_hash(compose_cfg()))
    assert {"git_commit", "git_dirty", "git_diff_sha256", "config_hash", "command", "overrides",
            "versions", "device", "started_at"} <= set(record)
    assert record["config_hash"] == provenance.config_hash(compose_cfg())
    assert {"torch", "hydra-core", "optuna", "wandb"} <= set(record["versions"])


def fake_run(path, cfg, config_hash, commit="abc"):
    (path / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, path / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create([]), path / ".hydra" / "overrides.yaml")
    record = {"config_hash": config_hash, "git_commit": commit, "versions": {"torch": "2"}}
    (path / "provenance.json").write_text(json.dumps(record))
    return path


def test_compare_two_runs(compose_cfg, tmp_path, capsys):
    a_cfg, b_cfg = compose_cfg(), compose_cfg("optimizer.lr=0.1", "logger=none")
    a = fake_run(tmp_path / "a", a_cfg, provenance.config_hash(a_cfg))
    same = fake_run(tmp_path / "same", a_cfg, provenance.config_hash(a_cfg))
    b = fake_run(tmp_path / "b", b_cfg, provenance.config_hash(b_cfg))
    assert provenance.main([str(a), str(same)]) == 0
    assert "same experiment" in capsys.readouterr().out
    assert provenance.main([str(a), str(b)]) == 1
    out = capsys.readouterr().out
    assert "config_hash:" in out and "config optimizer.lr: 0.003 | 0.1" in out
    assert "logger.wandb.mode" in out and "does not change the numbers" in out
    assert provenance.main([str(a), str(tmp_path)]) == 2


def test_resume_argv_replays_the_runs_overrides_into_its_own_directory(tmp_path, compose_cfg):
    run = tmp_path / "runs" / "lr=0.1,model=mlp"  # a directory name Hydra's grammar must not split
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(compose_cfg(), run / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create(["trainer.epochs=3", "logger=none", "seed=5"]), run / ".hydra" / "overrides.yaml")
    args = resume.resume_argv(["trainer.log_every=1", f"resume={str(run)!r}", "logger=wandb"])
    quoted = "'" + str(run.resolve()) + "'"
    assert args == ["trainer.log_every=1", "trainer.epochs=3", "seed=5", f"resume={quoted}",
                    f"hydra.run.dir={quoted}", "hydra.output_subdir=null", "logger=wandb"]
    assert resume.find_override(args, "hydra.run.dir")[1] == str(run.resolve())
    assert resume.resume_argv(["model=mlp"]) == ["model=mlp"]


@pytest.mark.parametrize("args, words", [
    (["resume=/no/such/run"], "is not a directory"),
    (["resume=."], "has no .hydra/config.yaml"),
    (["--multirun", "resume=."], "without --multirun"),
])
def test_resume_argv_refuses_what_is_not_one_run(tmp_path, monkeypatch, args, words):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=words) as info:
        resume.resume_argv(args)
    assert info.value.key == "resume"


def test_launch_routes_preflight_and_preflight_of_a_resume(tmp_path, monkeypatch, compose_cfg):
    import sys

    import app.tools.preflight
    from app.run.launch import launch

    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(compose_cfg(), run / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create(["model.nodes=8", "seed=5"]), run / ".hydra" / "overrides.yaml")
    seen = []
    monkeypatch.setattr(app.tools.preflight, "main", lambda overrides: seen.append(overrides) or 0)
    for argv in (["preflight=true", "seed=3"], ["preflight=true", f"resume={run}", "seed=3"]):
        monkeypatch.setattr(sys, "argv", ["app", *argv])
        with pytest.raises(SystemExit) as info:
            launch()
        assert info.value.code == 0
    assert seen == [["seed=3"], ["model.nodes=8", "seed=3"]]  # the run's overrides, then the new ones
