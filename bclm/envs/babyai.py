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
# Objects a mission names, as "<colour> <type>" (every mission of the five levels names its objects so).
MISSION_TYPES = ("door", "key", "ball", "box")
_NAMED_OBJECT = re.compile(r"\b(" + "|".join(COLOURS) + r") (" + "|".join(MISSION_TYPES) + r")\b")
# Objects each level's missions name (PutNextLocal: "put the red ball next to the blue box").
NAMED_OBJECTS = {"PutNextLocal": 2}


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
    packs each cell into one token: 49 tokens instead of 147. The mission becomes a `Text` space.

    With `mission_objects` = n > 0, the observation also holds the n objects the mission names written as
    view cells (`named_cells`), under a key that comes after the view, so that with `tokenizer.group: 3`
    the last observation token is the named object's own cell token: finding the target is then matching
    a token with its copies, which one attention head does, rather than composing the mission's words
    first."""

    def __init__(self, env: gym.Env, mission_objects: int = 0):
        super().__init__(env)
        from minigrid.core.constants import COLOR_TO_IDX, OBJECT_TO_IDX, STATE_TO_IDX

        cell = [len(OBJECT_TO_IDX), len(COLOR_TO_IDX), len(STATE_TO_IDX)]
        spaces = {
            "direction": env.observation_space["direction"],
            "image": gym.spaces.MultiDiscrete(np.tile(cell, (49, 1))),
            "mission": gym.spaces.Text(MISSION_MAX, min_length=0, charset=MISSION_CHARSET),
        }
        self.mission_objects = int(mission_objects)
        if self.mission_objects:
            spaces["mission_objects"] = gym.spaces.MultiDiscrete(np.tile(cell, (self.mission_objects, 1)))
        self.observation_space = gym.spaces.Dict(spaces)

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        # minigrid prints "Sampling rejected: unreachable object" for every rejected level layout, which
        # floods logs when many envs reset; the rejection itself is normal and needs no report.
        with contextlib.redirect_stdout(io.StringIO()):
            return super().reset(**kwargs)

    def observation(self, obs: dict[str, Any]) -> dict[str, Any]:
        image = np.asarray(obs["image"], dtype=np.int64).reshape(49, 3)
        out = {"direction": obs["direction"], "image": image, "mission": obs["mission"]}
        if self.mission_objects:
            out["mission_objects"] = named_cells(obs["mission"], self.mission_objects)
        return out


def named_cells(mission: str, count: int) -> np.ndarray:
    """(count, 3) the first `count` "<colour> <type>" objects of a mission, in its order, as the cells that
    show them: state 0, which keys, balls and boxes always show (a door's open, closed or locked state is
    not named). A mission that names fewer fills the first rows with unseen cells (0, 0, 0), so that the
    last named object is always the last row."""
    from minigrid.core.constants import COLOR_TO_IDX, OBJECT_TO_IDX

    named = [(OBJECT_TO_IDX[kind], COLOR_TO_IDX[colour], 0)
             for colour, kind in _NAMED_OBJECT.findall(str(mission))[:count]]
    out = np.zeros((count, 3), dtype=np.int64)
    if named:
        out[count - len(named):] = named
    return out


def permute_colours(observation: dict[str, Any], episode: np.ndarray, rng: np.random.Generator) -> dict[str, Any]:
    """The same steps in a world whose colours are renamed: one random permutation per episode, applied
    alike to every coloured object in the view and to the colour words of the mission. Every BabyAI level
    tells objects apart by colour and type only, so the bot's actions, the labels, are unchanged (the test
    renames the colours of a live env and replays the bot)."""
    ids, first = np.unique(episode, return_inverse=True)
    perms = np.argsort(rng.random((len(ids), len(COLOURS))), axis=1)[first]          # (steps, colours)
    missions = np.empty(len(episode), dtype=object)
    missions[:] = [_COLOUR_WORD.sub(lambda m, p=perm: COLOURS[p[COLOURS.index(m[1])]], str(text))
                   for text, perm in zip(observation["mission"], perms)]
    renamed = {key: _renamed_cells(observation[key], perms) for key in ("image", "mission_objects")
               if key in observation}
    return {**observation, **renamed, "mission": missions}


def _renamed_cells(cells: np.ndarray, perms: np.ndarray) -> np.ndarray:
    """(steps, n, 3) cells with the colour of every coloured object renamed by its step's permutation."""
    cells = np.array(cells, copy=True)
    coloured = np.isin(cells[..., 0], COLOURED_OBJECTS)
    renamed = np.take_along_axis(perms, cells[..., 1], axis=1)
    cells[..., 1] = np.where(coloured, renamed, cells[..., 1])
    return cells


# The heading of a `BabyAIHeading` action that names no view cell: the bot heads for a place out of view.
OUT_OF_VIEW = 49


def view_cell(x: int, y: int) -> int:
    """The row of the (49, 3) `image` that shows view position (x, y): minigrid's 7×7 view, x-major."""
    return int(x) * 7 + int(y)


class BabyAIHeading(gym.ActionWrapper):
    """Actions become (heading, action): the view cell (0..48, as the observation's `image` rows) of the
    object or place the bot is heading for, `OUT_OF_VIEW` when it lies outside the view, then minigrid's
    action, the only part the env executes. The learner predicts the heading before the action, so the
    bot's labels also say which cell the mission names: a direct target for what the 75% plateau lacks
    (README, "BabyAI GoToLocal"), where the action alone rewards finding that cell only through the turn
    it implies. In rollouts the policy's own heading is a token it conditions its action on."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.action_space = gym.spaces.Tuple((gym.spaces.Discrete(OUT_OF_VIEW + 1), env.action_space))

    def action(self, action: Any) -> Any:
        return action[1]


def make_babyai(level: str, mission_objects: int = 0, heading: bool = False, **kwargs: Any) -> gym.Env:
    _minigrid()
    env = BabyAIObservation(gym.make(f"BabyAI-{level}-v0", **kwargs), mission_objects=mission_objects)
    return BabyAIHeading(env) if heading else env


for _level in LEVELS:
    if f"bclm/BabyAI-{_level}-v0" not in gym.registry:
        gym.register(f"bclm/BabyAI-{_level}-v0", entry_point="bclm.envs.babyai:make_babyai",
                     kwargs={"level": _level})


class BabyAIBotExpert:
    """The BabyAI bot as a bclm stateful expert (one instance per env, see `ExpertActor`). On an env with
    `BabyAIHeading` actions it labels (heading, action)."""

    stateful = True

    def __init__(self) -> None:
        self.bot_class = _minigrid()
        self.env: Any = None
        self.bot: Any = None
        self.executed: int | None = None
        self.recreated = 0
        self.headings = False

    def reset(self, env: gym.Env) -> None:
        self.env = env.unwrapped
        self.bot = self.bot_class(self.env)
        self.executed = None
        self.headings = isinstance(env.action_space, gym.spaces.Tuple)

    def __call__(self, obs: Any) -> int | tuple[int, int]:
        try:
            action = int(self.bot.replan(self.executed))
        except Exception:   # the bot gives up on some states a learner reaches (e.g. an opened box)
            self.recreated += 1
            self.bot = self.bot_class(self.env)    # plan afresh from the env's current state
            action = int(self.bot.replan())
        return (self.heading(), action) if self.headings else action

    def heading(self) -> int:
        """The view cell of what the bot's innermost go-next-to subgoal heads for (after `replan`, so the
        subgoal of the action it just chose), or `OUT_OF_VIEW`."""
        from minigrid.core.world_object import WorldObj
        from minigrid.utils.baby_ai_bot import GoNextToSubgoal, ObjDesc

        for subgoal in reversed(self.bot.stack):
            if not isinstance(subgoal, GoNextToSubgoal):
                continue
            if isinstance(subgoal.datum, ObjDesc):
                # The bot's own pick among the objects that fit (private, but what its next actions follow).
                pos = self.bot._find_obj_pos(subgoal.datum, subgoal.reason == "PutNext")[1]
            elif isinstance(subgoal.datum, WorldObj):
                pos = subgoal.datum.cur_pos
            else:
                pos = subgoal.datum
            view = None if pos is None else self.env.relative_coords(*pos)
            return OUT_OF_VIEW if view is None else view_cell(*view)
        return OUT_OF_VIEW

    def observe(self, action: Any) -> None:
        self.executed = int(np.asarray(action[1] if isinstance(action, tuple) else action))
