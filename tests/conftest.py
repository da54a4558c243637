"""Shared fixtures: tiny models and tokenizers built from configs (nothing is downloaded)."""

from __future__ import annotations

import os

# Several test processes share two cores: spinning OpenMP threads would stall each other.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import gymnasium as gym
import numpy as np
import pytest
import torch

from bclm.embeddings import attach_for
from bclm.models import ModelConfig, build_model
from bclm.policy import Policy
from bclm.state import attach_state
from bclm.tokenizers import BCTokenizer, TokenizerConfig


def tiny_policy(obs_space: gym.Space, act_space: gym.Space, context_length: int = 64, seed: int = 0,
                attn: str = "eager", number_features: int = 16, state: bool = True) -> Policy:
    obs_space.seed(seed)
    act_space.seed(seed)
    obs = np.stack([obs_space.sample() for _ in range(64)]) if isinstance(obs_space, gym.spaces.Box) else \
        gym.vector.utils.concatenate(obs_space, [obs_space.sample() for _ in range(64)],
                                     gym.vector.utils.create_empty_array(obs_space, 64))
    act = gym.vector.utils.concatenate(act_space, [act_space.sample() for _ in range(64)],
                                       gym.vector.utils.create_empty_array(act_space, 64))
    tok = BCTokenizer(obs_space, act_space, TokenizerConfig(obs_bins=64, action_bins=32, value_vocab=128))
    tok.fit(obs, act)
    torch.manual_seed(seed)
    model = build_model(ModelConfig(size="tiny", attn_implementation=attn), tok.vocab_size, context_length,
                        tok.bos_id, tok.eos_id, tok.pad_id).eval()
    attach_for(model, tok, number_features, fresh=True)
    if state:
        attach_state(model, {t: tok for t in tok.tasks})
    return Policy(model, tok, context_length)


def trained_like(policy: Policy) -> Policy:
    """Moves every parameter (as training would), so an export cannot pass by matching an initialisation."""
    with torch.no_grad():
        for p in policy.model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return policy


@pytest.fixture
def box_discrete_policy() -> Policy:
    return tiny_policy(gym.spaces.Box(-1, 1, (3,), np.float32), gym.spaces.Discrete(4))
