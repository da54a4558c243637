"""Meta-World (MT10 / MT50 manipulation tasks) with metaworld's scripted policies as experts.

Importing this module registers ``bclm/MetaWorld-<env_name>`` gymnasium ids (e.g. ``bclm/MetaWorld-reach-v3``;
the trailing ``-v3`` is Meta-World's own env version) for the 50 MT50 env names. metaworld (and MuJoCo) is only
imported when an env or expert is made, so that importing bclm stays cheap and works without the extra.

Why a wrapper rather than metaworld's own ``Meta-World/MT1`` gymnasium id: that env ignores ``reset(seed=...)``
(the task is drawn before the seed is seen, and ``SawyerXYZEnv.reset`` drops it), and its observation space
keeps the goal dimensions pinned to [0, 0] although the goal is observed. Here a seeded reset picks the goal
variation reproducibly, and the observation space is the env's goal-observable one.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import gymnasium as gym
import numpy as np

from bclm.errors import BCLMError

# The benchmarks' env names in metaworld's order (metaworld.env_dict.MT10_V3 / MT50_V3). They are written out
# because building the task table must not import metaworld; tests/test_metaworld.py checks them against it.
MT10 = (
    "reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-open-v3", "drawer-close-v3",
    "button-press-topdown-v3", "peg-insert-side-v3", "window-open-v3", "window-close-v3",
)
MT50 = (
    "assembly-v3", "basketball-v3", "bin-picking-v3", "box-close-v3", "button-press-topdown-v3",
    "button-press-topdown-wall-v3", "button-press-v3", "button-press-wall-v3", "coffee-button-v3",
    "coffee-pull-v3", "coffee-push-v3", "dial-turn-v3", "disassemble-v3", "door-close-v3", "door-lock-v3",
    "door-open-v3", "door-unlock-v3", "hand-insert-v3", "drawer-close-v3", "drawer-open-v3", "faucet-open-v3",
    "faucet-close-v3", "hammer-v3", "handle-press-side-v3", "handle-press-v3", "handle-pull-side-v3",
    "handle-pull-v3", "lever-pull-v3", "pick-place-wall-v3", "pick-out-of-hole-v3", "pick-place-v3",
    "plate-slide-v3", "plate-slide-side-v3", "plate-slide-back-v3", "plate-slide-back-side-v3",
    "peg-insert-side-v3", "peg-unplug-side-v3", "soccer-v3", "stick-push-v3", "stick-pull-v3", "push-v3",
    "push-wall-v3", "push-back-v3", "reach-v3", "reach-wall-v3", "shelf-place-v3", "sweep-into-v3", "sweep-v3",
    "window-open-v3", "window-close-v3",
)

# SawyerXYZEnv.max_path_length: metaworld raises if an episode is stepped past it, so it is also the limit here.
MAX_EPISODE_STEPS = 500
# Seed of the fixed set of 50 goal variations per env, as in metaworld's README (`Meta-World/MT1`, seed=42).
TASK_SET_SEED = 42


def gym_id(env_name: str) -> str:
    return f"bclm/MetaWorld-{env_name}"


def _metaworld() -> Any:
    try:
        import metaworld
    except ImportError:
        raise BCLMError("Meta-World needs metaworld: pip install 'bclm[envs]' (or pip install metaworld)") from None
    return metaworld


def _check_name(env_name: str, subject: str) -> None:
    if env_name not in MT50:
        raise BCLMError(f"{subject} is unknown: expected a Meta-World MT50 env name, one of {', '.join(MT50)}")


@functools.cache
def benchmark_tasks(env_name: str, seed: int = TASK_SET_SEED) -> tuple[Any, ...]:
    """The 50 goal variations of ``MT1(env_name, seed)``: metaworld's standard per-env task set.

    Cached because making them resets a fresh env 50 times (about 0.7 s); every env of a vector env shares them.
    ``metaworld.MT1`` seeds and restores numpy's global RNG itself, so the set is the same in every process.
    """
    _check_name(env_name, f"Meta-World env {env_name!r}")
    return tuple(_metaworld().MT1(env_name, seed=seed).train_tasks)


class SeededTaskSelect(gym.Wrapper):
    """At each reset, sets one of the env's benchmark tasks (goal and object placement) drawn from its own RNG.

    Metaworld's ``RandomTaskSelectWrapper`` draws uniformly from the same task list, but from the env's RNG and
    before it could see the reset's seed. Here ``reset(seed=s)`` reseeds the draw first, so seed s always gives
    the same variation, and the unseeded resets that follow (vector-env autoresets) continue that stream.
    """

    def __init__(self, env: gym.Env, tasks: tuple[Any, ...]):
        super().__init__(env)
        self.tasks = tasks
        self.task_rng = np.random.default_rng()
        self.task_index = 0
        self.unwrapped.set_task(tasks[0])
        # set_task switched the env to goal-observable and recomputed its space; env.observation_space, fixed
        # at construction, still pins the three goal dimensions to [0, 0].
        self.observation_space = self.unwrapped.sawyer_observation_space

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        if seed is not None:
            self.task_rng = np.random.default_rng(seed)
        self.task_index = int(self.task_rng.integers(len(self.tasks)))
        self.unwrapped.set_task(self.tasks[self.task_index])
        return self.env.reset(seed=seed, options=options)


def make_metaworld(env_name: str, terminate_on_success: bool = True, task_set_seed: int = TASK_SET_SEED,
                   **kwargs: Any) -> gym.Env:
    """One Meta-World env (39-dim goal-observable state, 4-dim action in [-1, 1]) over its MT1 task set.

    With ``terminate_on_success`` the episode terminates at the first step whose ``info["success"]`` is set,
    so demonstrations and evaluations do not idle for hundreds of steps after solving the task. ``kwargs``
    go to the metaworld env class (render_mode, camera_name, width, height, reward_function_version).
    """
    metaworld = _metaworld()
    _check_name(env_name, f"Meta-World env {env_name!r}")
    env = metaworld.env_dict.ALL_V3_ENVIRONMENTS[env_name](**kwargs)
    env = SeededTaskSelect(env, benchmark_tasks(env_name, task_set_seed))
    env = metaworld.wrappers.AutoTerminateOnSuccessWrapper(env)
    env.toggle_terminate_on_success(terminate_on_success)
    return env


class ScriptedExpert:
    """Metaworld's scripted policy for one env as a stateless bclm expert: float32 actions clipped to [-1, 1]."""

    def __init__(self, env_name: str):
        _check_name(env_name, f"expert 'metaworld/{env_name}' (Meta-World env {env_name!r})")
        _metaworld()
        from metaworld.policies import ENV_POLICY_MAP

        self.env_name = env_name
        self.policy = ENV_POLICY_MAP[env_name]()
        # The policies' proportional controllers warn whenever a gain saturates the action, i.e. on most steps;
        # the env clips to [-1, 1] anyway, and so does __call__.
        warnings.filterwarnings("ignore", message=r"Constant\(s\) may be too high", category=UserWarning)

    def __call__(self, obs: Any) -> np.ndarray:
        action = self.policy.get_action(np.asarray(obs, dtype=np.float64))
        return np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0)

    def __repr__(self) -> str:
        return f"ScriptedExpert({self.env_name!r})"


for _name in MT50:
    if gym_id(_name) not in gym.registry:
        gym.register(gym_id(_name), entry_point="bclm.envs.metaworld:make_metaworld",
                     max_episode_steps=MAX_EPISODE_STEPS, kwargs={"env_name": _name})
