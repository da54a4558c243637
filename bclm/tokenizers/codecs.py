"""One codec per leaf space: a value <-> a fixed number of local token ids.

Local ids at token position k lie in [0, sizes()[k]) (in [k·S, k·S + sizes()[k]) for a packed leaf with
slots, S its largest size); the tokenizer shifts them into the shared value range (kind "value") or the
text range (kind "text").
"""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from bclm.errors import BCLMError
from bclm.tokenizers.spaces import floats_from_json, floats_to_json

MODES = ("uniform", "mulaw", "quantile")
BOUNDS = ("space", "data", "auto")
# Quantile mode: the data's distribution is read at this many levels between the percentiles, a piecewise-
# linear CDF (more levels follow a small dataset's noise, fewer lose its shape) ...
QUANTILE_LEVELS = 33
# ... and each margin beyond the data (data-fitted bounds, or space bounds wider than the data) gets this
# fraction of the bins.
QUANTILE_MARGIN = 0.1


def _leaf(path: str) -> str:
    return f"leaf '{path}'" if path else "root leaf"


def _not_fitted(path: str, what: str) -> BCLMError:
    return BCLMError(f"{_leaf(path)} uses {what}: the tokenizer must be fitted (BCTokenizer.fit) on "
                     "training data before encoding or decoding")


# --- Box ----------------------------------------------------------------------------------------

class BoxCodec:
    """Per-dimension binning of a Box, one token per element.

    Integer dimensions whose whole range fits in `bins` are encoded exactly (token = x - low) with the
    space bounds, whatever the bounds source: an exact code is never worse than a data-fitted one.
    """

    kind = "value"

    def __init__(self, path: str, shape: tuple[int, ...], dtype: str, low: np.ndarray, high: np.ndarray,
                 *, bins: int, mode: str = "uniform", mu: float = 100.0, bounds: str = "space",
                 percentiles: tuple[float, float] = (1.0, 99.0), exact: np.ndarray | None = None,
                 needs_data: bool | None = None, fitted: bool = False, margin: float = 0.0,
                 knots: list | None = None, margins: list | None = None):
        self.path = path
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.bins = int(bins)
        self.mode = mode
        self.mu = float(mu)
        self.bounds = bounds
        self.percentiles = (float(percentiles[0]), float(percentiles[1]))
        self.margin = float(margin)
        self.low = np.asarray(low, dtype=np.float64).ravel().copy()
        self.high = np.asarray(high, dtype=np.float64).ravel().copy()
        # Per dimension, the margin the bounds have now: `margin` from a fit, more once `cover` widened them.
        self.margins = np.full(self.low.shape, self.margin) if margins is None else floats_from_json(margins)
        self.exact = self._exact_dims() if exact is None else np.asarray(exact, dtype=bool)
        self.needs_data = self._needs_data() if needs_data is None else bool(needs_data)
        self.fitted = bool(fitted)
        # Per dimension (values, positions in [0, 1]) of the piecewise-linear CDF; quantile mode only.
        self.knots = [(floats_from_json(x), floats_from_json(t)) for x, t in knots] if knots else []
        binned = ~self.exact
        finite = np.isfinite(self.low[binned]).all() and np.isfinite(self.high[binned]).all()
        if self.bounds == "space" and not finite:
            raise BCLMError(f"{_leaf(path)} has infinite Box bounds, so bounds source 'space' cannot bin "
                            "it: use bounds 'data' or 'auto' (fitted percentiles)")

    @classmethod
    def from_space(cls, space: gym.spaces.Box, path: str, **kw: Any) -> BoxCodec:
        return cls(path, space.shape, space.dtype.name, space.low, space.high, **kw)

    @property
    def num_tokens(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def _exact_dims(self) -> np.ndarray:
        if not np.issubdtype(self.dtype, np.integer):
            return np.zeros(self.low.shape, dtype=bool)
        return (self.high - self.low + 1) <= self.bins

    def _bounds_from_data(self) -> bool:
        if self.bounds == "auto":
            return not (np.isfinite(self.low).all() and np.isfinite(self.high).all())
        return self.bounds == "data"

    @property
    def data_bounds(self) -> bool:
        """Whether the bounds are fitted to data (with a margin) rather than the space's."""
        return self._bounds_from_data()

    def _needs_data(self) -> bool:
        return not self.exact.all() and (self._bounds_from_data() or self.mode == "quantile")

    def sizes(self) -> np.ndarray:
        exact_sizes = (self.high - self.low + 1).clip(1, self.bins) if self.exact.any() else 0
        return np.where(self.exact, exact_sizes, self.bins).astype(np.int64)

    def fit(self, x: np.ndarray) -> None:
        if not self.needs_data:
            return
        flat = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
        if len(flat) == 0:
            raise BCLMError(f"cannot fit {_leaf(self.path)}: no data")
        if not np.isfinite(flat).all():
            raise BCLMError(f"cannot fit {_leaf(self.path)}: the data contains NaN or inf")
        lo, hi = np.percentile(flat, self.percentiles, axis=0)
        hi = np.maximum(hi, lo)
        if self._bounds_from_data():
            # A margin beyond the data gives states a little past the demonstrations their own bins, so that a
            # policy drifting out of the demonstrated range still sees how far out it is (clipping would hide it).
            self.low = np.where(self.exact, self.low, lo - self.margin * (hi - lo))
            self.high = np.where(self.exact, self.high, hi + self.margin * (hi - lo))
            self.margins = np.full(self.low.shape, self.margin)
        if self.mode == "quantile":
            self.knots = [self._fit_knots(flat[:, d], d) for d in range(flat.shape[1])]
        self.fitted = True

    def cover(self, x: np.ndarray) -> bool:
        """Widen data-fitted bounds that clip some of `x`, never narrow them, to those a fit on `x` would give,
        keeping each dimension's frame (centre and half width of the data first fitted); returns whether any
        bound moved.

        DAgger's later rounds label states off the demonstrations, which the first fit's bounds would clip.
        Widening symmetrically about the old centre keeps every value's normalised position (what the state
        token reads and a regressed action means), so a warm-started model keeps what it learned; only the bins
        get coarser, and `bclm.embeddings.reindex_numbers` moves the model's rows to the bins of their values.
        A dimension that was constant in the first data had no frame (every value read as its centre): it is
        fitted afresh."""
        if not (self.fitted and self._bounds_from_data()):
            return False
        flat = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
        if not len(flat):
            return False
        lo, hi = np.percentile(flat, self.percentiles, axis=0)
        hi = np.maximum(hi, lo)
        centre, half = self._frame()
        with np.errstate(divide="ignore", invalid="ignore"):
            reach = np.maximum(centre - (lo - self.margin * (hi - lo)), hi + self.margin * (hi - lo) - centre) / half
        clipped = ~self.exact & ((flat < self.low) | (flat > self.high)).any(axis=0)  # only where a value clips
        wider = clipped & (half > 0) & ((reach - 1) / 2 > self.margins)
        fresh = clipped & (half == 0) & (hi > lo)             # constant before: nothing learned of it to keep
        if not (wider | fresh).any():
            return False
        self.margins = np.where(wider, (reach - 1) / 2, np.where(fresh, self.margin, self.margins))
        self.low = np.where(wider, centre - half * (1 + 2 * self.margins), self.low)
        self.high = np.where(wider, centre + half * (1 + 2 * self.margins), self.high)
        self.low = np.where(fresh, lo - self.margin * (hi - lo), self.low)
        self.high = np.where(fresh, hi + self.margin * (hi - lo), self.high)
        if self.mode == "quantile":
            self.knots = [self._knots(self._inner_knots(d), d) if wider[d] else
                          self._fit_knots(flat[:, d], d) if fresh[d] else self.knots[d] for d in range(len(self.knots))]
        return True

    def _fit_knots(self, col: np.ndarray, d: int) -> tuple[np.ndarray, np.ndarray]:
        """Equal-mass bins between the percentiles: bin edges at the data's quantiles. A value the data takes
        often (a clipped torque, a resting joint) is one knot, not many, so it costs one bin, not a run of
        empty ones; its mass goes to its neighbours."""
        if self.exact[d]:
            return np.zeros(0), np.zeros(0)
        levels = min(QUANTILE_LEVELS, self.bins // 2 + 1)     # knots at least a bin apart once snapped below
        inner = np.unique(np.percentile(col, np.linspace(*self.percentiles, levels)))
        return self._knots(np.clip(inner, self.low[d], self.high[d]), d)

    def _knots(self, inner: np.ndarray, d: int) -> tuple[np.ndarray, np.ndarray]:
        """The knots of dimension d: the data's quantiles `inner`, then the margins out to the bounds."""
        below, above = self.low[d] < inner[0], self.high[d] > inner[-1]
        t0, t1 = QUANTILE_MARGIN * below, 1.0 - QUANTILE_MARGIN * above
        ts = np.linspace(t0, t1, len(inner)) if len(inner) > 1 else np.array([(t0 + t1) / 2])
        # Each knot sits at the centre of a bin, which decodes at its centre: a value the data holds often
        # comes back exactly instead of as the middle of a bin that reaches into the coarse margin.
        ts = (np.clip(np.floor(ts * self.bins), 0, self.bins - 1) + 0.5) / self.bins
        # Margin bins grow geometrically away from the data, as mu-law's do: fine just past the demonstrations,
        # where a drifting policy first goes, coarse far out.
        grow = np.geomspace(1 / 64, 1, 7)
        m_ts = np.linspace(0, 1, 8)[1:] * QUANTILE_MARGIN
        lo_x = inner[0] - grow[::-1] * (inner[0] - self.low[d]) if below else np.zeros(0)
        hi_x = inner[-1] + grow * (self.high[d] - inner[-1]) if above else np.zeros(0)
        lo_t = (QUANTILE_MARGIN - m_ts)[::-1] if below else np.zeros(0)
        hi_t = 1.0 - QUANTILE_MARGIN + m_ts if above else np.zeros(0)
        return np.concatenate([lo_x, inner, hi_x]), np.concatenate([lo_t, ts, hi_t])

    def _inner_knots(self, d: int) -> np.ndarray:
        """The data's quantiles among dimension d's knots: a margin's 7 knots reach position 0 (1) exactly,
        which a data knot, at the centre of a bin, never does."""
        xs, ts = self.knots[d]
        return xs[7 if ts[0] == 0.0 else 0:len(xs) - (7 if ts[-1] == 1.0 else 0)]

    def _interp(self, v: np.ndarray, forward: bool) -> np.ndarray:
        """Quantile mode: value -> position in [0, 1] (forward) or back, one dimension at a time."""
        out = np.zeros_like(v, dtype=np.float64)
        for d, (xs, ts) in enumerate(self.knots):
            if len(xs) > 1:
                out[:, d] = np.interp(v[:, d], xs, ts) if forward else np.interp(v[:, d], ts, xs)
            elif len(xs):
                out[:, d] = ts[0] if forward else xs[0]
        return out

    def _check_ready(self) -> None:
        if self.needs_data and not self.fitted:
            raise _not_fitted(self.path, "quantile bins (of the training data)" if self.mode == "quantile" else
                              f"'{self.bounds}' bounds (percentiles of the training data)")

    # Companding maps the normalised z in [-1, 1] to c in [-1, 1]; bins are uniform in c.
    def _compand(self, z: np.ndarray) -> np.ndarray:
        return np.sign(z) * np.log1p(self.mu * np.abs(z)) / np.log1p(self.mu)

    def _expand(self, c: np.ndarray) -> np.ndarray:
        return np.sign(c) * np.expm1(np.abs(c) * np.log1p(self.mu)) / self.mu

    def _unit(self, x: np.ndarray, width: np.ndarray) -> np.ndarray:
        """Position in [0, 1] of x inside the bounds, in the (possibly companded) binning coordinate."""
        if self.mode == "quantile":
            return self._interp(x, forward=True)
        u = np.divide(x - self.low, width, out=np.zeros_like(x), where=width > 0)
        if self.mode == "mulaw":
            u = (self._compand(2.0 * u - 1.0) + 1.0) / 2.0
        return u

    def _edge(self, t: np.ndarray, width: np.ndarray) -> np.ndarray:
        """x-space value of the binning coordinate t in [0, 1]."""
        if self.mode == "quantile":
            return self._interp(t, forward=False)
        if self.mode == "mulaw":
            t = (self._expand(2.0 * t - 1.0) + 1.0) / 2.0
        return self.low + t * width

    def encode(self, x: np.ndarray) -> np.ndarray:
        self._check_ready()
        flat = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
        flat = np.clip(flat, self.low, self.high)
        width = self.high - self.low
        ids = np.floor(self._unit(flat, width) * self.bins)
        ids = np.where(self.exact, np.rint(flat - self.low), ids)
        return np.clip(ids, 0, self.sizes() - 1).astype(np.int64)

    def bin_positions(self) -> np.ndarray:
        """(num_tokens, bins) where each bin's value sits relative to the data: 0 at the centre of the bounds,
        ±1 at the edges of the data (the bounds less the margin), growing linearly in the value beyond them."""
        self._check_ready()
        ids = np.broadcast_to(np.arange(self.bins), (self.num_tokens, self.bins)).T       # (bins, num_tokens)
        values = self.decode(ids).reshape(self.bins, -1).astype(np.float64)
        return self.normalize(values).T

    def _frame(self) -> tuple[np.ndarray, np.ndarray]:
        """(centre, half width) per dimension of the data: the bounds less the margin."""
        half = (self.high - self.low) / 2 / ((1 + 2 * self.margins) if self._bounds_from_data() else 1.0)
        return (self.low + self.high) / 2, half

    def normalize(self, x: np.ndarray) -> np.ndarray:
        """(B, num_tokens) values relative to the data, as `bin_positions` measures bins: 0 at the centre, ±1 at
        the data's edges (the regression head's targets)."""
        centre, half = self._frame()
        flat = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
        return np.divide(flat - centre, half, out=np.zeros_like(flat), where=half > 0)

    def denormalize(self, z: np.ndarray) -> np.ndarray:
        """Values of positions `z` (B, num_tokens), clipped to the bounds, in the leaf's shape and dtype."""
        centre, half = self._frame()
        x = np.clip(centre + np.asarray(z, dtype=np.float64) * half, self.low, self.high)
        if np.issubdtype(self.dtype, np.integer):
            x = np.rint(x)
        return x.astype(self.dtype).reshape((len(x), *self.shape))

    def decode(self, ids: np.ndarray) -> np.ndarray:
        self._check_ready()
        ids = np.clip(np.asarray(ids, dtype=np.int64), 0, self.sizes() - 1).astype(np.float64)
        width = self.high - self.low
        # The midpoint of the bin's edges in x-space bounds the error by half the x-space bin width,
        # which the companded-space centre would not; quantile bins decode at their centre, where their knots are.
        if self.mode == "quantile":
            mid = self._edge((ids + 0.5) / self.bins, width)
        else:
            mid = 0.5 * (self._edge(ids / self.bins, width) + self._edge((ids + 1) / self.bins, width))
        x = np.where(width > 0, mid, self.low)
        x = np.where(self.exact, self.low + ids, x)
        if np.issubdtype(self.dtype, np.integer):
            info = np.iinfo(self.dtype)
            x = np.clip(np.rint(x), max(self.low.min(), info.min), min(self.high.max(), info.max))
        return x.astype(self.dtype).reshape((len(ids), *self.shape))

    def to_dict(self) -> dict:
        return {"type": "Box", "path": self.path, "shape": list(self.shape), "dtype": self.dtype.name,
                "bins": self.bins, "mode": self.mode, "mu": self.mu, "bounds": self.bounds,
                "percentiles": list(self.percentiles), "low": floats_to_json(self.low),
                "high": floats_to_json(self.high), "exact": self.exact.tolist(),
                "needs_data": self.needs_data, "fitted": self.fitted,
                **({"margin": self.margin} if self.margin else {}),
                **({"margins": floats_to_json(self.margins)} if (self.margins != self.margin).any() else {}),
                **({"knots": [[floats_to_json(x), floats_to_json(t)] for x, t in self.knots]}
                   if self.knots else {})}

    @classmethod
    def from_dict(cls, d: dict) -> BoxCodec:
        return cls(d["path"], tuple(d["shape"]), d["dtype"], floats_from_json(d["low"]),
                   floats_from_json(d["high"]), bins=d["bins"], mode=d["mode"], mu=d["mu"],
                   bounds=d["bounds"], percentiles=tuple(d["percentiles"]), exact=np.array(d["exact"]),
                   needs_data=d["needs_data"], fitted=d["fitted"], margin=d.get("margin", 0.0),
                   knots=d.get("knots"), margins=d.get("margins"))


# --- integer leaves: mixed-radix packing ---------------------------------------------------------

class _RadixCodec:
    """Flattened integer elements, `group` consecutive ones packed into one token by mixed radix. With a
    `grid` (`tokenizer.symbol_grid`) every token has its own block of ids, its slot, so that an id says where
    in the leaf the token sits as well as what it packs (which cell of a BabyAI view)."""

    kind = "value"
    type_name: ClassVar[str] = ""

    def __init__(self, path: str, shape: tuple[int, ...], nvec: np.ndarray, start: np.ndarray, dtype: str,
                 *, group: int, value_vocab: int, grid: tuple[int, ...] = ()):
        self.path = path
        self.shape = tuple(int(s) for s in shape)
        self.nvec = np.asarray(nvec, dtype=np.int64).ravel()
        self.start = np.asarray(start, dtype=np.int64).ravel()
        self.dtype = np.dtype(dtype)
        self.group = int(group)
        self.value_vocab = int(value_vocab)
        n_tok = -(-self.nvec.size // self.group)
        pad = n_tok * self.group - self.nvec.size
        # Padding with radix-1 elements lets every group be handled as one (n_tok, group) block.
        radix = np.concatenate([self.nvec, np.ones(pad, dtype=np.int64)]).reshape(n_tok, self.group)
        self._radix = radix
        self._mult = np.cumprod(radix[:, ::-1], axis=1)[:, ::-1]
        self._mult = np.concatenate([self._mult[:, 1:], np.ones((n_tok, 1), dtype=np.int64)], axis=1)
        self._pad = pad
        self._sizes = radix.prod(axis=1)
        too_big = np.flatnonzero(self._sizes > self.value_vocab)
        if too_big.size:
            raise BCLMError(f"{_leaf(path)}: token {int(too_big[0])} packs {self.group} element(s) with "
                            f"{int(self._sizes[too_big[0]])} combinations, more than value_vocab="
                            f"{self.value_vocab}: lower `group` or raise `value_vocab`")
        self.grid = tuple(int(g) for g in grid)
        self._base = np.zeros(n_tok, dtype=np.int64)
        if self.grid:
            self._check_grid()
            self._base = np.arange(n_tok, dtype=np.int64) * self.slot_width

    @property
    def slot_width(self) -> int:
        """Ids per slot: the largest token's combinations."""
        return int(self._sizes.max())

    def _check_grid(self) -> None:
        where = f"tokenizer.symbol_grid {list(self.grid)}"
        if self._pad:
            raise BCLMError(f"{where}: tokenizer.group={self.group} does not divide the {self.nvec.size} "
                            f"elements of {_leaf(self.path)}: expected a group that does, so that every slot "
                            "packs the same elements")
        if int(np.prod(self.grid)) != self.num_tokens:
            raise BCLMError(f"{where} holds {int(np.prod(self.grid))} slots but {_leaf(self.path)} packs into "
                            f"{self.num_tokens} tokens: expected a grid whose sizes multiply to {self.num_tokens}")
        if self.num_tokens * self.slot_width > self.value_vocab:
            raise BCLMError(f"{where}: {_leaf(self.path)} needs {self.num_tokens} slots x {self.slot_width} ids = "
                            f"{self.num_tokens * self.slot_width} value ids, more than value_vocab="
                            f"{self.value_vocab}: raise tokenizer.value_vocab to at least "
                            f"{self.num_tokens * self.slot_width}")

    @property
    def num_tokens(self) -> int:
        return len(self._sizes)

    def sizes(self) -> np.ndarray:
        return self._sizes.copy()

    def packed_layouts(self) -> set[tuple[int, ...]]:
        """The element radices of the tokens that pack `group` > 1 elements (a padded last token excluded)."""
        if self.group < 2:
            return set()
        rows = self._radix[:-1] if self._pad else self._radix
        return {tuple(int(r) for r in row) for row in rows}

    def _grid_dict(self) -> dict:
        # Left out without slots, so that such files read back as older versions wrote them.
        return {"grid": list(self.grid)} if self.grid else {}

    def fit(self, x: np.ndarray) -> None:
        return None

    def encode(self, x: np.ndarray) -> np.ndarray:
        local = np.asarray(x).reshape(len(x), -1).astype(np.int64) - self.start
        bad = (local < 0) | (local >= self.nvec)
        if bad.any():
            b, i = np.argwhere(bad)[0]
            raise BCLMError(f"{_leaf(self.path)}: element {int(i)} = {int(local[b, i] + self.start[i])} is "
                            f"outside [{int(self.start[i])}, {int(self.start[i] + self.nvec[i])})")
        local = np.pad(local, ((0, 0), (0, self._pad))).reshape(len(x), self.num_tokens, self.group)
        return (local * self._mult).sum(axis=2) + self._base

    def decode(self, ids: np.ndarray) -> np.ndarray:
        ids = np.clip(np.asarray(ids, dtype=np.int64) - self._base, 0, self._sizes - 1)
        local = (ids[:, :, None] // self._mult) % self._radix
        local = local.reshape(len(ids), -1)[:, : self.nvec.size]
        return (local + self.start).astype(self.dtype).reshape((len(ids), *self.shape))


class DiscreteCodec(_RadixCodec):
    type_name = "Discrete"

    def __init__(self, path: str, n: int, start: int = 0, dtype: str = "int64", *, value_vocab: int):
        self.n = int(n)
        self.start_value = int(start)
        super().__init__(path, (), np.array([n]), np.array([start]), dtype, group=1, value_vocab=value_vocab)

    @classmethod
    def from_space(cls, space: gym.spaces.Discrete, path: str, *, value_vocab: int, **_: Any):
        return cls(path, space.n, space.start, space.dtype.name, value_vocab=value_vocab)

    def to_dict(self) -> dict:
        return {"type": "Discrete", "path": self.path, "n": self.n, "start": self.start_value,
                "dtype": self.dtype.name, "value_vocab": self.value_vocab}

    @classmethod
    def from_dict(cls, d: dict) -> DiscreteCodec:
        return cls(d["path"], d["n"], d["start"], d["dtype"], value_vocab=d["value_vocab"])


class MultiDiscreteCodec(_RadixCodec):
    type_name = "MultiDiscrete"

    @classmethod
    def from_space(cls, space: gym.spaces.MultiDiscrete, path: str, *, group: int, value_vocab: int,
                   grid: tuple[int, ...] = (), **_: Any):
        return cls(path, space.shape, space.nvec, space.start, space.dtype.name, group=group,
                   value_vocab=value_vocab, grid=grid)

    def to_dict(self) -> dict:
        return {"type": "MultiDiscrete", "path": self.path, "shape": list(self.shape),
                "nvec": self.nvec.tolist(), "start": self.start.tolist(), "dtype": self.dtype.name,
                "group": self.group, "value_vocab": self.value_vocab, **self._grid_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> MultiDiscreteCodec:
        return cls(d["path"], tuple(d["shape"]), np.array(d["nvec"]), np.array(d["start"]), d["dtype"],
                   group=d["group"], value_vocab=d["value_vocab"], grid=tuple(d.get("grid", ())))


class MultiBinaryCodec(_RadixCodec):
    type_name = "MultiBinary"

    def __init__(self, path: str, shape: tuple[int, ...], *, group: int, value_vocab: int,
                 grid: tuple[int, ...] = ()):
        size = int(np.prod(shape, dtype=np.int64))
        super().__init__(path, shape, np.full(size, 2), np.zeros(size), "int8", group=group,
                         value_vocab=value_vocab, grid=grid)

    @classmethod
    def from_space(cls, space: gym.spaces.MultiBinary, path: str, *, group: int, value_vocab: int,
                   grid: tuple[int, ...] = (), **_: Any):
        return cls(path, space.shape, group=group, value_vocab=value_vocab, grid=grid)

    def to_dict(self) -> dict:
        return {"type": "MultiBinary", "path": self.path, "shape": list(self.shape), "group": self.group,
                "value_vocab": self.value_vocab, **self._grid_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> MultiBinaryCodec:
        return cls(d["path"], tuple(d["shape"]), group=d["group"], value_vocab=d["value_vocab"],
                   grid=tuple(d.get("grid", ())))


# --- Text ---------------------------------------------------------------------------------------

def train_bpe(texts: list[str], vocab_size: int) -> Any:
    """Byte-level BPE, so any string (any charset) encodes without unknown tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


class TextCodec:
    """Fixed `max_tokens` text tokens per value, truncated or padded.

    BPE backend: local 0 is the pad, BPE id i is local i + 1, so the range stays contiguous whatever
    vocabulary size training reaches. Hugging Face backend: local ids are the base tokenizer's ids (the
    tokenizer places them at global offset 0) and the pad is its pad (or eos) token.
    """

    kind = "text"

    def __init__(self, path: str, *, max_tokens: int, vocab_size: int, bpe: Any = None,
                 hf_tokenizer: Any = None, hf_name: str | None = None):
        self.path = path
        self.max_tokens = int(max_tokens)
        self.vocab_size = int(vocab_size)
        self.bpe = bpe
        self.hf_tokenizer = hf_tokenizer
        self.hf_name = hf_name if hf_name is not None else (
            getattr(hf_tokenizer, "name_or_path", "") if hf_tokenizer is not None else None)

    @classmethod
    def from_space(cls, space: gym.spaces.Text, path: str, *, text_max_tokens: int, text_vocab_size: int,
                   text_tokenizer: Any = None, **_: Any) -> TextCodec:
        return cls(path, max_tokens=text_max_tokens, vocab_size=text_vocab_size, hf_tokenizer=text_tokenizer)

    @property
    def backend(self) -> str:
        return "hf" if self.hf_name is not None else "bpe"

    @property
    def num_tokens(self) -> int:
        return self.max_tokens

    @property
    def range_size(self) -> int:
        """Ids this codec may use; the tokenizer reserves this many (BPE) before any fitting."""
        if self.backend == "hf":
            return len(self._hf())
        return self.vocab_size + 1

    def sizes(self) -> np.ndarray:
        used = self.bpe.get_vocab_size() + 1 if self.backend == "bpe" and self.bpe is not None else None
        return np.full(self.max_tokens, used or self.range_size, dtype=np.int64)

    def _hf(self) -> Any:
        if self.hf_tokenizer is None:
            raise BCLMError(f"text {_leaf(self.path)} uses the Hugging Face tokenizer '{self.hf_name}': "
                            "pass it as text_tokenizer= when loading the bclm tokenizer")
        return self.hf_tokenizer

    def _pad_id(self) -> int:
        if self.backend == "bpe":
            return 0
        tok = self._hf()
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        return int(pad) if pad is not None else 0

    def fit(self, texts: np.ndarray) -> None:
        if self.backend == "bpe":
            self.bpe = train_bpe([str(t) for t in texts], self.vocab_size)

    def _token_lists(self, texts: list[str]) -> list[list[int]]:
        if self.backend == "hf":
            return list(self._hf()(texts, add_special_tokens=False)["input_ids"])
        if self.bpe is None:
            raise _not_fitted(self.path, "a BPE text tokenizer trained on the data")
        return [[i + 1 for i in enc.ids] for enc in self.bpe.encode_batch(texts)]

    def single_token(self, text: str) -> int | None:
        """The local id of `text` when it is exactly one token; None otherwise or before fitting."""
        if self.backend == "bpe" and self.bpe is None:
            return None
        ids = self._token_lists([text])[0]
        return int(ids[0]) if len(ids) == 1 else None

    def encode(self, x: np.ndarray) -> np.ndarray:
        lists = self._token_lists([str(t) for t in np.asarray(x, dtype=object).ravel()])
        out = np.full((len(lists), self.max_tokens), self._pad_id(), dtype=np.int64)
        for row, ids in zip(out, lists):
            ids = ids[: self.max_tokens]
            row[: len(ids)] = ids
        return out

    def decode(self, ids: np.ndarray) -> np.ndarray:
        pad = self._pad_id()
        lists = [[int(i) for i in row if i != pad] for row in np.asarray(ids, dtype=np.int64)]
        if self.backend == "hf":
            texts = self._hf().batch_decode(lists, skip_special_tokens=True)
        elif self.bpe is None:
            raise _not_fitted(self.path, "a BPE text tokenizer trained on the data")
        else:
            texts = self.bpe.decode_batch([[i - 1 for i in row] for row in lists])
        out = np.empty(len(lists), dtype=object)
        out[:] = list(texts)
        return out

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"type": "Text", "path": self.path, "max_tokens": self.max_tokens,
                             "vocab_size": self.vocab_size, "backend": self.backend}
        if self.backend == "hf":
            # The base LM's tokenizer ships with the LM itself; only its name is kept here.
            d["hf_name"] = self.hf_name
        else:
            d["bpe"] = self.bpe.to_str() if self.bpe is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict, text_tokenizer: Any = None) -> TextCodec:
        if d["backend"] == "hf":
            return cls(d["path"], max_tokens=d["max_tokens"], vocab_size=d["vocab_size"],
                       hf_tokenizer=text_tokenizer, hf_name=d["hf_name"])
        bpe = None
        if d.get("bpe") is not None:
            from tokenizers import Tokenizer

            bpe = Tokenizer.from_str(d["bpe"])
        return cls(d["path"], max_tokens=d["max_tokens"], vocab_size=d["vocab_size"], bpe=bpe)


# --- factory ------------------------------------------------------------------------------------

_BY_SPACE = ((gym.spaces.Box, BoxCodec), (gym.spaces.Discrete, DiscreteCodec),
             (gym.spaces.MultiDiscrete, MultiDiscreteCodec), (gym.spaces.MultiBinary, MultiBinaryCodec),
             (gym.spaces.Text, TextCodec))
_BY_NAME = {"Box": BoxCodec, "Discrete": DiscreteCodec, "MultiDiscrete": MultiDiscreteCodec,
            "MultiBinary": MultiBinaryCodec, "Text": TextCodec}

Codec = BoxCodec | DiscreteCodec | MultiDiscreteCodec | MultiBinaryCodec | TextCodec


def make_codec(space: gym.Space, path: str, *, bins: int, mode: str, mu: float, bounds: str,
               percentiles: tuple[float, float], margin: float, value_vocab: int, group: int, text_max_tokens: int,
               text_vocab_size: int, text_tokenizer: Any = None, grid: tuple[int, ...] = ()) -> Codec:
    if isinstance(space, gym.spaces.Box):
        return BoxCodec.from_space(space, path, bins=bins, mode=mode, mu=mu, bounds=bounds,
                                   percentiles=percentiles, margin=margin)
    if isinstance(space, gym.spaces.Discrete) and space.n > value_vocab:
        raise BCLMError(f"{_leaf(path)}: Discrete({space.n}) needs more than value_vocab={value_vocab} ids: "
                        "raise `value_vocab`")
    for space_type, codec_type in _BY_SPACE[1:]:
        if isinstance(space, space_type):
            return codec_type.from_space(space, path, group=group, value_vocab=value_vocab,
                                         text_max_tokens=text_max_tokens, text_vocab_size=text_vocab_size,
                                         text_tokenizer=text_tokenizer, grid=grid)
    raise BCLMError(f"unsupported space type {type(space).__name__} at {_leaf(path)}")


def codec_from_dict(d: dict, text_tokenizer: Any = None) -> Codec:
    kind = d.get("type")
    if kind == "Text":
        return TextCodec.from_dict(d, text_tokenizer)
    if kind not in _BY_NAME:
        raise BCLMError(f"unknown codec type {kind!r} in tokenizer file: expected one of {sorted(_BY_NAME)}")
    return _BY_NAME[kind].from_dict(d)
