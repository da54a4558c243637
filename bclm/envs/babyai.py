"""BabyAI levels (minigrid) with the BabyAI bot as a stateful expert.

Importing this module registers `bclm/BabyAI-<Level>-v0` gymnasium ids whose observations bclm can
tokenize: the 7×7×3 symbolic view (a Box), the direction (Discrete) and the mission as a gymnasium
`Text` (minigrid's own MissionSpace is not serialisable). The bot runs in lockstep with the episode:
it reads the env's true state, is told the action actually executed, and is re-created when it gives up.
"""

from __future__ import annotations

import contextlib
import io
import re
import string
from typing import Any

import gymnasium as gym
import numpy as np

from bclm.errors import BCLMError

LEVELS = ("GoToRedBall", "GoToLocal", "PickupLoc", "PutNextLocal", "GoTo")
MISSION_CHARSET = string.ascii_lowercase + " ,'"
MISSION_MAX = 200
# minigrid's COLOR_TO_IDX order, and the object types that carry a colour (door, key, ball, box): walls stay
# grey and empty cells colourless, as in every real view.
COLOURS = ("red", "green", "blue", "purple", "yellow", "grey")
COLOURED_OBJECTS = (4, 5, 6, 7)
_COLOUR_WORD = re.compile(r"\b(" + "|".join(COLOURS) + r")\b")


def _minigrid() -> Any:
    try:
        import minigrid  # noqa: F401 -- registers the BabyAI envs
        from minigrid.utils.baby_ai_bot import BabyAIBot
    except ImportError:
        raise BCLMError("BabyAI needs minigrid: pip install 'bclm[envs]' (or pip install minigrid)") from None
    return BabyAIBot


class BabyAIObservation(gym.ObservationWrapper):
    """Keeps image, direction and mission. The 7×7×3 view becomes 49 cells of (object, colour, state) with
    their true cardinalities (a MultiDiscrete, not minigrid's 0..255 Box), so that `tokenizer.group: 3`
    packs each cell into one token: 49 tokens instead of 147. The mission becomes a `Text` space."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        from minigrid.core.constants import COLOR_TO_IDX, OBJECT_TO_IDX, STATE_TO_IDX

        cell = [len(OBJECT_TO_IDX), len(COLOR_TO_IDX), len(STATE_TO_IDX)]
        self.observation_space = gym.spaces.Dict({
            "direction": env.observation_space["direction"],
            "image": gym.spaces.MultiDiscrete(np.tile(cell, (49, 1))),
            "mission": gym.spaces.Text(MISSION_MAX, min_length=0, charset=MISSION_CHARSET),
        })

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        # minigrid prints "Sampling rejected: unreachable object" for every rejected level layout, which
        # floods logs when many envs reset; the rejection itself is normal and needs no report.
        with contextlib.redirect_stdout(io.StringIO()):
            return super().reset(**kwargs)

    def observation(self, obs: dict[str, Any]) -> dict[str, Any]:
        image = np.asarray(obs["image"], dtype=np.int64).reshape(49, 3)
        return {"direction": obs["direction"], "image": image, "mission": obs["mission"]}


def permute_colours(observation: dict[str, Any], episode: np.ndarray, rng: np.random.Generator) -> dict[str, Any]:
    """The same steps in a world whose colours are renamed: one random permutation per episode, applied
    alike to every coloured object in the view and to the colour words of the mission. Every BabyAI level
    tells objects apart by colour and type only, so the bot's actions, the labels, are unchanged (the test
    renames the colours of a live env and replays the bot)."""
    ids, first = np.unique(episode, return_inverse=True)
    perms = np.argsort(rng.random((len(ids), len(COLOURS))), axis=1)[first]          # (steps, colours)
    image = np.array(observation["image"], copy=True)
    coloured = np.isin(image[..., 0], COLOURED_OBJECTS)
    renamed = np.take_along_axis(perms, image[..., 1], axis=1)
    image[..., 1] = np.where(coloured, renamed, image[..., 1])
    missions = np.empty(len(episode), dtype=object)
    missions[:] = [_COLOUR_WORD.sub(lambda m, p=perm: COLOURS[p[COLOURS.index(m[1])]], str(text))
                   for text, perm in zip(observation["mission"], perms)]
    return {**observation, "image": image, "mission": missions}


def make_babyai(level: str, **kwargs: Any) -> gym.Env:
    _minigrid()
    return BabyAIObservation(gym.make(f"BabyAI-{level}-v0", **kwargs))


for _level in LEVELS:
    if f"bclm/BabyAI-{_level}-v0" not in gym.registry:
        gym.register(f"bclm/BabyAI-{_level}-v0", entry_point="bclm.envs.babyai:make_babyai",
                     kwargs={"level": _level})


class BabyAIBotExpert:
    """The BabyAI bot as a bclm stateful expert (one instance per env, see `ExpertActor`)."""

    stateful = True

    def __init__(self) -> None:
        self.bot_class = _minigrid()
        self.env: Any = None
        self.bot: Any = None
        self.executed: int | None = None
        self.recreated = 0

    def reset(self, env: gym.Env) -> None:
        self.env = env.unwrapped
        self.bot = self.bot_class(self.env)
        self.executed = None

    def __call__(self, obs: Any) -> int:
        try:
            return int(self.bot.replan(self.executed))
        except Exception:   # the bot gives up on some states a learner reaches (e.g. an opened box)
            self.recreated += 1
            self.bot = self.bot_class(self.env)    # plan afresh from the env's current state
            return int(self.bot.replan())

    def observe(self, action: Any) -> None:
        self.executed = int(np.asarray(action))
