"""Which part of a transformer loses Pendulum's law off the expert's path: the tokens, the output, or the trunk.

`pendulum_generalization.py` shows bclm's policies fitting the expert's own states better than the MLP and
erring 2-3x more just off them. Here twenty-three learners train on the same 800 expert labels (4 episodes of the
swing-up expert, collection seeds 1000*seed+i), all on standardised raw observations, 800 batches of 64,
Adam 1e-3, and are measured as `pendulum_generalization.py` measures (torque error on fresh expert states
and on the 13 x 13 grid around the top) and by closed-loop success (20 episodes, seeds 10000+i):

- the label-efficiency MLP (2 x 64 tanh) and the same with SiLU;
- a gated MLP (two SwiGLU layers without biases, Llama's MLP), the same with a sigmoid gate (GLU, linear
  near the origin where SwiGLU is quadratic), and residual SwiGLU blocks without and with RMSNorm (pre-norm
  and final, as in Llama);
- Llama "small" (bclm's default trunk) on one token holding the whole observation, with a regression head;
  on a token per dimension (a constant plus the value along a direction of its own, bclm's number
  tokens), with a regression head; and with bclm's 256-bin categorical head (argmax decoding);
- the same with a near-linear RMSNorm (`rms_norm_eps` 1.0), or with token constants 50x the value's
  (RMS 1: the norm then divides by a near-constant), or a sigmoid gate in its MLPs (`hidden_act`), or read
  at the last observation token (no ACT token to gather the dimensions into), one layer, or queries that
  start at zero (attention starts as a fixed average); and GPT-2 "small" (an ungated GELU MLP, LayerNorm) in
  Llama's three set-ups.

`--mixup K` trains every learner with local mixup (each state mixed with one of its K nearest demonstrated
states, torque alike), `--only NAME` runs the learners whose name contains NAME.

    .venv/bin/python benchmarks/pendulum_architecture.py --seeds 3
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from transformers import GPT2Config, GPT2Model, LlamaConfig, LlamaModel

sys.path.insert(0, str(Path(__file__).parent))
from label_efficiency import MLPActor, evaluate_actor
from pendulum_generalization import expert_states, grid_states, labelled, torque_error

BINS = 256


def collect(seed: int, episodes: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """The expert's states (collection seeds 1000*seed+i) and its torques scaled to [-1, 1]."""
    states, torques = labelled(expert_states(episodes, seed=1000 * seed))
    return states, (torques / 2.0).astype(np.float32)


class Gated(nn.Module):
    """act(gate x) * (up x), no biases: SwiGLU with SiLU (Llama's MLP), GLU with a sigmoid."""

    def __init__(self, d_in: int, d_out: int, act=nn.functional.silu):
        super().__init__()
        self.gate, self.up = nn.Linear(d_in, d_out, bias=False), nn.Linear(d_in, d_out, bias=False)
        self.act = act

    def forward(self, x):
        return self.act(self.gate(x)) * self.up(x)


class Residual(nn.Module):
    """Linear embedding, two residual SwiGLU blocks, a head; `norm`: Llama's pre-norm and final RMSNorm."""

    def __init__(self, norm: bool, d: int = 64):
        super().__init__()
        make_norm = (lambda: nn.RMSNorm(d)) if norm else nn.Identity
        self.embed, self.final, self.head = nn.Linear(3, d), make_norm(), nn.Linear(d, 1)
        self.blocks = nn.ModuleList(nn.Sequential(make_norm(), Gated(d, 2 * d), nn.Linear(2 * d, d, bias=False))
                                    for _ in range(2))

    def forward(self, x):
        h = self.embed(x)
        for block in self.blocks:
            h = h + block(h)
        return self.head(self.final(h))


def trunk(arch: str, d: int = 128, **llama) -> nn.Module:
    """bclm's "small" size (4 layers, width 128, 4 heads) as Llama (gated MLP, RMSNorm; `llama` overrides its
    config) or GPT-2 (a plain GELU MLP, LayerNorm), dropout off alike."""
    if arch == "llama":
        return LlamaModel(LlamaConfig(**(dict(hidden_size=d, intermediate_size=4 * d, num_hidden_layers=4,
                                              num_attention_heads=4, num_key_value_heads=4, vocab_size=8,
                                              max_position_embeddings=16, rms_norm_eps=1e-6) | llama)))
    return GPT2Model(GPT2Config(n_embd=d, n_inner=4 * d, n_layer=4, n_head=4, vocab_size=8, n_positions=16,
                                resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))


class TransformerLearner(nn.Module):
    """A "small" trunk over [task, observation token(s), ACT]; the action is read at ACT, or with `read_act`
    False at the last observation token (no ACT). `zero_queries`: every layer's queries start at zero, so
    attention starts uniform, a fixed average of the tokens rather than a weighting by their values."""

    def __init__(self, arch: str, tokens: str, out: int, d: int = 128, const: float = 0.02, read_act: bool = True,
                 zero_queries: bool = False, **llama):
        super().__init__()
        self.trunk = trunk(arch, d, **llama)
        self.tokens, self.read_act = tokens, read_act
        self.const = nn.Parameter(torch.randn(5, d) * const)       # task, one per dimension, ACT
        self.value = nn.Linear(3, d) if tokens == "one" else nn.Parameter(torch.randn(3, d) * 0.02)
        self.head = nn.Linear(d, out)
        if zero_queries:
            for layer in self.trunk.layers:
                nn.init.zeros_(layer.self_attn.q_proj.weight)

    def forward(self, x):
        task, act = self.const[0].expand(len(x), 1, -1), self.const[4].expand(len(x), 1, -1)
        obs = self.value(x)[:, None] if self.tokens == "one" else self.const[1:4] + x[..., None] * self.value
        seq = [task, obs, act] if self.read_act else [task, obs]
        return self.head(self.trunk(inputs_embeds=torch.cat(seq, 1)).last_hidden_state[:, -1])


def mlp(act: type[nn.Module]) -> nn.Module:
    return nn.Sequential(nn.Linear(3, 64), act(), nn.Linear(64, 64), act(), nn.Linear(64, 1))


LEARNERS = {
    "MLP 2 x 64 tanh (the reference)": lambda: mlp(nn.Tanh),
    "MLP 2 x 64 SiLU": lambda: mlp(nn.SiLU),
    "gated MLP (2 SwiGLU layers)": lambda: nn.Sequential(Gated(3, 64), Gated(64, 64), nn.Linear(64, 1)),
    "gated MLP, sigmoid gate (2 GLU layers)":
        lambda: nn.Sequential(Gated(3, 64, torch.sigmoid), Gated(64, 64, torch.sigmoid), nn.Linear(64, 1)),
    "residual SwiGLU blocks": lambda: Residual(norm=False),
    "residual SwiGLU blocks + RMSNorm": lambda: Residual(norm=True),
    "Llama small, one observation token, regression": lambda: TransformerLearner("llama", "one", 1),
    "Llama small, a token per dimension, regression": lambda: TransformerLearner("llama", "dims", 1),
    "Llama small, a token per dimension, 256 bins": lambda: TransformerLearner("llama", "dims", BINS),
    "Llama small, RMSNorm eps 1, a token per dimension, regression":
        lambda: TransformerLearner("llama", "dims", 1, rms_norm_eps=1.0),
    "Llama small, RMSNorm eps 1, a token per dimension, 256 bins":
        lambda: TransformerLearner("llama", "dims", BINS, rms_norm_eps=1.0),
    # Each token's constant part 50x the value's, so that RMSNorm divides by a near-constant: near-linear norms.
    "Llama small, constant parts of RMS 1, a token per dimension, regression":
        lambda: TransformerLearner("llama", "dims", 1, const=1.0),
    "Llama small, sigmoid gate, one observation token, regression":
        lambda: TransformerLearner("llama", "one", 1, hidden_act="sigmoid"),
    "Llama small, sigmoid gate, a token per dimension, regression":
        lambda: TransformerLearner("llama", "dims", 1, hidden_act="sigmoid"),
    "Llama small, sigmoid gate, a token per dimension, 256 bins":
        lambda: TransformerLearner("llama", "dims", BINS, hidden_act="sigmoid"),
    "Llama small, one observation token read at it (no ACT), regression":
        lambda: TransformerLearner("llama", "one", 1, read_act=False),
    "Llama small, a token per dimension read at the last (no ACT), regression":
        lambda: TransformerLearner("llama", "dims", 1, read_act=False),
    "Llama 1 layer, a token per dimension, regression":
        lambda: TransformerLearner("llama", "dims", 1, num_hidden_layers=1),
    "Llama small, zero-initialised queries, a token per dimension, regression":
        lambda: TransformerLearner("llama", "dims", 1, zero_queries=True),
    "Llama small, zero-initialised queries, a token per dimension, 256 bins":
        lambda: TransformerLearner("llama", "dims", BINS, zero_queries=True),
    "GPT-2 small, one observation token, regression": lambda: TransformerLearner("gpt2", "one", 1),
    "GPT-2 small, a token per dimension, regression": lambda: TransformerLearner("gpt2", "dims", 1),
    "GPT-2 small, a token per dimension, 256 bins": lambda: TransformerLearner("gpt2", "dims", BINS),
}


class BinActor(MLPActor):
    """Argmax bin of a categorical head, decoded to its centre."""

    @torch.no_grad()
    def act(self, observations, new_episode=None):
        x = torch.as_tensor((np.asarray(observations, np.float32) - self.mean) / self.std)
        u = self.net(x).argmax(-1).numpy() / (BINS - 1) * 2 - 1
        return (self.space.high * u[:, None]).astype(self.space.dtype)


def neighbours(x: torch.Tensor, k: int) -> torch.Tensor:
    """Each state's k nearest other states (standardised distance), for local mixup."""
    d = torch.cdist(x, x)
    d.fill_diagonal_(float("inf"))
    return d.topk(k, largest=False).indices


def batch(x: torch.Tensor, y: torch.Tensor, g: torch.Generator, near: torch.Tensor | None):
    """64 random states, or with `near` (local mixup) each one mixed with one of its nearest neighbours,
    state and torque alike: the learner is taught to be linear between neighbouring demonstrated states."""
    idx = torch.randint(0, len(x), (64,), generator=g)
    if near is None:
        return x[idx], y[idx]
    other = near[idx, torch.randint(0, near.shape[1], (64,), generator=g)]
    lam = torch.rand(64, generator=g)
    return lam[:, None] * x[idx] + (1 - lam[:, None]) * x[other], lam * y[idx] + (1 - lam) * y[other]


def fit(net: nn.Module, obs: np.ndarray, target: np.ndarray, seed: int, batches: int = 800,
        mixup: int = 0) -> MLPActor:
    mean, std = obs.mean(0), obs.std(0) + 1e-6
    x, y = torch.as_tensor((obs - mean) / std), torch.as_tensor(target)
    categorical = net(x[:1]).shape[-1] == BINS
    opt, g = torch.optim.Adam(net.parameters(), lr=1e-3), torch.Generator().manual_seed(seed)
    near = neighbours(x, mixup) if mixup else None
    for _ in range(batches):
        xb, yb = batch(x, y, g, near)
        out = net(xb)
        loss = (nn.functional.cross_entropy(out, ((yb + 1) / 2 * (BINS - 1)).round().long()) if categorical
                else nn.functional.mse_loss(torch.tanh(out[:, 0]), yb))
        opt.zero_grad()
        loss.backward()
        opt.step()
    env = gym.make("Pendulum-v1")
    return (BinActor if categorical else MLPActor)(net.eval(), mean, std, env.observation_space, env.action_space)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--episodes", type=int, default=20, help="Evaluation episodes per learner and seed.")
    p.add_argument("--batches", type=int, default=800, help="Training batches of 64 per learner.")
    p.add_argument("--mixup", type=int, default=0, help="Local mixup with this many nearest neighbours (0 = off).")
    p.add_argument("--only", default="", help="Only the learners whose name contains this.")
    args = p.parse_args()
    torch.set_num_threads(1)
    probes = {"expert states": labelled(expert_states()), "around the top": labelled(grid_states())}
    data = [collect(seed) for seed in range(args.seeds)]
    print("| learner | success (per seed) | torque error on expert states (N·m) | around the top (N·m) | "
          "s per seed |\n|---|---|---:|---:|---:|")
    for name, make in ((n, m) for n, m in LEARNERS.items() if args.only in n):
        rows, t0 = [], time.perf_counter()
        for seed, (obs, target) in enumerate(data):
            torch.manual_seed(seed)
            actor = fit(make(), obs, target, seed, args.batches, args.mixup)
            rows.append([evaluate_actor("Pendulum-v1", actor, args.episodes),
                         *(torque_error(actor.act, probe) for probe in probes.values())])
        r = np.asarray(rows)
        per_seed = ", ".join(f"{s:.0%}" for s in r[:, 0])
        print(f"| {name} | {r[:, 0].mean():.0%} ({per_seed}) | {r[:, 1].mean():.3f} | {r[:, 2].mean():.3f} | "
              f"{(time.perf_counter() - t0) / len(data):.0f} |", flush=True)


if __name__ == "__main__":
    main()
