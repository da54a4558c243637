"""Environments, builtin tasks and scripted experts."""

from bclm.envs.experts import (
    BUILTIN_EXPERTS,
    acrobot_energy,
    cartpole_lqr,
    load_expert,
    lunarlander_continuous_heuristic,
    lunarlander_heuristic,
    mountaincar_continuous_energy,
    mountaincar_energy,
    pendulum_swingup,
)
from bclm.envs.tasks import (
    BUILTIN_TASKS,
    SUCCESS_KINDS,
    TaskSpec,
    episode_success,
    get_task,
    make_env,
    make_vector_env,
)

__all__ = [
    "BUILTIN_EXPERTS",
    "BUILTIN_TASKS",
    "SUCCESS_KINDS",
    "TaskSpec",
    "acrobot_energy",
    "cartpole_lqr",
    "episode_success",
    "get_task",
    "load_expert",
    "lunarlander_continuous_heuristic",
    "lunarlander_heuristic",
    "make_env",
    "make_vector_env",
    "mountaincar_continuous_energy",
    "mountaincar_energy",
    "pendulum_swingup",
]
