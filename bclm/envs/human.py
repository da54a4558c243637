"""Humans as experts: a terminal labeler for discrete actions, and interventions (HG-DAgger).

Both read plain text, so tests drive them with scripted input instead of a person.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

import gymnasium as gym
import numpy as np

from bclm.errors import BCLMError


class TerminalLabeler:
    """`expert("human")`: shows each observation as text and reads the action to take from a line of input.

    Discrete actions only (a number per line; `action_names` may label them). An invalid answer is
    asked again; the end of the input is an error (a DAgger round counts it as a fault on that state).
    """

    def __init__(self, input_stream: TextIO | None = None, output_stream: TextIO | None = None,
                 action_names: list[str] | None = None):
        self.input = input_stream
        self.output = output_stream
        self.action_names = action_names
        self.n: int | None = None
        self.labels = 0

    def bind(self, observation_space: gym.Space, action_space: gym.Space) -> None:
        if not isinstance(action_space, gym.spaces.Discrete):
            raise BCLMError(f"expert 'human' labels Discrete actions only, not {action_space}")
        self.n, self.start = int(action_space.n), int(action_space.start)

    def __call__(self, obs: Any) -> int:
        choices = self._choices()
        action = self._ask(f"\nobservation:\n{format_observation(obs)}\naction ({choices})? ", allow_none=False)
        assert action is not None
        return action

    def _choices(self) -> str:
        if self.n is None:
            raise BCLMError("expert 'human' was not bound to an action space")
        if self.action_names:
            return ", ".join(f"{self.start + i}={name}" for i, name in enumerate(self.action_names))
        return f"{self.start}..{self.start + self.n - 1}"

    def _ask(self, prompt: str, allow_none: bool) -> int | None:
        """Write `prompt`, read lines until one is an action (or empty, when `allow_none`)."""
        out, inp = self.output or sys.stdout, self.input or sys.stdin
        out.write(prompt)
        out.flush()
        while True:
            line = inp.readline()
            if not line:
                raise BCLMError("expert 'human': input ended before an action was given")
            answer = line.strip()
            if allow_none and not answer:
                return None
            if answer.lstrip("-").isdigit() and self.start <= int(answer) < self.start + self.n:
                self.labels += 1
                return int(answer)
            out.write(f"'{answer}' is not an action ({self._choices()}); again? ")
            out.flush()


def format_observation(obs: Any) -> str:
    """An observation as readable text (dicts one key a line, arrays rounded)."""
    if isinstance(obs, dict):
        return "\n".join(f"  {k}: {format_observation(v).strip()}" for k, v in obs.items())
    if isinstance(obs, tuple):
        return "\n".join(f"  [{i}] {format_observation(v).strip()}" for i, v in enumerate(obs))
    return "  " + np.array2string(np.asarray(obs), precision=3, suppress_small=True, max_line_width=100)


class TerminalIntervener(TerminalLabeler):
    """HG-DAgger from the terminal: shows the observation and the learner's action; an empty line lets the
    learner act, a number takes over with that action."""

    def __call__(self, obs: Any, learner_action: Any) -> int | None:
        self._choices()
        return self._ask(f"\nobservation:\n{format_observation(obs)}\nlearner does {int(learner_action)}; "
                         "Enter to let it, or the action to take over: ", allow_none=True)
