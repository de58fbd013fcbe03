"""Text-only DAPT (report text alone) and the `clipmed dapt` command."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from napari_clipmed.cli import main
from napari_clipmed.dapt.config import DaptConfig
from napari_clipmed.dapt.train import train
from napari_clipmed.models.checkpoint import read_checkpoint
from napari_clipmed.models.loader import load_model

FINDINGS = {
    "fibrosis": ["Subpleural reticulation in both lower lobes.", "Traction bronchiectasis is present.",
                 "Honeycombing at the lung bases.", "Volume loss in the lower lobes."],
    "emphysema": ["Centrilobular emphysema in the upper lobes.", "Bullae at the apices.",
                  "Hyperinflated lungs with flattened diaphragm.", "Paraseptal emphysema along the pleura."],
    "effusion": ["Large right pleural effusion.", "Compressive atelectasis of the right lower lobe.",
                 "Fluid tracks into the fissure.", "Mediastinal shift to the left."],
    "normal": ["The lungs are clear.", "No pleural effusion or pneumothorax.", "Heart size is normal.",
               "No focal consolidation."],
}


def _reports(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    themes = list(FINDINGS)
    return [" ".join(rng.permutation(FINDINGS[themes[rng.integers(len(themes))]])[:3]) for _ in range(n)]


def test_text_only_training_moves_only_the_text_tower_and_lowers_held_out_loss(tmp_path):
    manifest = tmp_path / "reports.csv"
    pd.DataFrame({"text": _reports(48, seed=0)}).to_csv(manifest, index=False)
    config = DaptConfig(epochs=3, batch_size=12, lr=1e-3, warmup_steps=1, val_fraction=0.25)
    result = train("tiny-random", manifest, config, tmp_path / "run")
    assert result.mode == "text-only"
    frame = result.to_frame()
    assert "val_accuracy" not in frame.columns
    assert frame["val_loss"].iloc[-1] < frame["val_loss"].iloc[0]
    start = load_model("tiny-random").module.state_dict()
    trained = read_checkpoint(result.checkpoint).state_dict
    for key, value in start.items():
        if key.startswith("visual.") or key == "logit_scale":
            assert torch.equal(trained[key], value), key
    assert not torch.equal(trained["text_projection"], start["text_projection"])
    assert load_model("local", weights=result.checkpoint).encode_texts(["Honeycombing."]).shape == (1, 64)


def test_cli_trains_prints_the_history_and_reports_missing_files(kit, ct_patches, tmp_path, capsys):
    manifest = kit.write_manifest(tmp_path / "data", kit.subset(ct_patches[0], 4), text=True)
    code = main(["dapt", str(manifest), "--model", "tiny-random", "--out", str(tmp_path / "run"), "--epochs", "2",
                 "--batch-size", "4", "--grad-accum", "2", "--lr", "1e-3", "--val-fraction", "0.25",
                 "--templates", "a CT patch of {}; {} on CT", "--augment", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0
    final = tmp_path / "run" / "dapt-final.pt"
    assert f"checkpoint: {final}" in out and "train_loss" in out and "val_accuracy" in out
    meta = read_checkpoint(final).meta["dapt"]
    assert meta["config"]["grad_accum_steps"] == 2 and meta["config"]["augment"] is True
    assert meta["config"]["templates"] == ["a CT patch of {}", "{} on CT"] and meta["mode"] == "image-text"
    assert load_model("local", weights=final).spec.image_size == 64

    code = main(["dapt", str(manifest), "--model", "no-such-model", "--out", str(tmp_path / "run3"), "--quiet"])
    assert code == 2 and "unknown model 'no-such-model'" in capsys.readouterr().err

    (tmp_path / "data" / "img" / "p0002.png").unlink()
    code = main(["dapt", str(manifest), "--model", "tiny-random", "--out", str(tmp_path / "run2"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "clipmed dapt: error:" in err and "p0002.png" in err
    assert not (tmp_path / "run2").exists()

