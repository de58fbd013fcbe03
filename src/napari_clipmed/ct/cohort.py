"""Cohort evaluation: run the CT montage pipeline on every case of a CSV, then AUROC with a bootstrap CI and a ROC plot.

The CSV has a `path` column (volume file or DICOM folder, relative to the CSV's folder or
absolute) and a `label` column (1/0, yes/no, true/false, or a class name of the montage
prompts). Every file is checked before any model work: missing ones are reported together.
A case the pipeline cannot read (no lung, not a volume) is kept in the table with its error
and left out of the AUROC.
"""

from __future__ import annotations

import csv
import json
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from napari_clipmed.ct.io import read_ct
from napari_clipmed.ct.pipeline import CTMontageConfig, iter_run_ct_montage
from napari_clipmed.errors import InputError
from napari_clipmed.io.atomic import atomic_write
from napari_clipmed.progress import Progress, ProgressGenerator, run_generator

if TYPE_CHECKING:
    from napari_clipmed.distributed import ModelRef
    from napari_clipmed.models.model import ClipModel

POSITIVE = {"1", "yes", "true", "positive", "pos"}
NEGATIVE = {"0", "no", "false", "negative", "neg"}


@dataclass(frozen=True)
class CohortCase:
    path: Path
    label: int  # 1 positive, 0 negative
    raw_label: str


@dataclass(eq=False)
class CohortResult:
    """Per-case scores (P(positive class) of each montage), AUROC with its bootstrap interval, ROC curve."""

    positive_class: str
    cases: list[dict]  # one dict per case: path, label, score, probabilities, n_patches, error
    auroc: float
    ci_low: float
    ci_high: float
    ci_level: float
    n_bootstrap: int
    seed: int
    fpr: np.ndarray
    tpr: np.ndarray
    config: CTMontageConfig = field(default_factory=CTMontageConfig)
    model_name: str = ""

    def to_frame(self):  # -> pandas.DataFrame
        import pandas as pd

        return pd.DataFrame(self.cases)

    def metrics(self) -> dict:
        scored = [c for c in self.cases if not c["error"]]
        return {
            "positive_class": self.positive_class,
            "model": self.model_name,
            "n_cases": len(self.cases),
            "n_scored": len(scored),
            "n_positive": int(sum(c["label"] for c in scored)),
            "n_failed": len(self.cases) - len(scored),
            "auroc": self.auroc,
            "auroc_ci": [self.ci_low, self.ci_high],
            "ci_level": self.ci_level,
            "n_bootstrap": self.n_bootstrap,
            "seed": self.seed,
        }

    def save(self, out_dir: str | Path) -> dict[str, Path]:
        """cases.csv, metrics.json, roc.png, config.json in `out_dir` (rendered first, then written atomically)."""
        payloads = {
            "cases.csv": self.to_frame().to_csv(index=False).encode(),
            "metrics.json": json.dumps(self.metrics(), indent=2).encode(),
            "roc.png": roc_plot_png(self.fpr, self.tpr, self.auroc, (self.ci_low, self.ci_high), self.positive_class,
                                    self.ci_level),
            "config.json": json.dumps({"model": self.model_name, **self.config.to_dict()}, indent=2).encode(),
        }
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        return {name: atomic_write(out / name, data) for name, data in payloads.items()}


def read_cohort(csv_path: str | Path, class_names: Sequence[str] = ()) -> list[CohortCase]:
    """Parse and check the cohort CSV: columns, labels, every file present (all problems in one error)."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise InputError(f"cohort CSV not found: {csv_path}")
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.DictReader(fh))
    columns = {c.strip().lower(): c for c in (rows[0].keys() if rows else [])}
    if not rows or "path" not in columns or "label" not in columns:
        raise InputError(f"{csv_path} needs a header with 'path' and 'label' columns and at least one row")
    names = {n.lower(): i for i, n in enumerate(class_names)}
    cases, missing, bad = [], [], []
    for line, row in enumerate(rows, start=2):
        raw_path, raw_label = (row[columns["path"]] or "").strip(), (row[columns["label"]] or "").strip()
        path = Path(raw_path)
        if not path.is_absolute():
            path = csv_path.parent / path
        if not raw_path or not path.exists():
            missing.append(f"line {line}: {raw_path or '(empty)'}")
        label = _parse_label(raw_label, names)
        if label is None:
            bad.append(f"line {line}: {raw_label!r}")
        else:
            cases.append(CohortCase(path, label, raw_label))
    problems = []
    if missing:
        problems.append(f"{len(missing)} volume(s) not found: " + "; ".join(missing))
    if bad:
        allowed = "1/0, yes/no, true/false" + (f", or a class name ({', '.join(class_names)})" if class_names else "")
        problems.append(f"{len(bad)} label(s) not understood ({allowed}): " + "; ".join(bad))
    if problems:
        raise InputError(f"cohort {csv_path.name}: " + " | ".join(problems))
    labels = {c.label for c in cases}
    if labels != {0, 1}:
        raise InputError(f"cohort {csv_path.name}: AUROC needs positive and negative cases; all labels are {labels.pop()}")
    return cases


def _parse_label(raw: str, names: dict[str, int]) -> int | None:
    text = raw.strip().lower()
    if text in names:  # the first class is the positive one
        return 1 if names[text] == 0 else 0
    if text in POSITIVE:
        return 1
    if text in NEGATIVE:
        return 0
    return None


def iter_evaluate_cohort(
    csv_path: str | Path,
    model: ClipModel | ModelRef,
    config: CTMontageConfig | None = None,
    positive_class: str | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    ci_level: float = 0.95,
    case_dir: str | Path | None = None,
    *,
    client: object | None = None,
    work_dir: str | Path | None = None,
) -> ProgressGenerator[CohortResult]:
    """Score every case (yields Progress), then AUROC of P(`positive_class`) with a seeded bootstrap CI.

    `positive_class` defaults to the first montage class (e.g. "ILD"). With `case_dir`, each
    case's montage outputs are saved in a subfolder named after the case.

    With a Dask `client` (or a `work_dir`), each case is one item of `distributed.iter_run_items`: its row
    (and montage, when `case_dir` is given) lands in ``work_dir/items/<case>/`` as it finishes, and a rerun
    resumes. `model` may then be a `ModelRef`; workers load it once each.
    """
    from napari_clipmed.metrics import bootstrap_ci, roc_auc

    cfg = config or CTMontageConfig()
    classes = list(cfg.class_prompts)
    positive = positive_class or classes[0]
    if positive not in classes:
        raise InputError(f"positive class {positive!r} is not one of the montage classes {classes}")
    cases = read_cohort(csv_path, [positive] + [c for c in classes if c != positive])
    if client is not None or work_dir is not None:
        rows, identity = yield from _iter_cases_as_items(cases, model, cfg, positive, case_dir is not None, client,
                                                         work_dir)
    else:
        identity = model.identity  # type: ignore[union-attr]
        rows = []
        for i, case in enumerate(cases):
            row, result = yield from _iter_case(i, case, len(cases), model, cfg, positive)
            if case_dir is not None and result is not None:
                result.save(Path(case_dir) / case_key(i, case))
            rows.append(row)
    total = 100 * len(cases)
    scored = [r for r in rows if not r["error"]]
    y = np.array([r["label"] for r in scored])
    s = np.array([r["score"] for r in scored])
    if len(set(y.tolist())) < 2:
        failed = "; ".join(f"{r['case']}: {r['error']}" for r in rows if r["error"])
        raise InputError(f"AUROC needs scored positive and negative cases; failed cases: {failed}")
    ci = bootstrap_ci(lambda a, b: roc_auc(a, b), y, s, n=n_bootstrap, seed=seed, level=ci_level)
    fpr, tpr = roc_curve(y, s)
    yield Progress(total, total, "done")
    return CohortResult(positive, rows, ci.estimate, ci.low, ci.high, ci_level, n_bootstrap, seed, fpr, tpr, cfg,
                        identity)


def case_key(i: int, case: CohortCase) -> str:
    """The case's name in tables and folders: index and file name (``003_case3``)."""
    return f"{i:03d}_" + re.sub(r"[^A-Za-z0-9_.=+-]", "_", _case_name(i, case))


def _case_name(i: int, case: CohortCase) -> str:
    return case.path.name.split(".")[0] or f"case{i}"


def _empty_row(i: int, case: CohortCase, error: str = "") -> dict:
    return {"case": _case_name(i, case), "path": str(case.path), "label": case.label, "raw_label": case.raw_label,
            "score": float("nan"), "prediction": "", "n_patches": 0, "lung_volume_ml": float("nan"),
            "warnings": "", "error": error}


def _iter_case(i: int, case: CohortCase, n: int, model: object, cfg: CTMontageConfig,
               positive: str) -> ProgressGenerator[tuple[dict, object]]:
    """One case's row (and montage result, None when the case cannot be read), yielding progress in 100ths."""
    yield Progress(100 * i, 100 * n, f"case {i + 1} of {n}: {_case_name(i, case)}")
    row = _empty_row(i, case)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            volume = read_ct(case.path)
        gen = iter_run_ct_montage(volume, model, cfg)
        while True:
            try:
                step = next(gen)
            except StopIteration as stop:
                result = stop.value
                break
            yield Progress(100 * i + int(99 * step.fraction), 100 * n, f"case {i + 1} of {n}: {step.message}")
    except InputError as err:
        row["error"] = str(err)
        return row, None
    row.update(score=result.probabilities[positive], prediction=result.prediction, n_patches=len(result.patches),
               lung_volume_ml=round(result.lung_volume_ml, 1), warnings="; ".join(str(w.message) for w in caught))
    row.update({f"p_{c}": p for c, p in result.probabilities.items()})
    return row, result


def score_case(payload: tuple, model: object) -> dict[str, object]:
    """The per-item function of a distributed cohort: payload (index, case, n, config, positive, save montage)."""
    import pandas as pd

    i, case, n, cfg, positive, save_montage = payload
    row, result = run_generator(_iter_case(i, case, n, model, cfg, positive))
    outputs: dict[str, object] = {"case": pd.DataFrame([row]), "model": model.identity}  # type: ignore[attr-defined]
    if save_montage and result is not None:
        outputs["montage"] = result
    return outputs


def _iter_cases_as_items(cases: list[CohortCase], model: object, cfg: CTMontageConfig, positive: str,
                         save_montage: bool, client: object | None,
                         work_dir: str | Path | None) -> ProgressGenerator[tuple[list[dict], str]]:
    """Every case as one item (in-process or on the cluster): rows in case order (failures as error rows) and
    the model identity the workers report."""
    import hashlib

    from napari_clipmed.distributed import Item, ModelRef, iter_run_items

    if work_dir is None:
        raise InputError("a distributed cohort run needs a work folder for its per-case outputs")
    identity = model.cache_key() if isinstance(model, ModelRef) else model.identity  # type: ignore[attr-defined]
    fingerprint = hashlib.blake2b(repr((identity, cfg.to_dict(), positive)).encode(), digest_size=12).hexdigest()
    items = [Item(case_key(i, c), (i, c, len(cases), cfg, positive, save_montage)) for i, c in enumerate(cases)]
    run = yield from iter_run_items(score_case, items, work_dir, model=model, client=client,  # type: ignore[arg-type]
                                    message="cases", fingerprint=fingerprint)
    errors = {f.key: f.error for f in run.failed}
    table = run.read_table("case")
    by_key = {r.pop("item"): r for r in table.to_dict("records")}
    rows = [by_key[item.key] if item.key in by_key else _empty_row(i, case, errors.get(item.key, "not run"))
            for i, (item, case) in enumerate(zip(items, cases))]
    identities = {(run.item_dir(k) / "model").read_text(encoding="utf-8") for k in run.finished}
    return rows, identities.pop() if len(identities) == 1 else ", ".join(sorted(identities))


def evaluate_cohort(csv_path: str | Path, model: ClipModel | ModelRef, config: CTMontageConfig | None = None,
                    **kwargs: object) -> CohortResult:
    """Plain-call twin of `iter_evaluate_cohort`."""
    return run_generator(iter_evaluate_cohort(csv_path, model, config, **kwargs))  # type: ignore[arg-type]


def roc_curve(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False and true positive rates at every distinct score threshold (high to low), starting at (0, 0)."""
    y = np.asarray(y).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tps = np.cumsum(y)[last_of_tie]
    fps = (last_of_tie + 1) - tps
    return np.r_[0.0, fps / max(1, (~y).sum())], np.r_[0.0, tps / max(1, y.sum())]


def roc_plot_png(fpr: np.ndarray, tpr: np.ndarray, auroc: float, ci: tuple[float, float], positive: str,
                 level: float = 0.95) -> bytes:
    """The ROC curve as PNG bytes (matplotlib's Agg canvas; no display needed)."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.5, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=1)
    ax.plot(fpr, tpr, color="C0", linewidth=2, label=f"AUROC {auroc:.3f} ({level:.0%} CI {ci[0]:.3f}-{ci[1]:.3f})")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"ROC: {positive} vs rest")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
