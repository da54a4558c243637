"""Where a BabyAI policy disagrees with the bot: agreement on the bot's own states, by whether the mission's
object is in view and by the bot's action.

The bot drives fresh episodes (seeds 50000+i, unseen in training); at every step each policy is asked for
its action on the bot's state, with a fresh one-step context (the GoToLocal recipe's layout). Success rates
say that a policy fails; this table says on which decisions (a turn towards a visible target, exploring
while it is out of view, ...).

    python benchmarks/babyai_agreement.py runs/gtl/bc/labels-20000/seed-0 runs/gtl/bc/labels-20000/seed-2
"""

from __future__ import annotations

import argparse
import collections

import gymnasium as gym
import numpy as np

import bclm.envs.babyai  # noqa: F401  (registers the bclm/BabyAI-* envs)
from bclm.envs.babyai import BabyAIBotExpert
from bclm.policy import Policy

ACTIONS = {0: "left", 1: "right", 2: "forward", 3: "pickup", 4: "drop", 5: "toggle", 6: "done"}


def target_in_view(env: gym.Env, image: np.ndarray) -> bool:
    """Whether a cell of the (49, 3) view holds an object that fits the mission's description."""
    from minigrid.core.constants import COLOR_TO_IDX, OBJECT_TO_IDX

    desc = env.unwrapped.instrs.desc
    fits = image[:, 0] == OBJECT_TO_IDX[desc.type]
    if desc.color is not None:
        fits &= image[:, 1] == COLOR_TO_IDX[desc.color]
    return bool(fits.any())


def agreement(policies: list[Policy], level: str, episodes: int) -> list[dict[str, list[int]]]:
    """Per policy, {category: [agreeing steps, steps]} over `episodes` bot-driven episodes."""
    env = gym.make(f"bclm/{level}")
    counts = [collections.defaultdict(lambda: [0, 0]) for _ in policies]
    for ep in range(episodes):
        obs, _ = env.reset(seed=50000 + ep)
        bot = BabyAIBotExpert()
        bot.reset(env)
        done = False
        while not done:
            action = bot(obs)
            view = "in view" if target_in_view(env, obs["image"]) else "out of view"
            batch = {"direction": np.asarray([obs["direction"]]), "image": obs["image"][None],
                     "mission": [obs["mission"]]}
            for policy, count in zip(policies, counts):
                agrees = int(np.asarray(policy.act(batch, np.ones(1, dtype=bool)))[0]) == action
                for key in ("all", view, f"{view}, bot: {ACTIONS[action]}"):
                    count[key][0] += agrees
                    count[key][1] += 1
            bot.observe(action)
            obs, _, terminated, truncated, _ = env.step(action)
            done = terminated or truncated
    return counts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("policies", nargs="+", help="policy directories")
    p.add_argument("--level", default="BabyAI-GoToLocal-v0")
    p.add_argument("--episodes", type=int, default=150)
    args = p.parse_args()
    policies = [Policy.from_pretrained(path, device="cpu") for path in args.policies]
    counts = agreement(policies, args.level, args.episodes)
    keys = sorted(counts[0], key=lambda k: (k != "all", k))
    print(f"{args.level}, {args.episodes} bot-driven episodes (seeds 50000+)\n")
    print("| bot's state | steps | " + " | ".join(args.policies) + " |")
    print("|---|---:|" + "---:|" * len(policies))
    for key in keys:
        cells = " | ".join(f"{c[key][0] / c[key][1]:.1%}" for c in counts)
        print(f"| {key} | {counts[0][key][1]} | {cells} |")


if __name__ == "__main__":
    main()
