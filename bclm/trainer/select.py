"""After training, keep per task the better of the whole policy and the least-squares linear law alone.

The regressed action values are a linear law of the state plus what the transformer adds to it
(`bclm.state`). Where the expert's law is near linear, the law alone can succeed more often than the law plus
the transformer: on Meta-World reach from the same episodes, 97% against 70% at 600 labels, and one seed's
whole policy failed every episode while its law alone succeeded in all of them, though its validation loss
was the lowest of five. The loss on the expert's states cannot see what the transformer's share does off them;
rollouts can. So each task's policy is rolled out on `eval.select_episodes` episodes of its env (as many as
the evaluation's by default) seeded from `eval.select_seed`, apart from the evaluation's: as trained, and, where
that missed some, as the ridge least-squares law of its training data alone (the trunk's share gated off, the
law's intercept added). The law is kept only where it succeeds strictly more often; the choice is saved with
the state projector and reported. A warm start trains the whole policy again (`StateProjector.use_trunk`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from bclm.envs import get_task
from bclm.eval.evaluate import EvalConfig, evaluate
from bclm.policy import Policy
from bclm.state import StateProjector, least_squares_law, state_of
from bclm.trainer.data import Prepared


def select_laws(policy: Policy, data: Prepared, config: EvalConfig, env: str = "") -> dict[str, dict[str, Any]]:
    """Per task with regressed actions, {"policy": success, "law": success, "kept": "policy" | "law"}; the
    policy's projector is left with each choice. `env`: the single task's env, if not its dataset's."""
    state = state_of(policy.model)
    episodes = config.selection_episodes
    if state is None or state.read_out is None or episodes < 1:
        return {}
    trial = dataclasses.replace(config, episodes=episodes, seed=config.select_seed, video=0,
                                num_envs=min(config.num_envs, episodes))
    choices = {}
    for task in data.tasks:
        tok = data.tokenizers[task.name]
        if not tok.regression or task.train is None:
            continue
        acting = policy.for_task(task.name) if len(data.tasks) > 1 else policy
        spec = get_task(data.env_of(task.name, env))
        whole = evaluate(acting, spec, trial)["success_rate"]
        if whole >= 1.0:                    # the law cannot do strictly better
            choices[task.name] = {"policy": whole, "law": None, "kept": "policy"}
            continue
        index = tok.tasks.index(task.name)
        trained = state.read_out[index].detach().clone()
        weights, intercept = least_squares_law(state, tok, task.train.tokens)
        _set_law(state, index, torch.as_tensor(weights), torch.as_tensor(intercept), gate=0.0)
        law = evaluate(acting, spec, trial)["success_rate"]
        if law <= whole:
            _set_law(state, index, trained, torch.zeros_like(state.law_bias[index]), gate=1.0)
        choices[task.name] = {"policy": whole, "law": law, "kept": "law" if law > whole else "policy"}
    return choices


def _set_law(state: StateProjector, index: int, weights: torch.Tensor, intercept: torch.Tensor, gate: float) -> None:
    with torch.no_grad():
        state.read_out[index] = weights.to(state.read_out.dtype)
        state.law_bias[index] = intercept.to(state.law_bias.dtype)
        state.trunk_gate[index] = gate
    state.refresh()
