"""The rollout layer that collection, evaluation, DAgger and the sweep stand on: the vector-env loop
(`loop`), who acts (`expert`, `actors`, `noise`, with `gate` for budgeted DAgger), the episodes it records and
their metrics (`episodes`, `metrics`), videos of the first episodes (`video`), and rollouts written to a store
(`shards`)."""

from bclm.rollout.actors import GatedActor, InterventionActor, MixtureActor, load_intervener
from bclm.rollout.episodes import RolloutResult, merge_results
from bclm.rollout.expert import Actor, ExpertActor
from bclm.rollout.gate import Gate
from bclm.rollout.loop import run_episodes
from bclm.rollout.metrics import action_mismatch, cumulative_mistakes, summarize
from bclm.rollout.noise import NO_NOISE, FittedNoiseActor, Noise, NoisyExpertActor

__all__ = ["NO_NOISE", "Actor", "ExpertActor", "FittedNoiseActor", "Gate", "GatedActor", "InterventionActor",
           "MixtureActor", "Noise", "NoisyExpertActor", "RolloutResult", "action_mismatch", "cumulative_mistakes",
           "load_intervener", "merge_results", "run_episodes", "summarize"]
