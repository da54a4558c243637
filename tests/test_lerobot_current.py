"""The current lerobot release reads bclm's exports (slow: it runs in a virtual environment of its own).

lerobot 0.6 needs Python >= 3.12 and its own torch, so it cannot share bclm's 3.11 environment. The venv is
`BCLM_LEROBOT_PYTHON`'s if set, else `.venv-lerobot` in the repository, made on first use with Python 3.12
(`PYENV_VERSION=3.12.1 python3.12`) and `pip install "lerobot[dataset]"`: several GB, minutes. There,
lerobot's own `LeRobotDataset` loads each export, every frame is read, and its `aggregate_stats` merges the
exports' statistics (it refused BabyAI's grid statistics while the leaf was named "image").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bclm.collect import collect
from bclm.data.lerobot import export_lerobot
from bclm.data.store import TrajectoryStore
from bclm.envs import get_task

ROOT = Path(__file__).resolve().parents[1]
CHECK = """
import json, sys
import lerobot
from lerobot.datasets.compute_stats import aggregate_stats
from lerobot.datasets.lerobot_dataset import LeRobotDataset
out = {}
for root in sys.argv[1:]:
    ds = LeRobotDataset("local/bclm-export", root=root)
    frames = [ds[i] for i in range(len(ds))]
    merged = aggregate_stats([ds.meta.stats, ds.meta.stats])
    out[root] = {"frames": len(frames), "episodes": ds.num_episodes,
                 "last_episode": int(frames[-1]["episode_index"]), "merged": sorted(merged)}
print(json.dumps({"lerobot": lerobot.__version__, "exports": out}))
"""


def lerobot_python() -> Path:
    if os.environ.get("BCLM_LEROBOT_PYTHON"):
        return Path(os.environ["BCLM_LEROBOT_PYTHON"])
    venv = ROOT / ".venv-lerobot"
    python = venv / "bin" / "python"
    if not python.is_file():
        env = {**os.environ, "PYENV_VERSION": "3.12.1"}
        subprocess.run(["python3.12", "-m", "venv", str(venv)], check=True, env=env)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "lerobot[dataset]"], check=True)
    return python


@pytest.mark.slow
def test_the_current_lerobot_release_loads_and_iterates_bclm_exports(tmp_path):
    stores = {}
    for name, episodes in (("CartPole-v1", 2), ("BabyAI-GoToLocal-v0", 3)):
        collect(get_task(name), None, episodes, tmp_path / name, seed=0)
        stores[str(export_lerobot(tmp_path / name, tmp_path / f"{name}-lerobot"))] = TrajectoryStore(tmp_path / name)
    run = subprocess.run([str(lerobot_python()), "-c", CHECK, *stores], capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    print(f"lerobot {result['lerobot']}", file=sys.stderr)
    for root, store in stores.items():
        got, steps = result["exports"][root], store.arrays()
        assert got["frames"] == len(steps.action) and got["episodes"] == got["last_episode"] + 1
        assert got["episodes"] == len(set(store.load()["episode"]))
    babyai = next(v for k, v in result["exports"].items() if "BabyAI" in k)
    assert "observation.img" in babyai["merged"]         # the grid's statistics merge, as numbers
