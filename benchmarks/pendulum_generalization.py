"""Where bclm's Pendulum policies go wrong: on the expert's own states, or on the states around them.

Reads the Pendulum-v1 cells of a `label_efficiency.py` run and, for every cell, compares the bclm policy
with the reference MLP trained on the same episodes (`label_efficiency.train_mlp`):

- torque error on the expert's states: mean |policy − expert| over 600 states of 3 fresh expert episodes
  (seeds 50000+), what a validation loss sees;
- torque error around the top: mean |policy − expert| over a 13 × 13 grid of angle in [−0.6, 0.6] rad and
  angular velocity in [−3, 3] rad/s, where the expert's PD law is −(10θ + 2θ̇) clipped to ±2. The expert
  sits near (0, 0) almost all the time, so few demonstrated states are there: this is where a closed-loop
  policy that drifts a little off the expert's path has to act.

    .venv/bin/python benchmarks/label_efficiency.py --tasks Pendulum-v1 --seeds 3 --out runs/le
    .venv/bin/python benchmarks/pendulum_generalization.py runs/le/Pendulum-v1
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from label_efficiency import train_mlp

from bclm.data.store import TrajectoryStore
from bclm.envs.experts import pendulum_swingup
from bclm.policy import Policy
from bclm.trainer.data import first_episodes


def expert_states(episodes: int = 3, seed: int = 50_000) -> np.ndarray:
    env, states = gym.make("Pendulum-v1"), []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        for _ in range(200):
            states.append(obs)
            obs, *_ = env.step(pendulum_swingup(obs))
    return np.asarray(states, np.float32)


def grid_states() -> np.ndarray:
    theta, thetad = np.meshgrid(np.linspace(-0.6, 0.6, 13), np.linspace(-3, 3, 13))
    return np.stack([np.cos(theta.ravel()), np.sin(theta.ravel()), thetad.ravel()], 1).astype(np.float32)


def labelled(states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return states, np.array([pendulum_swingup(o)[0] for o in states])


def torque_error(act, probe: tuple[np.ndarray, np.ndarray]) -> float:
    states, expert = probe
    return float(np.abs(np.asarray(act(states))[:, 0] - expert).mean())


def cell_row(cell: Path, probes: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict:
    policy = Policy.from_pretrained(cell, device="cpu")
    recipe = yaml.safe_load((cell / "recipe.yaml").read_text())
    store = TrajectoryStore(recipe["dataset"])
    steps = first_episodes(store.arrays(recipe["data"]["shards"]), recipe["data"].get("max_episodes", 0), store.path)
    seed = int(cell.name.split("-")[1])
    mlp = train_mlp(steps.observation, np.asarray(steps.action), store.observation_space, store.action_space, seed)

    def bclm_act(states):
        return policy.new_session(batch_size=len(states)).act(states, np.ones(len(states), bool))

    row = {"budget": int(cell.parent.name.split("-")[1]), "seed": seed,
           "success": json.loads((cell / "eval_report.json").read_text())["success_rate"]}
    for name, probe in probes.items():
        row[f"bclm {name}"], row[f"mlp {name}"] = torque_error(bclm_act, probe), torque_error(mlp.act, probe)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("sweep", type=Path, help="A label_efficiency.py task directory (OUT/Pendulum-v1).")
    args = p.parse_args()
    probes = {"expert states": labelled(expert_states()), "around the top": labelled(grid_states())}
    cells = sorted(args.sweep.glob("bc/labels-*/seed-*"), key=lambda c: (int(c.parent.name.split("-")[1]), c.name))
    rows = [cell_row(c, probes) for c in cells if (c / "model.safetensors").is_file()]
    if not rows:
        p.exit(2, f"error: no trained cells under {args.sweep}/bc (expected labels-B/seed-S policy directories)\n")
    keys = [k for k in rows[0] if k.startswith(("bclm ", "mlp "))]
    print("| labels | seeds | bclm success | " + " | ".join(f"{k} (N·m)" for k in keys) + " |")
    print("|---:" * (3 + len(keys)) + "|")
    for budget in sorted({r["budget"] for r in rows}):
        group = [r for r in rows if r["budget"] == budget]
        success = np.mean([r["success"] for r in group])
        cols = [f"{np.mean([r[k] for r in group]):.3f}" for k in keys]
        print(f"| {budget:,} | {len(group)} | {success:.0%} | " + " | ".join(cols) + " |")


if __name__ == "__main__":
    main()
