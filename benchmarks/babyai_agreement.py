"""Where a BabyAI policy disagrees with the bot: agreement on the bot's own states, by whether the mission's
object is in view and by the bot's action.

The bot drives fresh episodes (seeds 50000+i, unseen in training); at every step each policy is asked for
its action on the bot's state, with a fresh one-step context (the GoToLocal recipe's layout). Success rates
say that a policy fails; this table says on which decisions (a turn towards a visible target, exploring
while it is out of view, ...).

"mission swapped" is whether a policy reads the mission at all: on steps where the target and another
object are in view, the share of steps whose action changes when the mission names that other object
instead (a policy blind to the mission: 0%; the bot would head elsewhere on most of them). Policies of
`-Heading` tasks are judged on their action; their "heading" row is the share of the bot's steps, with what
it heads for in view, where the policy names the same view cell.

    python benchmarks/babyai_agreement.py runs/gtl/bc/labels-20000/seed-0 runs/gtl/bc/labels-20000/seed-2
"""

from __future__ import annotations

import argparse
import collections

import gymnasium as gym
import numpy as np

import bclm.envs.babyai  # noqa: F401  (registers the bclm/BabyAI-* envs)
from bclm.envs.babyai import COLOURED_OBJECTS, OUT_OF_VIEW, BabyAIBotExpert, named_cells, view_cell
from bclm.policy import Policy

AGENT_CELL = view_cell(3, 6)                   # the agent's own cell: bottom row, middle column
ACTIONS = {0: "left", 1: "right", 2: "forward", 3: "pickup", 4: "drop", 5: "toggle", 6: "done"}


def target_in_view(env: gym.Env, image: np.ndarray) -> bool:
    """Whether a cell of the (49, 3) view holds an object that fits the mission's description."""
    from minigrid.core.constants import COLOR_TO_IDX, OBJECT_TO_IDX

    desc = env.unwrapped.instrs.desc
    fits = image[:, 0] == OBJECT_TO_IDX[desc.type]
    if desc.color is not None:
        fits &= image[:, 1] == COLOR_TO_IDX[desc.color]
    return bool(fits.any())


def other_mission(env: gym.Env, image: np.ndarray) -> str | None:
    """'go to the <colour> <type>' for an object in view that the mission does not describe, if any."""
    from minigrid.core.constants import IDX_TO_COLOR, IDX_TO_OBJECT

    desc = env.unwrapped.instrs.desc
    for cell, (kind, colour, _) in enumerate(image):
        if cell == AGENT_CELL:                 # what the agent carries is shown there, not in the room
            continue
        name = (IDX_TO_OBJECT[int(kind)], IDX_TO_COLOR[int(colour)])
        if int(kind) in COLOURED_OBJECTS and name != (desc.type, desc.color):
            return f"go to the {name[1]} {name[0]}"
    return None


def _act(policy: Policy, obs: dict, mission: str) -> tuple[int | None, int]:
    """The policy's heading (None but for -Heading policies) and action on one observation with this mission
    (and its named cells, for -Objects policies)."""
    batch = {"direction": np.asarray([obs["direction"]]), "image": obs["image"][None], "mission": [mission]}
    if "mission_objects" in policy.tokenizer.observation_space.spaces:
        batch["mission_objects"] = named_cells(mission, 1)[None]
    out = policy.act(batch, np.ones(1, dtype=bool))
    if isinstance(out, tuple):
        return int(out[0][0]), int(out[1][0])
    return None, int(np.asarray(out)[0])


def agreement(policies: list[Policy], level: str, episodes: int) -> list[dict[str, list[int]]]:
    """Per policy, {category: [agreeing steps, steps]} over `episodes` bot-driven episodes; "mission
    swapped": [steps whose action changes with another visible object's mission, steps with one]."""
    env = gym.make(f"bclm/{level}")
    counts = [collections.defaultdict(lambda: [0, 0]) for _ in policies]
    for ep in range(episodes):
        obs, _ = env.reset(seed=50000 + ep)
        bot = BabyAIBotExpert()
        bot.reset(env)
        done = False
        while not done:
            action = bot(obs)
            heading = bot.heading()
            view = "in view" if target_in_view(env, obs["image"]) else "out of view"
            other = other_mission(env, obs["image"]) if view == "in view" else None
            for policy, count in zip(policies, counts):
                headed, acted = _act(policy, obs, obs["mission"])
                if headed is not None and heading != OUT_OF_VIEW:
                    count["heading"][0] += headed == heading
                    count["heading"][1] += 1
                for key in ("all", view, f"{view}, bot: {ACTIONS[action]}"):
                    count[key][0] += acted == action
                    count[key][1] += 1
                if other is not None:
                    count["mission swapped"][0] += _act(policy, obs, other)[1] != acted
                    count["mission swapped"][1] += 1
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
    keys = sorted(set().union(*counts), key=lambda k: (k != "all", k in ("mission swapped", "heading"), k))
    print(f"{args.level}, {args.episodes} bot-driven episodes (seeds 50000+)\n")
    print("| bot's state | steps | " + " | ".join(args.policies) + " |")
    print("|---|---|" + "---:|" * len(policies))
    for key in keys:
        steps = sorted({c[key][1] for c in counts if c[key][1]})
        cells = " | ".join(f"{c[key][0] / c[key][1]:.1%}" if c[key][1] else "–" for c in counts)
        print(f"| {key} | {' / '.join(map(str, steps))} | {cells} |")


if __name__ == "__main__":
    main()
