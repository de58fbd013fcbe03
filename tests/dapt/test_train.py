"""DAPT end to end on real CT patches: training, checkpoints, loading and zero-shot together."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from napari_clipmed.dapt.config import DaptConfig
from napari_clipmed.dapt.train import iter_train, train
from napari_clipmed.errors import InputError
from napari_clipmed.models.checkpoint import read_checkpoint
from napari_clipmed.models.loader import load_model


def test_dapt_on_ct_patches_reaches_zero_shot_accuracy_on_held_out_slices(kit, ct_patches, ct_manifest, tmp_path):
    train_patches, held_out = ct_patches
    assert set(train_patches.slices).isdisjoint(held_out.slices)
    chance = kit.zero_shot_accuracy(load_model("tiny-random"), held_out)
    assert chance <= 0.5  # balanced 3 classes: the random init is near chance (1/3)

    config = DaptConfig(epochs=5, batch_size=32, lr=1e-3, warmup_steps=5, templates=(kit.template,))
    result = train("tiny-random", ct_manifest, config, tmp_path / "run")

    assert result.checkpoint == tmp_path / "run" / "dapt-final.pt"
    reloaded = load_model("local", weights=result.checkpoint)
    assert reloaded.spec.image_size == 64 and reloaded.spec.arch == "clipmed-tiny"
    accuracy = kit.zero_shot_accuracy(reloaded, held_out)
    assert accuracy >= 0.9, f"held-out zero-shot accuracy {accuracy:.3f} (random init: {chance:.3f})"

    frame = result.to_frame()
    assert list(frame["epoch"]) == [1, 2, 3, 4, 5]
    assert {"train_loss", "val_loss", "val_accuracy", "lr"} <= set(frame.columns)
    assert frame["val_loss"].iloc[-1] < frame["val_loss"].iloc[0]
    assert frame["lr"].iloc[-1] < 1e-6  # cosine decayed to zero at the last step
    # the final file holds exactly the last epoch's weights, and only the last epoch file is kept
    last = read_checkpoint(tmp_path / "run" / "dapt-epoch005.pt").state_dict
    final = read_checkpoint(result.checkpoint)
    assert all(torch.equal(last[k], v) for k, v in final.state_dict.items())
    assert final.meta["dapt"]["config"]["lr"] == 1e-3
    files = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert files == ["dapt-config.json", "dapt-epoch005.pt", "dapt-final.pt", "dapt-history.csv", "dapt-state.pt"]
    run_config = json.loads((tmp_path / "run" / "dapt-config.json").read_text())
    assert run_config["status"] == "finished" and run_config["config"] == config.to_dict()
    assert run_config["mode"] == "image-label" and run_config["classes"] == sorted(kit.classes)
    assert run_config["train_precision"] == "fp32"  # half precision is for CUDA only
    saved = pd.read_csv(tmp_path / "run" / "dapt-history.csv")
    np.testing.assert_allclose(saved["train_loss"], frame["train_loss"])


def test_interrupted_run_keeps_last_checkpoint_and_resumes_to_the_same_result(kit, ct_patches, tmp_path):
    manifest = kit.write_manifest(tmp_path / "data", kit.subset(ct_patches[0], 12))
    config = DaptConfig(epochs=3, batch_size=8, lr=1e-3, warmup_steps=2, val_fraction=0.2, templates=(kit.template,))
    reference = train("tiny-random", manifest, config, tmp_path / "whole")

    out = tmp_path / "interrupted"
    job = iter_train("tiny-random", manifest, config, out)
    saw_epoch2_saved = False
    for step in job:
        saw_epoch2_saved |= step.message.startswith("saved checkpoint") and "epoch002" in step.message
        if saw_epoch2_saved and step.message.startswith("epoch 3/3, step 2/"):
            break  # interrupt in the middle of epoch 3
    job.close()
    assert saw_epoch2_saved
    assert sorted(p.name for p in out.iterdir()) == ["dapt-config.json", "dapt-epoch002.pt", "dapt-state.pt"]
    assert load_model("local", weights=out / "dapt-epoch002.pt").spec.arch == "clipmed-tiny"

    messages, resumed = [], None
    job = iter_train("tiny-random", manifest, config, out)
    while True:
        try:
            messages.append(next(job).message)
        except StopIteration as stop:
            resumed = stop.value
            break
    assert messages[0].startswith("resuming from epoch 2 of 3")
    assert not any(m.startswith(("epoch 1/", "epoch 2/")) for m in messages)
    assert resumed.resumed_from_epoch == 2
    pd.testing.assert_frame_equal(
        resumed.to_frame().drop(columns="seconds"), reference.to_frame().drop(columns="seconds")
    )
    expected = read_checkpoint(reference.checkpoint).state_dict
    got = read_checkpoint(resumed.checkpoint).state_dict
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=1e-6, msg=key)


def test_resume_refuses_a_run_with_other_settings_and_no_resume_starts_over(kit, ct_patches, tmp_path):
    manifest = kit.write_manifest(tmp_path / "data", kit.subset(ct_patches[0], 4))
    config = DaptConfig(epochs=1, batch_size=4, lr=1e-3, val_fraction=0, templates=(kit.template,))
    train("tiny-random", manifest, config, tmp_path / "run")
    changed = DaptConfig(epochs=1, batch_size=4, lr=5e-4, val_fraction=0, templates=(kit.template,))
    with pytest.raises(InputError, match="settings differ: lr"):
        train("tiny-random", manifest, changed, tmp_path / "run")
    result = train("tiny-random", manifest, changed, tmp_path / "run", resume=False)
    assert read_checkpoint(result.checkpoint).meta["dapt"]["config"]["lr"] == 5e-4


def test_missing_image_files_are_listed_in_one_error_before_anything_is_written(kit, ct_patches, tmp_path):
    manifest = kit.write_manifest(tmp_path / "data", kit.subset(ct_patches[0], 4))
    for name in ("p0001.png", "p0005.png", "p0010.png"):
        (tmp_path / "data" / "img" / name).unlink()
    with pytest.raises(InputError) as info:
        train("tiny-random", manifest, DaptConfig(epochs=1, batch_size=4), tmp_path / "run")
    message = str(info.value)
    assert "3 of 12 image files do not exist" in message
    assert all(name in message for name in ("p0001.png", "p0005.png", "p0010.png"))
    assert not (tmp_path / "run").exists()


def test_gradient_accumulation_2x8_gives_the_same_update_as_batch_16(kit, ct_patches, tmp_path):
    manifest = kit.write_manifest(tmp_path / "data", kit.subset(ct_patches[0], 6), text=False)
    lr = 1e-3
    weights = {}
    for batch, accum in ((16, 1), (8, 2)):
        config = DaptConfig(epochs=1, batch_size=batch, grad_accum_steps=accum, lr=lr, warmup_steps=0,
                            val_fraction=0, templates=(kit.template, "{} on chest CT"))
        result = train("tiny-random", manifest, config, tmp_path / f"b{batch}")
        assert result.history[0]["step"] == 1
        weights[batch] = read_checkpoint(result.checkpoint).state_dict
    start = load_model("tiny-random").module.state_dict()
    moved = max(float((weights[16][k] - start[k]).abs().max()) for k in start)
    assert moved > 0.5 * lr  # the step did move the weights (AdamW's first step is ~lr per weight)
    for key in start:
        torch.testing.assert_close(weights[8][key], weights[16][key], rtol=0, atol=0.1 * lr, msg=key)


def test_a_clip_model_passed_in_is_trained_as_a_copy(kit, ct_patches, tmp_path):
    manifest = kit.write_manifest(tmp_path / "data", kit.subset(ct_patches[0], 4))
    model = load_model("tiny-random")
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    result = train(model, manifest, DaptConfig(epochs=1, batch_size=4, lr=1e-3, val_fraction=0), tmp_path / "run")
    assert all(torch.equal(before[k], v) for k, v in model.module.state_dict().items())
    trained = read_checkpoint(result.checkpoint).state_dict
    assert not torch.equal(trained["visual.proj"], before["visual.proj"])


@pytest.mark.parametrize("lock", ["lock_image", "lock_text"])
def test_locked_tower_stays_fixed(kit, ct_patches, tmp_path, lock):
    manifest = kit.write_manifest(tmp_path / "data", kit.subset(ct_patches[0], 4), text=True)
    config = DaptConfig(epochs=1, batch_size=6, lr=1e-3, val_fraction=0, **{lock: True})
    result = train("tiny-random", manifest, config, tmp_path / "run")
    assert result.mode == "image-text"
    start = load_model("tiny-random").module.state_dict()
    trained = read_checkpoint(result.checkpoint).state_dict
    image_keys = [k for k in start if k.startswith("visual.")]
    text_keys = [k for k in start if not k.startswith("visual.") and k != "logit_scale"]
    fixed, free = (image_keys, text_keys) if lock == "lock_image" else (text_keys, image_keys)
    assert all(torch.equal(trained[k], start[k]) for k in fixed)
    assert any(not torch.equal(trained[k], start[k]) for k in free)
    assert not torch.equal(trained["logit_scale"], start["logit_scale"])  # the temperature still learns


def test_validation_hook_metrics_join_the_history(kit, ct_patches, tmp_path):
    manifest = kit.write_manifest(tmp_path / "data", kit.subset(ct_patches[0], 4))
    calls = []

    def hook(model, epoch):
        calls.append(epoch)
        return {"mean_logit_scale": model.logit_scale}

    result = train("tiny-random", manifest, DaptConfig(epochs=2, batch_size=4, lr=1e-3, val_fraction=0.25),
                   tmp_path / "run", validate=hook)
    assert calls == [1, 2]
    frame = result.to_frame()
    assert frame["mean_logit_scale"].between(1.0, 100.0).all()
    assert frame["val_accuracy"].between(0.0, 1.0).all()
