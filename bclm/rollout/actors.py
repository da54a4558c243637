"""Who acts and who labels in a DAgger round: the β-mixture of learner and expert, the learner with an
intervener who takes over (HG-DAgger), or the learner gated by its own uncertainty. All tell the learner's
session what was executed and serve the round's labels to `run_episodes` without a second expert call."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from gymnasium.vector.utils import batch_space, concatenate, create_empty_array, iterate

from bclm.envs import load_expert
from bclm.rollout.expert import ExpertActor, ExpertLabeledActor, LastLabels
from bclm.rollout.gate import Gate
from bclm.rollout.metrics import action_mismatch
from bclm.tokenizers import assemble, leaf_arrays

if TYPE_CHECKING:           # the policy (torch, transformers) is loaded by whoever builds the session
    from bclm.policy import ActSession


class MixtureActor(ExpertLabeledActor):
    """Per step and env, a β-coin picks the expert's action, else the learner's; the expert labels every
    state either way, or, with `skip_repeats`, every state not already labeled in that env's episode (where
    it drives it is asked all the same). The learner's session is told what was executed, so its context
    stays true."""

    def __init__(self, session: ActSession, expert: ExpertActor, beta: float, seed: int,
                 env_ids: Sequence[int] | None = None, skip_repeats: bool = False):
        self.session = session
        self.expert = expert
        self.beta = beta
        self.repeats = RepeatFilter(expert.observation_space) if skip_repeats else None
        # A coin per env, seeded by the env's index: the same draws whichever process steps that env.
        ids = range(session.batch_size) if env_ids is None else env_ids
        self.rngs = [np.random.default_rng([seed, i]) for i in ids]
        self.last_expert: Any = None
        self.last_expert_used: np.ndarray | None = None
        self.last_labeled: np.ndarray | None = None

    def act(self, observations: Any, new_episode: np.ndarray) -> Any:
        learner = self.session.act(observations, new_episode)
        coins = np.array([rng.random() for rng in self.rngs])
        ask = None if self.repeats is None else (coins < self.beta) | self.repeats.fresh(observations, new_episode)
        self.last_expert = self.expert.act(observations, new_episode, rows=ask)
        self.last_labeled = self.expert.last_labeled
        if self.repeats is not None:
            self.repeats.remember(self.last_labeled)
        # Where the expert faulted there is nothing to execute from it: the learner acts.
        use = (coins < self.beta) & self.last_labeled
        self.last_expert_used = use
        executed = _choose(self.expert.action_space, use, self.last_expert, learner)
        self.session.record_executed(executed)
        return executed


class RepeatFilter:
    """Per env, the observations labeled so far in its current episode. A learner caught in a loop (a
    deterministic policy in a deterministic env, as on BabyAI) revisits the same states until the episode is
    cut; asking a deterministic expert again buys the same label, and in DAgger's GoToLocal rounds 60% of
    the labels were such repeats, so they are left unlabeled (history with no loss) and cost nothing."""

    def __init__(self, observation_space: Any):
        self.space = observation_space
        self.seen: list[set[bytes]] = []
        self.keys: list[bytes] = []

    def fresh(self, observations: Any, new_episode: np.ndarray) -> np.ndarray:
        """(B,) bool: the envs whose observation has not been labeled in their episode."""
        leaves = list(leaf_arrays(self.space, observations).values())
        self.keys = [b"".join(np.asarray(leaf[i]).tobytes() for leaf in leaves) for i in range(len(leaves[0]))]
        if not self.seen:
            self.seen = [set() for _ in self.keys]
        for i in np.flatnonzero(new_episode):
            self.seen[i].clear()
        return np.array([key not in seen for key, seen in zip(self.keys, self.seen)])

    def remember(self, labeled: np.ndarray) -> None:
        """Marks the last observations labeled where the expert gave a label (a fault may be asked again)."""
        for i in np.flatnonzero(labeled):
            self.seen[i].add(self.keys[i])


class GatedActor(ExpertLabeledActor):
    """Budgeted DAgger: the learner acts and the `Gate` reads its uncertainty; the expert is asked only where
    the gate opens. In 'query' mode it labels those states and the learner's action is executed anyway; in
    'takeover' mode its action is executed there too. Unasked steps stay in the data unlabeled (history with
    no loss), so a round costs the budget's share of its steps in labels."""

    def __init__(self, session: ActSession, expert: ExpertActor, gate: Gate):
        self.session = session
        self.expert = expert
        self.gate = gate
        session.track_uncertainty = True
        self.last_expert: Any = None
        self.last_expert_used: np.ndarray | None = None
        self.last_labeled: np.ndarray | None = None

    def act(self, observations: Any, new_episode: np.ndarray) -> Any:
        learner = self.session.act(observations, new_episode)
        unsure = self.gate.uncertainty(self.session.last_entropy, self.session.last_margin)
        ask = self.gate.decide(unsure, new_episode)
        self.last_expert = self.expert.act(observations, new_episode, rows=ask)
        self.last_labeled = self.expert.last_labeled
        drive = self.last_labeled if self.gate.mode == "takeover" else np.zeros_like(self.last_labeled)
        self.last_expert_used = drive
        executed = _choose(self.expert.action_space, drive, self.last_expert, learner)
        self.session.record_executed(executed)
        return executed


class InterventionActor:
    """HG-DAgger: the learner acts; an intervener watching it takes over (returns an action) where it judges
    the learner wrong. Only those steps are labeled; the others stay in the data as history.

    The intervener is a per-observation callable `(obs, learner_action) -> action | None` (a human, a user's
    rule), or an `ExpertActor` that takes over wherever its label differs from the learner's action
    ('expert-gated'); the latter is batched and may be stateful (the BabyAI bot), so it is attached to the
    envs and told every executed action like any expert."""

    def __init__(self, session: ActSession, intervener: Callable[[Any, Any], Any] | ExpertActor,
                 observation_space: Any, action_space: Any):
        self.session = session
        self.intervener = intervener
        self.observation_space = observation_space
        self.action_space = action_space
        self.last_expert: Any = None
        self.last_expert_used: np.ndarray | None = None
        self.last_labeled: np.ndarray | None = None

    def act(self, observations: Any, new_episode: np.ndarray) -> Any:
        learner = self.session.act(observations, new_episode)
        if isinstance(self.intervener, ExpertActor):
            label = self.intervener.act(observations, new_episode)
            differ = action_mismatch(self.action_space, learner, label, tolerance=0.0)    # exact disagreement
            self.last_labeled = differ & self.intervener.last_labeled
            self.last_expert = _choose(self.action_space, self.last_labeled, label, learner)
        else:
            self.last_expert = self._ask(observations, learner)
        self.last_expert_used = self.last_labeled
        self.session.record_executed(self.last_expert)
        return self.last_expert

    def _ask(self, observations: Any, learner: Any) -> Any:
        batch = self.session.batch_size
        obs_items = iterate(batch_space(self.observation_space, batch), observations)
        act_items = list(iterate(batch_space(self.action_space, batch), learner))
        taken = [self.intervener(o, a) for o, a in zip(obs_items, act_items)]
        self.last_labeled = np.array([t is not None for t in taken])
        executed = [a if t is None else t for a, t in zip(act_items, taken)]
        return concatenate(self.action_space, executed, create_empty_array(self.action_space, batch))

    def labels(self) -> LastLabels:
        return LastLabels(self)

    def attach(self, vector_env: Any) -> None:
        if isinstance(self.intervener, ExpertActor):
            self.intervener.attach(vector_env)

    def observe(self, executed: Any) -> None:
        if isinstance(self.intervener, ExpertActor):
            self.intervener.observe(executed)


def _choose(space: Any, use: np.ndarray, expert: Any, learner: Any) -> Any:
    """Per env row, the expert's action where `use`, else the learner's."""
    chosen = {path: np.where(use.reshape((-1,) + (1,) * (x.ndim - 1)), e, x)
              for (path, x), e in zip(leaf_arrays(space, learner).items(), leaf_arrays(space, expert).values())}
    return assemble(space, chosen)


def load_intervener(ref: str, expert_ref: str, observation_space: Any,
                    action_space: Any) -> Callable[[Any, Any], Any] | ExpertActor:
    """'expert-gated' (scripted: the expert takes over where it disagrees), 'human', or 'module:callable'."""
    if ref == "expert-gated":
        # A fault leaves the learner in control of that step (counted, never fatal), as in β-mixture rounds.
        return ExpertActor(load_expert(expert_ref), observation_space, action_space, expert_ref, on_fault="count")
    if ref == "human":
        from bclm.envs.human import TerminalIntervener

        intervener = TerminalIntervener()
        intervener.bind(observation_space, action_space)
        return intervener
    return load_expert(ref)            # same import-path rules and errors as experts
