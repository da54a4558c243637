"""BabyAI with the bot as a stateful expert: demonstrations, evaluation and a DAgger round end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("minigrid")
from minigrid.core.constants import COLOR_TO_IDX, OBJECT_TO_IDX

from bclm import config as cfg
from bclm.collect import collect
from bclm.data.store import TrajectoryStore
from bclm.envs import get_task, load_expert, make_env
from bclm.envs.babyai import OUT_OF_VIEW, named_cells
from bclm.errors import BCLMError
from bclm.trainer.dagger import DaggerRecipe, run_dagger

TASK = "BabyAI-GoToRedBall-v0"


def test_bot_demonstrations_succeed_and_keep_the_mission_text(tmp_path):
    summary = collect(get_task(TASK), None, 6, tmp_path / "data", num_envs=3)
    assert summary["success_rate"] == 1.0
    steps = TrajectoryStore(tmp_path / "data").arrays()
    assert steps.observation["image"].shape[1:] == (49, 3)
    assert set(steps.observation["mission"]) <= {"go to the red ball", "go to a red ball"}


def test_bot_is_stateful_and_recreated_when_it_gives_up():
    bot_class = load_expert("babyai_bot")
    assert isinstance(bot_class, type) and bot_class.stateful

    import gymnasium as gym

    env = gym.make("bclm/BabyAI-GoToRedBall-v0")
    obs, _ = env.reset(seed=3)
    bot = bot_class()
    bot.reset(env)
    first = bot(obs)
    bot.bot.replan = None                  # a bot that breaks on its next call
    bot.observe(first)
    assert 0 <= bot(obs) < 7 and bot.recreated == 1


def _shows_the_target(observation: dict) -> np.ndarray:
    """(steps, 49) whether each view cell shows the object the step's mission names."""
    targets = np.stack([named_cells(m, 1)[0] for m in observation["mission"]])
    return (observation["image"] == targets[:, None]).all(axis=2)


def _first_visits(views: list) -> np.ndarray:
    """Per step, whether its view is seen there for the first time (views compare as hashable keys)."""
    return np.array([views.index(v) == t for t, v in enumerate(views)])


def _recipe(out, *extra: str) -> DaggerRecipe:
    return cfg.build_config(DaggerRecipe, None, [
        "--output-dir", str(out), "--dagger.env", TASK, "--dagger.rounds", "1",
        "--dagger.initial_episodes", "4", "--dagger.episodes_per_round", "2", "--dagger.num_envs", "2",
        "--model.size", "tiny", "--tokenizer.group", "3", "--data.context_length", "140", "--train.max_steps", "3",
        "--loop.progress", "false", "--eval.episodes", "2", "--eval.num_envs", "2", *extra])


def test_dagger_round_with_the_bot_in_lockstep(tmp_path):
    # On heading actions: the learner decodes (heading, action) pairs, and the bot labels both parts.
    report = run_dagger(_recipe(tmp_path / "run", "--dagger.env", "BabyAI-GoToRedBall-Heading-v0",
                                "--dagger.beta", "constant", "--dagger.beta_value", "0.5",
                                "--model.symbol_factors", "true",
                                "--model.word_factors", "{red: [1, 0], ball: [0, 6]}",
                                "--tokenizer.symbol_grid", "[7, 7]", "--tokenizer.value_vocab", "9702",
                                "--dagger.label_repeats", "false"))
    row = report["rounds"][1]
    steps = TrajectoryStore(tmp_path / "run" / "data").arrays(["round-001"])
    used, labeled = steps.columns["expert_used"], steps.columns["labeled"]
    assert 0 < used.mean() < 1                                    # the β coin picked both sides
    for executed, label in zip(steps.action, steps.expert_action):
        np.testing.assert_array_equal(executed[used], label[used])
    labels = steps.expert_action[0]
    in_view = (labels != OUT_OF_VIEW) & labeled    # the bot names the cell showing the mission's object
    assert in_view.any() and _shows_the_target(steps.observation)[in_view, labels[in_view]].all()
    # A learner revisiting a view in its episode is not labeled there again (the bot drove where it was asked).
    views = list(zip(steps.columns["episode"], steps.observation["direction"], map(bytes, steps.observation["image"])))
    np.testing.assert_array_equal(labeled, _first_visits(views) | used)
    assert (~labeled).any() and row["unlabeled_steps"] == int((~labeled).sum())
    assert row["expert_labels"] == report["rounds"][0]["expert_labels"] + int(labeled.sum())
    assert "mistake_rate" in row
    from bclm.policy import Policy

    tok = Policy.from_pretrained(tmp_path / "run" / "round-001").tokenizer
    assert tok.obs_len == 49 + 1 + 16                                                           # a token a cell
    assert tok.config.symbol_grid == (7, 7) and tok.vocab_size > 9702                          # each in its slot
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "run" / "round-001" / "model.safetensors")   # factored cells, saved plain
    assert not any("symbol_factors" in k for k in saved) and "lm_head.weight" in saved


class _TurnsLeft:
    """A learner session that only turns left: after 4 turns it sees its first view again, a loop."""

    def __init__(self, batch: int):
        self.batch_size = batch

    def act(self, observations, new_episode):
        return np.zeros(self.batch_size, np.int64)

    def record_executed(self, actions):
        pass


@pytest.mark.parametrize("skip_repeats", [False, True])
def test_a_looping_learner_is_labeled_once_per_state_when_repeats_are_skipped(skip_repeats):
    import dataclasses

    from bclm.rollout import ExpertActor, run_episodes
    from bclm.rollout.actors import MixtureActor

    task = get_task(TASK)
    task = dataclasses.replace(task, env_kwargs={**task.env_kwargs, "max_episode_steps": 12})
    probe = make_env(task)
    bot = ExpertActor(load_expert("babyai_bot"), probe.observation_space, probe.action_space, on_fault="count")
    actor = MixtureActor(_TurnsLeft(2), bot, 0.0, 0, skip_repeats=skip_repeats)
    episodes = run_episodes(task, actor, 4, num_envs=2, seed=3, expert=actor.labels()).episodes
    for ep in episodes:
        assert len(ep.labeled) == 12 and not ep.expert_used.any()            # the learner drove every step
        views = [(d, bytes(im)) for d, im in zip(ep.observation["direction"], ep.observation["image"])]
        first = _first_visits(views)
        if skip_repeats:         # each view labeled at its first visit only; the rest kept as history
            assert ep.labeled.tolist() == first.tolist() and first.sum() <= 4
        else:
            assert ep.labeled.all() and not all(first)


def test_hg_dagger_with_the_stateful_bot_as_gate(tmp_path):
    # 3 training steps leave the learner wrong often: the bot (one per env, in lockstep) takes over there.
    report = run_dagger(_recipe(tmp_path / "run", "--dagger.intervener", "expert-gated"))
    row = report["rounds"][1]
    steps = TrajectoryStore(tmp_path / "run" / "data").arrays(["round-001"])
    labeled = steps.columns["labeled"]
    assert row["interventions"] == int(labeled.sum()) > 0 and row["beta"] is None
    assert np.isnan(steps.columns["beta"]).all()                 # no β coin in HG-DAgger
    np.testing.assert_array_equal(steps.columns["expert_used"], labeled)
    np.testing.assert_array_equal(steps.action[labeled], steps.expert_action[labeled])


def test_the_stateful_bot_refuses_envs_in_worker_processes(tmp_path):
    with pytest.raises(BCLMError, match=r"stateful.*synchronous.*async_envs"):
        run_dagger(_recipe(tmp_path / "run", "--dagger.async_envs", "true"))


class _FixedPermutation:
    """An rng whose draws make `permute_colours` rename colour c to `perm[c]` in every episode."""

    def __init__(self, perm: np.ndarray):
        self.perm = perm

    def random(self, shape: tuple[int, int]) -> np.ndarray:
        return np.tile(np.argsort(self.perm), (shape[0], 1)).astype(float)


def _rename_world(env, perm: np.ndarray) -> None:
    """Rename the colours of the live env's objects and of its instruction, as a freshly generated world."""
    from minigrid.envs.babyai.core.verifier import Instr, ObjDesc

    from bclm.envs.babyai import COLOURED_OBJECTS, COLOURS

    world = env.unwrapped
    for obj in world.grid.grid:
        if obj is not None and obj.encode()[0] in COLOURED_OBJECTS:
            obj.color = COLOURS[perm[COLOURS.index(obj.color)]]
    parts = [world.instrs]
    while parts:
        part = parts.pop()
        if isinstance(part, ObjDesc) and part.color is not None:
            part.color = COLOURS[perm[COLOURS.index(part.color)]]
        elif isinstance(part, Instr):
            parts.extend(v for v in vars(part).values() if isinstance(v, Instr | ObjDesc))
    world.instrs.reset_verifier(world)
    world.mission = world.instrs.surface(world)


def _wrapper(env):
    from bclm.envs.babyai import BabyAIObservation

    while not isinstance(env, BabyAIObservation):
        env = env.env
    return env


@pytest.mark.parametrize("level", ["GoToLocal", "PutNextLocal"])
def test_renamed_colours_are_the_view_of_a_renamed_world_and_leave_the_bots_actions_unchanged(level):
    from minigrid.utils.baby_ai_bot import BabyAIBot

    from bclm.envs.babyai import permute_colours

    perm = np.array([3, 0, 5, 1, 2, 4])
    renamed_any = False
    for seed in range(4):
        # The levels with the mission's objects as cells, so that those are renamed too.
        envs = [make_env(get_task(f"BabyAI-{level}-Objects-v0")) for _ in range(2)]
        first = [env.reset(seed=seed)[0] for env in envs]
        _rename_world(envs[1], perm)
        obs = [first[0], _wrapper(envs[1]).observation(envs[1].unwrapped.gen_obs())]
        bots, actions, done = [BabyAIBot(env.unwrapped) for env in envs], [None, None], False
        while not done:
            batch = {k: np.asarray([obs[0][k]], dtype=object if k == "mission" else None) for k in obs[0]}
            expected = permute_colours(batch, np.zeros(1, dtype=int), _FixedPermutation(perm))
            assert expected["mission"][0] == obs[1]["mission"]
            for key in ("image", "mission_objects"):
                assert np.array_equal(expected[key][0], obs[1][key])
            renamed_any |= obs[0]["mission"] != obs[1]["mission"]
            actions = [int(bot.replan(a)) for bot, a in zip(bots, actions)]
            assert actions[0] == actions[1]
            steps = [env.step(a) for env, a in zip(envs, actions)]
            obs, done = [s[0] for s in steps], steps[0][2] or steps[0][3]
            assert steps[0][1:4] == steps[1][1:4]          # reward, terminated, truncated alike
        assert steps[0][1] > 0                             # the mission was accomplished in both worlds
    assert renamed_any


def test_mission_objects_are_the_named_cells_and_the_token_before_the_action_is_the_targets_own():
    from bclm.tokenizers import BCTokenizer, TokenizerConfig

    env = make_env(get_task("BabyAI-GoToLocal-Objects-v0"))
    tok = BCTokenizer(env.observation_space, env.action_space, TokenizerConfig(group=3, text_max_tokens=5))
    observations = [env.reset(seed=seed)[0] for seed in range(40)]
    batch = {k: np.stack([o[k] for o in observations]) for k in ("direction", "image", "mission_objects")}
    batch["mission"] = np.array([o["mission"] for o in observations], dtype=object)
    ids = tok.fit(batch, np.zeros(40, dtype=int)).encode_observation(batch)
    assert [c.path for c in tok.obs_codecs][-1] == "mission_objects" and ids.shape == (40, 5 + 1 + 49 + 1)
    in_view = 0
    for obs, row in zip(observations, ids):
        colour, kind = obs["mission"].split()[-2:]
        target = obs["mission_objects"][0]
        assert (OBJECT_TO_IDX[kind], COLOR_TO_IDX[colour], 0) == tuple(target)
        shown = np.flatnonzero((obs["image"] == target).all(axis=1))
        in_view += len(shown) > 0
        # The last observation token (the action marker follows) is the token of every cell showing the target.
        assert set(row[6 + shown]) <= {row[-1]} and row[-1] not in np.delete(row[6:-1], shown)
    assert in_view >= 10

    env = make_env(get_task("BabyAI-PutNextLocal-Objects-v0"))
    obs, _ = env.reset(seed=0)
    assert obs["mission"] == "put the green ball next to the green key"
    np.testing.assert_array_equal(obs["mission_objects"], [[6, 1, 0], [5, 1, 0]])
    np.testing.assert_array_equal(named_cells("go to the red ball", 2), [[0, 0, 0], [6, 0, 0]])


def test_augment_adds_renamed_copies_of_the_training_episodes_with_their_labels(tmp_path):
    from bclm.trainer.config import TrainRecipe
    from bclm.trainer.data import prepare_data

    collect(get_task("BabyAI-GoToLocal-v0"), None, 20, tmp_path / "data", num_envs=4)
    args = ["--dataset", str(tmp_path / "data"), "--tokenizer.group", "3", "--tokenizer.text_max_tokens", "5"]
    plain = prepare_data(cfg.build_config(TrainRecipe, None, args))
    tripled = prepare_data(cfg.build_config(TrainRecipe, None, [*args, "--data.augment", "2"]))
    assert len(tripled.train_set) == 3 * len(plain.train_set) and len(tripled.val_set) == len(plain.val_set)
    original, copy = (tripled.train_set[i] for i in (0, len(plain.train_set)))
    labeled = original["labels"] != -100
    assert labeled.any() and torch.equal(original["labels"], copy["labels"])
    assert not torch.equal(original["input_ids"], copy["input_ids"])     # the same step in a renamed world

    collect(get_task("CartPole-v1"), None, 2, tmp_path / "cartpole")
    with pytest.raises(BCLMError, match=r"data\.augment 2: task 'CartPole-v1' has no symmetry"):
        prepare_data(cfg.build_config(TrainRecipe, None, ["--dataset", str(tmp_path / "cartpole"),
                                                          "--data.augment", "2"]))


def test_heading_names_the_targets_view_cell_and_the_env_executes_only_the_action(tmp_path):
    task = get_task("BabyAI-GoToLocal-Heading-v0")
    summary = collect(task, None, 12, tmp_path / "data", num_envs=3, seed=5)
    assert summary["success_rate"] == 1.0
    steps = TrajectoryStore(tmp_path / "data").arrays()
    headings, actions = steps.action
    shows = _shows_the_target(steps.observation)
    in_view = headings != OUT_OF_VIEW
    # A heading in view is a cell showing the mission's object, and out of view no cell shows it (on these
    # episodes: the bot could go for a nearer copy it remembers); most steps have the target in view.
    assert shows[in_view, headings[in_view]].all() and not shows[~in_view].any()
    assert in_view.mean() > 0.6 and set(actions) <= set(range(7))

    plain, headed = make_env(get_task("BabyAI-GoToLocal-v0")), make_env(task)
    a, b = plain.reset(seed=11)[0], headed.reset(seed=11)[0]
    for action in (1, 2, 2, 0, 2):
        a, b = plain.step(action)[0], headed.step((int(OUT_OF_VIEW), action))[0]
        np.testing.assert_array_equal(a["image"], b["image"])
