"""Ordinal targets for continuous action tokens ("HL-Gauss", Imani & White 2018; Farebrother et al. 2024).

A continuous action dimension is a number token: one of `bins` ordered bins. Plain cross-entropy treats a
prediction one bin off the expert's as wrong as one at the far end of the range. Here the target of a
number token is instead the mass a Gaussian centred on the expert's bin (width `sigma`, in bins) puts on
each bin, so near misses cost little and neighbouring bins learn from each other's labels. Discrete
actions (value tokens) keep plain cross-entropy. With sigma 0 the target is one-hot: plain cross-entropy.
"""

from __future__ import annotations

import torch

from bclm.data.sequences import IGNORE_INDEX
from bclm.tokenizers import BCTokenizer


def hl_gauss_table(bins: int, sigma: float) -> torch.Tensor:
    """(bins, bins): row b holds the mass of N(b, sigma²) on each bin [j - 1/2, j + 1/2), renormalised to the
    bins that exist (the edges keep their share); the identity for sigma 0."""
    if sigma <= 0:
        return torch.eye(bins)
    edges = torch.arange(bins + 1, dtype=torch.float64) - 0.5
    centres = torch.arange(bins, dtype=torch.float64)[:, None]
    cdf = torch.special.ndtr((edges[None, :] - centres) / sigma)
    mass = cdf[:, 1:] - cdf[:, :-1]
    return (mass / mass.sum(1, keepdim=True)).float()


class OrdinalTargets:
    """Token loss with HL-Gauss targets on number tokens: `slots` slots of `width` ids from `offset`, each slot
    one continuous dimension whose first `bins` ids are its bins."""

    def __init__(self, offset: int, bins: int, sigma: float, slots: int = 1, width: int = 0):
        self.offset, self.bins, self.sigma = offset, bins, sigma
        self.slots, self.width = slots, width or bins
        self.table = hl_gauss_table(bins, sigma)

    def token_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(B, K) loss per target token (0 where ignored), from logits (B, K, V) and targets (B, K). Shapes stay
        static (no boolean indexing), so nothing waits on the device."""
        loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, ignore_index=IGNORE_INDEX,
                                                 reduction="none")
        if self.sigma <= 0:
            return loss
        local = targets - self.offset
        number = (local >= 0) & (local < self.slots * self.width) & (local % self.width < self.bins)
        slot_start = self.offset + local.clamp(min=0) // self.width * self.width              # (B, K)
        ids = slot_start[..., None] + torch.arange(self.bins, device=logits.device)          # (B, K, bins)
        # The soft target lives on the token's own slot; the other logits enter through the normaliser only.
        log_p = logits.log_softmax(-1).gather(-1, ids.clamp(max=logits.shape[-1] - 1))
        soft = self.table.to(logits.device)[(local % self.width).clamp(0, self.bins - 1)]
        return torch.where(number, -(soft * log_p).sum(-1), loss)


def ordinal_targets(tokenizer: BCTokenizer, sigma: float) -> OrdinalTargets | None:
    """HL-Gauss targets over the tokenizer's action bins, or None (plain cross-entropy) for sigma 0 or a
    tokenizer without number tokens (format 1, where bins are free symbols with no order to respect)."""
    if sigma <= 0 or not tokenizer.number_vocab:
        return None
    return OrdinalTargets(tokenizer.number_offset, tokenizer.config.action_bins, sigma, tokenizer.number_slots,
                          tokenizer.number_width)
