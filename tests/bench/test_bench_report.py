"""Markdown summary and plots from a hand-made tidy table."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from napari_clipmed.bench import report


def _frame() -> pd.DataFrame:
    rows = []
    for model, base in (("plip", 0.9), ("pathclip", 0.8)):
        for j, corruption in enumerate(("blur", "hue", "contrast", "markup", "brightness", "saturation", "resolution")):
            for s in range(3):
                rows.append((model, corruption, s, "zeroshot_accuracy", base - 0.1 * s - 0.01 * j, 50))
                rows.append((model, corruption, s, "retrieval_map@5", base - 0.05 * s, 50))
    return pd.DataFrame(rows, columns=report.TIDY_COLUMNS)


def test_summary_tables_hold_means_and_per_corruption_values() -> None:
    text = report.summary_markdown(_frame(), {"models": "plip, pathclip", "seed": 0}, ["zeroshot_accuracy"],
                                   skipped=[("a.png", "broken")])
    assert "- **models**: plip, pathclip" in text and "unreadable images skipped**: 1 (`a.png`" in text
    # mean over the 7 corruptions of 0.9 - 0.1 s - 0.01 j at s = 1 -> 0.8 - 0.03
    assert "| zeroshot_accuracy | plip | 0.870 | 0.770 | 0.670 |" in text
    assert "| retrieval_map@5 | pathclip | 0.800 | 0.750 | 0.700 |" in text
    assert "| pathclip | hue | 0.790 | 0.690 | 0.590 |" in text
    assert "retrieval_map@5 per corruption" not in text  # only the headline metrics get per-corruption tables


def test_plots_one_file_per_metric_with_a_panel_grid(tmp_path: Path) -> None:
    paths = report.write_plots(_frame(), tmp_path / "plots")
    assert [p.name for p in paths] == ["zeroshot_accuracy.png", "retrieval_map_at_5.png"]
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(p.name for p in paths)  # no temp files
    with Image.open(paths[0]) as im:
        assert im.format == "PNG"
        assert im.size == (1500, 580)  # 7 panels -> 5 columns x 2 rows at 3.0 x 2.6 in (+0.6 in), 100 dpi


def test_write_csv_leaves_nothing_on_failure(tmp_path: Path) -> None:
    class HalfFrame:
        def to_csv(self, path: Path, index: bool) -> None:
            Path(path).write_text("half")
            raise RuntimeError("disk full")

    target = tmp_path / "results.csv"
    with pytest.raises(RuntimeError, match="disk full"):
        report.write_csv(HalfFrame(), target)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []
