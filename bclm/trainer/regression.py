"""Regression of continuous action dimensions (`TokenizerConfig.action_head` "regression").

A categorical head over 256 bins learns a law that is linear in the observation slowly or not at all (a
2-D reach from 1,000 labels: 0% with bins, HL-Gauss or not, 100% with regression on the same trunk; an MLP
with bins failed too), and its argmax moves in whole bins. So a continuous dimension is regressed, as an MLP
and JAT regress continuous actions: the value of action dimension k is the output logit, at the step's ACT
token, of the first id of k's number slot, trained by squared error (a Gaussian log-likelihood of fixed
variance) against the expert's value normalised with the tokenizer's statistics (`action_values`: 0 at the
centre of the data, ±1 at its edges; the target bin's position where a batch carries no exact values).
A dimension bounded by its space is the tanh of that output (`BCTokenizer.squashed_actions`), inside the
bounds and saturating as a clipped expert does, as the reference MLP's and SAC's bounded actions are.
Every dimension is read at the ACT token, from the observations alone, so the model stays a plain causal LM
(the read-out is a row of its output head) and one forward pass gives the whole vector.

With the state token's linear read-out (bclm.state), the value is a linear law plus what the transformer adds
to it, and `residual_penalty` (off by default) weighs the square of that addition in the action's normalised
units: a Gaussian prior that the law is linear unless the data say otherwise. On Meta-World reach (seed 4,
1,200 labels) the least-squares law alone succeeded in 20 of 20 episodes, the law plus the free transformer
in 0, the law plus the penalised one in 20; over 5 seeds of reach and on MT10 the penalty did not measure
better beyond noise (docs/results/continuous.md).
"""

from __future__ import annotations

import torch

from bclm.tokenizers import BCTokenizer, slot_positions


class RegressionTargets:
    """Squared-error loss of the action tokens in the number range (`slots` slots of `width` ids from
    `offset`, whose bins sit at `positions` (slots, width)), predicted at the last `act_id` token."""

    def __init__(self, act_id: int, offset: int, positions: torch.Tensor, squashed: torch.Tensor | None = None,
                 residual_penalty: float = 0.0):
        self.act_id, self.offset, self.residual_penalty = act_id, offset, residual_penalty
        self.positions = positions.float()
        self.slots, self.width = positions.shape
        # (slots,) the slots whose value is the tanh of the output (`BCTokenizer.squashed_actions`)
        self.squashed = torch.zeros(self.slots, dtype=torch.bool) if squashed is None else squashed

    def token_loss(self, logits: torch.Tensor, targets: torch.Tensor, keep: torch.Tensor, input_ids: torch.Tensor,
                   exact: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss, regressed, hits), each (B, K): the squared error of each regressed target (0 elsewhere), which
        targets are regressed, and whether the prediction's nearest bin is the target's. `logits` (B, K, V) are
        at the kept positions `keep` (K,) of `input_ids` (B, T); `targets` (B, K) their next tokens, `exact`
        (B, K) the targets' exact values (the tokenizer's `action_values`; default: their bins' positions)."""
        local, regressed, pred = self._predict(logits, targets, keep, input_ids)
        slot = local // self.width
        positions = self.positions.to(logits.device)
        target = positions.flatten()[local] if exact is None else exact.to(logits.dtype)
        loss = torch.where(regressed, (pred - target) ** 2, 0.0)
        with torch.no_grad():
            nearest = (positions[slot] - pred[..., None]).abs().argmin(-1)
            hits = regressed & (nearest == local % self.width)
        return loss, regressed, hits

    def residual_loss(self, lm_logits: torch.Tensor, targets: torch.Tensor, keep: torch.Tensor,
                      input_ids: torch.Tensor) -> torch.Tensor:
        """(B, K) `residual_penalty` times the square of the value that the LM's own output (`lm_logits`, before
        the linear read-out is added) gives each regressed target, 0 elsewhere."""
        _, regressed, pred = self._predict(lm_logits, targets, keep, input_ids)
        return torch.where(regressed, self.residual_penalty * pred ** 2, 0.0)

    def _predict(self, logits: torch.Tensor, targets: torch.Tensor, keep: torch.Tensor, input_ids: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(local, regressed, value), each (B, K): each target's id within the number range, whether it is
        regressed, and the value predicted for it (tanh of the output on squashed slots)."""
        local = targets - self.offset
        regressed = (local >= 0) & (local < self.slots * self.width)
        local = local.clamp(0, self.slots * self.width - 1)
        slot = local // self.width
        # The step's ACT is the last one at or before the position (packed windows each have their own).
        arange = torch.arange(input_ids.shape[1], device=input_ids.device)
        last_act = torch.where(input_ids == self.act_id, arange, 0).cummax(dim=1).values[:, keep]     # (B, K)
        kept_index = torch.zeros_like(arange).scatter_(0, keep, torch.arange(len(keep), device=keep.device))
        column = self.offset + slot * self.width
        vocab = logits.shape[-1]
        pred = logits.reshape(len(logits), -1).gather(1, kept_index[last_act] * vocab + column)      # (B, K)
        return local, regressed, torch.where(self.squashed.to(slot.device)[slot], torch.tanh(pred), pred)


def regression_targets(tokenizers: dict[str, BCTokenizer], residual_penalty: float = 0.0
                       ) -> RegressionTargets | None:
    """The regression of the tasks' continuous action dimensions, or None when no task regresses any."""
    if not any(t.regression for t in tokenizers.values()):
        return None
    tok = next(iter(tokenizers.values()))
    positions = slot_positions(tokenizers, "action")
    squashed = torch.zeros(len(positions), dtype=torch.bool)
    for t in tokenizers.values():
        squashed[(t.regression_ids()[t.squashed_actions()] - t.number_offset) // t.number_width] = True
    return RegressionTargets(tok.act_id, tok.number_offset, torch.as_tensor(positions), squashed, residual_penalty)
