"""Coarse-to-fine patch search: score a coarse grid, then refine at the full grid where the best patches should be.

The image encoder is nearly all of a CT montage's time, so the only way to a faster montage is to
score fewer patches. Round 1 scores every `coarse_factor`-th position of the patch grid along each
of its three axes (in-plane and between slices: 1/8 of the patches at factor 2). Each later round
scores a share of the budget at the full grid, highest expected score first, until the top k is
stable (a round changes the chosen set by at most `stable_changes` patches), the patch budget is
spent, or `max_rounds` have run. The expected score of an unscored patch comes from a surrogate
(`priority="surrogate"`, the default): a ridge regression from cheap descriptors every patch has
(an 8 x 8 px thumbnail and its lung fraction) to the scores of the patches scored so far, refitted
each round. `priority="neighbours"` instead refines the grid neighbours of the best candidates
(the 3-D NMS picks, `candidates` of them, default 2k), ranked by the mean score of their scored
neighbours; on the sample CTs the score varies too much from one grid position to the next for
that to find the exhaustive top k within 30% of the grid (docs/ct.md).

An optional scout model scores the coarse round; the chosen model then scores the refinement,
re-scoring the scout's candidates first, and only its scores choose the montage after round 1.
The budget counts patches scored by the chosen model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from napari_clipmed.ct.ild import PatchScores, iter_score_patches, select_top_k
from napari_clipmed.ct.patches import Patches
from napari_clipmed.errors import InputError
from napari_clipmed.progress import Progress, ProgressGenerator, forward

if TYPE_CHECKING:
    from napari_clipmed.models.model import ClipModel

SEARCH_MODES: tuple[str, ...] = ("exhaustive", "coarse-to-fine")
PRIORITIES: tuple[str, ...] = ("surrogate", "neighbours")


@dataclass(frozen=True)
class SearchConfig:
    """How the patches to score are chosen; `mode="exhaustive"` scores the whole grid (the reference)."""

    mode: str = "exhaustive"
    coarse_factor: int = 2  # round 1 uses every n-th grid position along each axis
    budget: float = 0.3  # most patches the chosen model scores, as a fraction of the grid
    max_rounds: int = 4  # rounds including the coarse one
    stable_changes: int | None = 0  # stop when a round changes at most this many chosen patches; None: never
    candidates: int | None = None  # refine around this many best (NMS) patches; None: 2k
    priority: str = "surrogate"  # how unscored patches are ranked: "surrogate" or "neighbours" (see _refinement)
    scout: str | None = None  # model name that scores the coarse round (None: the chosen model)

    def __post_init__(self) -> None:
        if self.mode not in SEARCH_MODES:
            raise InputError(f"unknown search {self.mode!r}; choose {' or '.join(SEARCH_MODES)}")
        if int(self.coarse_factor) != self.coarse_factor or self.coarse_factor < 2:
            raise InputError(f"coarse_factor must be a whole number >= 2, got {self.coarse_factor}")
        if not 0.0 < self.budget <= 1.0:
            raise InputError(f"the patch budget is a fraction of the grid in (0, 1], got {self.budget}")
        if self.max_rounds < 2:
            raise InputError(f"coarse-to-fine needs at least 2 rounds (coarse + refinement), got {self.max_rounds}")
        if self.stable_changes is not None and self.stable_changes < 0:
            raise InputError(f"stable_changes must be >= 0 patches (or None), got {self.stable_changes}")
        if self.candidates is not None and self.candidates < 1:
            raise InputError(f"candidates must be at least 1, got {self.candidates}")
        if self.priority not in PRIORITIES:
            raise InputError(f"unknown refinement priority {self.priority!r}; choose {' or '.join(PRIORITIES)}")
        if self.scout is not None and self.mode == "exhaustive":
            raise InputError("a scout model only scores the coarse round of the coarse-to-fine search")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(eq=False)
class SearchState:
    """What the search has scored so far, over the whole patch grid (NaN where a patch is unscored)."""

    scores: PatchScores  # the chosen model's scores
    round_of: np.ndarray  # (N,) int: round in which the chosen model scored the patch, 0 = never
    scout: PatchScores | None = None  # the scout model's scores (NaN where unscored); None without a scout
    scout_round_of: np.ndarray | None = None  # (N,) round the scout scored the patch, 0 = never
    chosen: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    round: int = 0
    stop_reason: str = ""

    @property
    def patches_scored(self) -> int:
        return int(np.count_nonzero(self.round_of))

    @property
    def scout_patches_scored(self) -> int:
        return 0 if self.scout_round_of is None else int(np.count_nonzero(self.scout_round_of))

    def ranking(self) -> PatchScores:
        """The scores the montage is chosen by: the chosen model's, or the scout's before it has scored any."""
        if self.patches_scored == 0 and self.scout is not None:
            return self.scout
        return self.scores

    def snapshot(self) -> SearchState:
        """A copy that later rounds do not change (handed to a viewer while the search goes on)."""
        return SearchState(_copy(self.scores), self.round_of.copy(), None if self.scout is None else _copy(self.scout),
                           None if self.scout_round_of is None else self.scout_round_of.copy(),
                           self.chosen.copy(), self.round, self.stop_reason)


def _copy(s: PatchScores) -> PatchScores:
    return PatchScores(list(s.classes), s.embeddings.copy(), s.similarities.copy(), s.probabilities.copy(),
                       s.score.copy(), s.normal_classes)


@dataclass(frozen=True)
class RoundScored(Progress):
    """Progress step after a search round: `state` is a snapshot of what has been scored and chosen."""

    state: SearchState | None = None
    max_rounds: int = 1


def grid_index(patches: Patches) -> np.ndarray:
    """(N, 3) integer position of each patch in its axis's grid: (slice step, row step, column step).

    Rows and columns are multiples of an integer pixel step (found as the gcd of their spacings);
    slices are `slice_stride_mm` apart, rounded to whole voxels, so they are counted from the first.
    """
    out = np.zeros((len(patches), 3), dtype=np.int64)
    cfg = patches.config
    for a in np.unique(patches.axis):
        sel = patches.axis == a
        for j, values in ((1, patches.row[sel]), (2, patches.col[sel])):
            uniq = np.unique(values)
            step = int(np.gcd.reduce(np.diff(uniq))) if len(uniq) > 1 else 1
            out[sel, j] = (values - uniq[0]) // max(step, 1)
        step_px = max(1.0, (cfg.slice_stride_mm or cfg.stride_mm) / patches.volume.spacing[int(a)])
        sl = patches.slice_index[sel]
        out[sel, 0] = np.rint((sl - sl.min()) / step_px).astype(np.int64)
    return out


class Grid:
    """Neighbour look-ups on the patch grid: patches one grid step apart (26-neighbourhood) on the same axis."""

    def __init__(self, patches: Patches) -> None:
        self.index = grid_index(patches)
        self.axis = patches.axis
        self.lookup: dict[int, np.ndarray] = {}
        for a in np.unique(self.axis):
            sel = np.flatnonzero(self.axis == a)
            pos = self.index[sel]
            table = np.full(tuple(pos.max(axis=0) + 3), -1, dtype=np.int64)  # 1 voxel of -1 padding each side
            table[tuple((pos + 1).T)] = sel
            self.lookup[int(a)] = table

    def coarse(self, factor: int) -> np.ndarray:
        """Indices of the patches on every `factor`-th grid position along all three axes."""
        return np.flatnonzero((self.index % factor == 0).all(axis=1))

    def neighbours(self, indices: np.ndarray) -> np.ndarray:
        """(len(indices), 26) neighbour patch indices, -1 where there is no patch."""
        offsets = np.array([(i, j, k) for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)
                            if (i, j, k) != (0, 0, 0)])
        out = np.full((len(indices), len(offsets)), -1, dtype=np.int64)
        for a, table in self.lookup.items():
            rows = np.flatnonzero(self.axis[indices] == a)
            pos = self.index[indices[rows]][:, None, :] + 1 + offsets[None]
            out[rows] = table[pos[..., 0], pos[..., 1], pos[..., 2]]
        return out


def empty_scores(n: int, classes: Sequence[str], dim: int, normal_classes: Sequence[str]) -> PatchScores:
    nan = np.full
    return PatchScores(list(classes), nan((n, dim), np.nan, np.float32), nan((n, len(classes)), np.nan),
                       nan((n, len(classes)), np.nan), nan(n, np.nan), tuple(normal_classes))


def merge_scores(into: PatchScores | None, part: PatchScores, indices: np.ndarray, n: int) -> PatchScores:
    """Write the scores of patches `indices` (scored as a subset) into the whole-grid scores."""
    if into is None:
        into = empty_scores(n, part.classes, part.embeddings.shape[1], part.normal_classes)
    into.embeddings[indices] = part.embeddings
    into.similarities[indices] = part.similarities
    into.probabilities[indices] = part.probabilities
    into.score[indices] = part.score
    return into


def iter_search(
    patches: Patches,
    model: ClipModel,
    config: SearchConfig,
    k: int,
    min_distance_mm: float,
    prompts: Mapping[str, Sequence[str]],
    templates: Sequence[str],
    normal_classes: Sequence[str],
    batch_size: int = 64,
    scout_model: ClipModel | None = None,
) -> ProgressGenerator[SearchState]:
    """Coarse-to-fine search over `patches`; yields Progress, and a `RoundScored` after every round."""
    n = len(patches)
    grid = Grid(patches)
    coarse = grid.coarse(config.coarse_factor)
    if coarse.size == 0:  # no patch on the coarse grid (a tiny grid): score every patch in round 1
        coarse = np.arange(n)
    budget = max(1, math.floor(config.budget * n))
    scout = scout_model is not None
    refine_budget = budget if scout else max(0, budget - len(coarse))
    round_size = max(1, math.ceil(refine_budget / (config.max_rounds - 1)))
    total = len(coarse) + refine_budget
    n_candidates = config.candidates or 2 * k
    surrogate = Surrogate(patches) if config.priority == "surrogate" else None

    state = SearchState(empty_scores(n, list(prompts), int(model.embed_dim), normal_classes),
                        np.zeros(n, np.int64))
    if scout:
        state.scout_round_of = np.zeros(n, np.int64)
    done = 0

    def score(which: ClipModel, idx: np.ndarray, message: str) -> ProgressGenerator[PatchScores]:
        part = yield from forward(
            iter_score_patches(which, patches.subset(idx), prompts, templates, normal_classes, batch_size),
            done, total, message,
        )
        return part

    # round 1: the coarse grid
    message = f"round 1: {len(coarse)} coarse patches" + (" (scout model)" if scout else "")
    part = yield from score(scout_model if scout_model is not None else model, coarse, message)
    state.round = 1
    if scout:
        assert state.scout_round_of is not None
        state.scout = merge_scores(None, part, coarse, n)
        state.scout_round_of[coarse] = 1
    else:
        merge_scores(state.scores, part, coarse, n)
        state.round_of[coarse] = 1
    done = len(coarse)
    state.chosen = select_top_k(state.ranking().score, patches, k, min_distance_mm)
    yield RoundScored(done, total, f"round 1 of <= {config.max_rounds}: {len(coarse)} patches scored",
                      state=state.snapshot(), max_rounds=config.max_rounds)

    while True:
        if state.round >= config.max_rounds:
            state.stop_reason = "max rounds"
            break
        left = budget - state.patches_scored
        if left <= 0:
            state.stop_reason = "budget"
            break
        explore = state.scores.score.copy()
        if scout:
            unscored = state.round_of == 0
            explore[unscored] = state.scout.score[unscored]  # type: ignore[union-attr]
        picks = select_top_k(explore, patches, n_candidates, min_distance_mm)
        if surrogate is not None:
            scored_now = np.flatnonzero(~np.isnan(explore))
            estimate = surrogate.predict(scored_now, explore[scored_now])
        else:
            estimate = None
        todo = _refinement(grid, picks, explore, state.round_of == 0, min(round_size, left), estimate)
        if todo.size == 0:
            state.stop_reason = "converged"  # every neighbour of every candidate is scored
            break
        state.round += 1
        part = yield from score(model, todo, f"round {state.round}: refining {len(todo)} patches")
        merge_scores(state.scores, part, todo, n)
        state.round_of[todo] = state.round
        done = min(total, done + len(todo))
        previous = state.chosen
        state.chosen = select_top_k(state.scores.score, patches, k, min_distance_mm)
        changed = len(state.chosen) - len(np.intersect1d(previous, state.chosen))
        stable = config.stable_changes is not None and state.round > (2 if scout else 1) \
            and changed <= config.stable_changes
        yield RoundScored(done, total, f"round {state.round} of <= {config.max_rounds}: {len(todo)} patches refined, "
                          f"{changed} of the top {len(state.chosen)} changed", state=state.snapshot(),
                          max_rounds=config.max_rounds)
        if stable:
            state.stop_reason = "stable"
            break
    return state


def _refinement(grid: Grid, picks: np.ndarray, explore: np.ndarray, unscored: np.ndarray, size: int,
                estimate: np.ndarray | None = None) -> np.ndarray:
    """Up to `size` unscored patches to score next; the unscored candidates (a scout's picks) come first.

    With a surrogate `estimate` (one predicted score per patch), the rest follow by prediction.
    Without one ("neighbours"), the candidates' unscored grid neighbours follow, ranked by the mean
    score of their scored neighbours, then (when the round's share of the budget is larger) every
    other unscored patch; empty when the candidates and their neighbours are all scored.
    """
    own = picks[unscored[picks]]
    rest = np.flatnonzero(unscored)
    rest = rest[~np.isin(rest, own)]
    if estimate is not None:
        chosen = np.concatenate([own, rest[np.argsort(-estimate[rest], kind="stable")]])
        return chosen[:size].astype(np.int64)
    near = grid.neighbours(picks).ravel()
    near = np.unique(near[near >= 0])
    near = near[unscored[near] & ~np.isin(near, own)]
    if own.size + near.size == 0:
        return own
    near = near[np.argsort(-_estimate(grid, near, explore), kind="stable")]
    chosen = np.concatenate([own, near])
    if chosen.size < size:
        rest = rest[~np.isin(rest, chosen)]
        chosen = np.concatenate([chosen, rest[np.argsort(-_estimate(grid, rest, explore), kind="stable")]])
    return chosen[:size].astype(np.int64)


def _estimate(grid: Grid, indices: np.ndarray, explore: np.ndarray) -> np.ndarray:
    """Mean score of each patch's scored neighbours (-inf with none): an interpolation between grid positions."""
    around = grid.neighbours(indices)
    values = np.where(around >= 0, explore[np.maximum(around, 0)], np.nan)
    known = ~np.isnan(values)
    count = known.sum(axis=1)
    return np.where(count > 0, np.where(known, values, 0.0).sum(axis=1) / np.maximum(count, 1), -np.inf)


class Surrogate:
    """Predicts unscored patches' scores from cheap descriptors: 8 x 8 px thumbnails and lung fraction.

    A ridge regression fitted each round on the patches scored so far (the model's own scores on
    this volume), so it learns what the model responds to without running it.
    """

    def __init__(self, patches: Patches, size: int = 8, lam: float = 1.0) -> None:
        thumbs = np.empty((len(patches), size * size * 3), np.float32)
        for idx, images in patches.iter_images(batch_size=64, size=size):  # small C calls: a GUI thread gets the GIL
            thumbs[idx] = images.reshape(len(idx), -1) / 255.0
        lung = np.nan_to_num(patches.lung_fraction, nan=1.0)[:, None]
        x = np.concatenate([thumbs, lung], axis=1).astype(np.float64)
        self.x = (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-6)
        self.lam = lam

    def predict(self, idx: np.ndarray, y: np.ndarray) -> np.ndarray:
        a = self.x[idx]
        mean = float(y.mean())
        w = np.linalg.solve(a.T @ a + self.lam * len(idx) * np.eye(a.shape[1]) / 100.0, a.T @ (y - mean))
        return self.x @ w + mean
