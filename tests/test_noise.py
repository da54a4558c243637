"""DART: demonstrations whose executed actions are perturbed while the labels stay the expert's clean ones."""

from __future__ import annotations

import numpy as np
import pytest

from bclm import config as cfg
from bclm.collect import collect
from bclm.data.store import TrajectoryStore
from bclm.envs import get_task, load_expert
from bclm.errors import BCLMError
from bclm.rollout.noise import Noise
from bclm.sweep import SweepRecipe, run_sweep

ENV = "tests.custom_env:CustomTarget-v0"
EXPERT = "tests.custom_env:expert"


def _steps(path):
    data = TrajectoryStore(path).load()[:]
    return {k: np.asarray(data[k]) for k in ("observation", "action", "expert_action", "expert_used", "source")}


@pytest.mark.parametrize("text, message", [("eps:1.5", "0 <= P <= 1"), ("gauss:-1", "S >= 0"), ("eps", "eps:P"),
                                           ("uniform:0.1", "gauss:S"), ("gauss:nan", "gauss:S")])
def test_a_bad_noise_is_refused_naming_it(text, message):
    with pytest.raises(BCLMError, match=message) as e:
        Noise.parse(text)
    assert repr(text) in str(e.value)


def test_random_actions_are_executed_and_the_clean_expert_actions_are_the_labels(tmp_path):
    collect(get_task(ENV), EXPERT, 6, tmp_path / "d", seed=3, num_envs=3, noise=Noise.parse("eps:0.3"))
    steps = _steps(tmp_path / "d")
    expert = load_expert(EXPERT)
    # Every label is what the expert says in the state the perturbed run reached.
    assert [expert(o) for o in steps["observation"]] == steps["expert_action"].tolist()
    perturbed = ~steps["expert_used"]
    assert 0.2 < perturbed.mean() < 0.4                      # the coin's rate
    assert (steps["action"] != steps["expert_action"]).any()
    assert (steps["action"][~perturbed] == steps["expert_action"][~perturbed]).all()
    assert set(steps["source"]) == {"dart eps:0.3"}
    assert TrajectoryStore(tmp_path / "d").meta["collect"]["noise"] == "eps:0.3"        # provenance
    collect(get_task(ENV), EXPERT, 6, tmp_path / "again", seed=3, num_envs=3, noise=Noise.parse("eps:0.3"))
    again = _steps(tmp_path / "again")
    for key in ("observation", "action", "expert_action"):        # seeded: the same data again
        np.testing.assert_array_equal(again[key], steps[key])


def test_gaussian_noise_stays_in_the_bounds_and_keeps_the_clean_label(tmp_path):
    collect(get_task("Pendulum-v1"), None, 2, tmp_path / "d", seed=0, num_envs=2, noise=Noise.parse("gauss:0.2"))
    steps = _steps(tmp_path / "d")
    executed, label = steps["action"].ravel(), steps["expert_action"].ravel()
    assert np.abs(executed).max() <= 2.0 and not steps["expert_used"].any()
    noise = executed - label
    inside = np.abs(label) < 1.0                      # away from the clipping bounds: unclipped Gaussian noise
    assert 0.3 < noise[inside].std() < 0.5            # 0.2 x half the range of [-2, 2]
    expert = load_expert(get_task("Pendulum-v1").expert)
    np.testing.assert_allclose([expert(o) for o in steps["observation"][:20]], steps["expert_action"][:20],
                               rtol=1e-5)


def test_gaussian_noise_on_discrete_actions_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(BCLMError, match="Gaussian noise needs continuous"):
        collect(get_task(ENV), EXPERT, 2, tmp_path / "d", noise=Noise.parse("gauss:0.1"))
    assert not (tmp_path / "d").exists()


def test_sweep_compares_bc_with_dart_at_equal_labels(tmp_path):
    recipe = cfg.build_config(SweepRecipe, None, [
        "--output-dir", str(tmp_path), "--dagger.env", ENV, "--dagger.expert", EXPERT, "--dagger.noise", "eps:0.2",
        "--sweep.methods", "bc,dart", "--sweep.budgets", "50,100", "--sweep.seeds", "1", "--sweep.jobs", "1",
        "--model.size", "tiny", "--train.max_steps", "10", "--train.batch_size", "16", "--loop.progress", "false",
        "--eval.episodes", "2", "--eval.num_envs", "2"])
    report = run_sweep(recipe)
    assert set(report["summary"]) == {"bc", "dart"}
    assert [r["expert_labels"]["mean"] for r in report["summary"]["dart"]] == [50, 100]   # labels counted alike
    dart = _steps(tmp_path / "data" / "dart-seed-0")
    assert (~dart["expert_used"]).any() and _steps(tmp_path / "data" / "expert-seed-0")["expert_used"].all()
    with pytest.raises(BCLMError, match="needs a fixed noise level"):
        run_sweep(cfg.build_config(SweepRecipe, None, ["--output-dir", str(tmp_path / "x"), "--dagger.env", ENV,
                                                       "--dagger.expert", EXPERT, "--sweep.methods", "dart"]))


def test_dagger_round_0_demonstrations_take_the_noise(tmp_path):
    from bclm.trainer.dagger import DaggerRecipe, run_dagger

    run_dagger(cfg.build_config(DaggerRecipe, None, [
        "--output-dir", str(tmp_path), "--dagger.env", ENV, "--dagger.expert", EXPERT, "--dagger.noise", "eps:0.3",
        "--dagger.rounds", "0", "--dagger.initial_episodes", "2", "--model.size", "tiny", "--train.max_steps", "5",
        "--loop.progress", "false", "--eval.episodes", "1"]))
    steps = _steps(tmp_path / "data")
    assert set(steps["source"]) == {"dart eps:0.3"} and (~steps["expert_used"]).any()
    with pytest.raises(BCLMError, match=r"dagger\.noise 'eps:-1'"):
        cfg.build_config(DaggerRecipe, None, ["--dagger.noise", "eps:-1"])


def test_the_cli_refuses_a_bad_noise_in_one_line(tmp_path, capsys):
    from bclm.cli import main

    assert main(["collect", "--env", ENV, "--expert", EXPERT, "--episodes", "2", "--output", str(tmp_path / "d"),
                 "--noise", "gauss:0.1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Gaussian noise needs continuous (Box) actions" in err[0]
    assert not (tmp_path / "d").exists()


class ConstantLearner:
    """A learner session that always proposes the same action; told what was executed, as sessions are."""

    def __init__(self, action, batch: int):
        self.action, self.batch, self.executed = action, batch, []

    def act(self, observations, new_episode):
        return np.stack([np.asarray(self.action)] * self.batch)

    def record_executed(self, actions):
        self.executed.append(actions)


@pytest.mark.parametrize(("env", "learner", "kind"), [(ENV, 1, "eps"),
                                                     ("Pendulum-v1", np.zeros(1, np.float32), "gauss")])
def test_a_fitted_level_is_the_learners_error_on_the_noisy_experts_states(env, learner, kind):
    from bclm.envs import make_env
    from bclm.rollout import ExpertActor, run_episodes
    from bclm.rollout.noise import FittedNoiseActor

    task = get_task(env)
    ref = EXPERT if env == ENV else task.expert
    probe = make_env(task)
    expert = ExpertActor(load_expert(ref), probe.observation_space, probe.action_space, ref)
    session = ConstantLearner(learner, 2)
    actor = FittedNoiseActor(expert, Noise.parse("fit"), 0, [0, 1], session)
    assert actor.noise.kind == kind and actor.level == 0.0            # 'fit' takes the kind of the actions
    result = run_episodes(task, actor, 2, num_envs=2, seed=5, expert=actor.labels())
    labels = np.concatenate([next(iter(ep.expert_action.values())) for ep in result.episodes]).ravel()
    # eps: the share of the states where the learner's action is not the expert's; gauss: the RMS error in
    # half ranges (Pendulum's torque is in [-2, 2]).
    want = float((labels != learner).mean()) if kind == "eps" else float(np.sqrt(np.mean((labels / 2.0) ** 2)))
    assert actor.level == pytest.approx(want, rel=1e-6) and actor.level > 0.05
    assert len(session.executed) >= len(labels) // 2                 # told every executed action


def test_dart_rounds_with_a_fitted_level_start_clean_and_record_the_level(tmp_path):
    from bclm.trainer.dagger import DaggerRecipe, run_dagger

    report = run_dagger(cfg.build_config(DaggerRecipe, None, [
        "--output-dir", str(tmp_path), "--dagger.env", ENV, "--dagger.expert", EXPERT, "--dagger.noise", "eps:fit",
        "--dagger.rounds", "1", "--dagger.initial_episodes", "2", "--dagger.episodes_per_round", "2",
        "--model.size", "tiny", "--train.max_steps", "5", "--loop.progress", "false", "--eval.episodes", "1"]))
    store = TrajectoryStore(tmp_path / "data")
    round0, round1 = (_steps_of(store, name) for name in ("round-000", "round-001"))
    assert set(round0["source"]) == {"expert"} and round0["expert_used"].all()          # clean: no learner yet
    (source,) = set(round1["source"])
    level = report["rounds"][1]["noise_level"]
    assert source == f"dart eps:fit {level:.4g}" and 0 < level <= 1
    assert report["rounds"][1]["beta"] is None
    expert = load_expert(EXPERT)
    assert [expert(o) for o in round1["observation"]] == round1["expert_action"].tolist()    # clean labels
    assert report["rounds"][1]["expert_labels"] == len(round0["source"]) + len(round1["source"])
    with pytest.raises(BCLMError, match="fit makes the rounds"):
        cfg.build_config(DaggerRecipe, None, ["--dagger.noise", "fit", "--dagger.gate", "query"])


def _steps_of(store, shard):
    data = store.load([shard])[:]
    return {k: np.asarray(data[k]) for k in ("observation", "action", "expert_action", "expert_used", "source")}


def test_collect_refuses_a_fitted_level_it_cannot_fit(tmp_path):
    with pytest.raises(BCLMError, match="a fitted level needs a learner"):
        collect(get_task(ENV), EXPERT, 2, tmp_path / "d", noise=Noise.parse("eps:fit"))
    assert not (tmp_path / "d").exists()
