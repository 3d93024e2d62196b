"""Augmentation: each transform's effect on a known input, p=0 and eval mode are the identity."""

from __future__ import annotations

import math

import numpy as np
import pytest
from omegaconf import OmegaConf
import torch

from audiocnn.config import ConfigError, compose_config, validate_config
from audiocnn.features.cqt import LogCQT
from audiocnn.training import augment as A
from audiocnn.training.optim import optimizer_settings

FLOOR = math.log(1e-4)
SR, HOP, FMIN, BINS, BPO = 8000, 128, 32.70, 84, 12


@pytest.fixture(scope="module")
def tone_cqt() -> torch.Tensor:
    """Log-CQT of a 1 s pure tone at 440 Hz (bin 45 from C1): `(1, 1, 84, frames)`."""
    t = torch.arange(SR) / SR
    tone = 0.5 * torch.sin(2 * math.pi * 440.0 * t)
    return LogCQT(SR, HOP, FMIN, BINS, BPO)(tone[None])[:, None]


def peak_bin(x: torch.Tensor) -> int:
    return int(x[0, 0].mean(dim=1).argmax())


@pytest.mark.parametrize("semitones", [-3, -1, 2, 5])
def test_pitch_shift_moves_a_tones_peak_by_exactly_the_shifted_bins(tone_cqt, semitones):
    bins = semitones * BPO // 12
    assert peak_bin(tone_cqt) == 45  # A4 = C1 * 2^(45 / 12)
    shifted = A.pitch_shift(tone_cqt, torch.tensor([bins]), FLOOR)
    assert peak_bin(shifted) == 45 + bins
    if bins > 0:  # vacated low bins are silence, not the wrapped-around top bins
        assert torch.all(shifted[:, :, :bins] == FLOOR)
        torch.testing.assert_close(shifted[:, :, bins:], tone_cqt[:, :, :-bins])
    else:
        assert torch.all(shifted[:, :, BINS + bins:] == FLOOR)
        torch.testing.assert_close(shifted[:, :, :BINS + bins], tone_cqt[:, :, -bins:])


def test_pitch_shift_module_uses_semitones_times_bins_per_octave_over_12():
    torch.manual_seed(0)
    x = torch.full((64, 1, 48, 4), FLOOR)
    x[:, :, 24] = 0.0  # one bright bin in the middle
    module = A.SpectrogramAugment({"pitch_shift": {"p": 1.0, "max_semitones": 2}}, 3, FLOOR, bins_per_octave=24)
    out, targets = module.train()(x, torch.zeros(64, dtype=torch.long))
    moved = out[:, 0, :, 0].argmax(dim=1) - 24
    assert set(moved.tolist()) <= set(range(-4, 5)) and len(set(moved.tolist())) > 4  # +/-2 semitones = +/-4 bins
    assert targets.tolist() == [0] * 64


def test_time_shift_moves_frames_and_fills_with_the_floor():
    x = torch.arange(10.0).view(1, 1, 1, 10).repeat(2, 1, 3, 1)
    out = A.time_shift(x, torch.tensor([3, -2]), FLOOR)
    assert out[0, 0, 0].tolist() == pytest.approx([FLOOR] * 3 + list(range(7)))
    assert out[1, 0, 0].tolist() == pytest.approx(list(range(2, 10)) + [FLOOR] * 2)


def test_frequency_and_time_masks_set_exactly_one_band_to_the_floor():
    torch.manual_seed(1)
    x = torch.randn(16, 1, 40, 30)
    freq = A.mask(x.clone(), A.FrequencyMasking(10, iid_masks=True), 1, FLOOR)
    for example, original in zip(freq[:, 0], x[:, 0]):
        changed = (example != original).any(dim=1)  # bins that differ anywhere
        rows = torch.nonzero(changed).flatten()
        assert torch.all(example[changed] == FLOOR)  # a masked bin is floor over all frames
        assert torch.equal(example[~changed], original[~changed])
        if len(rows):
            assert rows.max() - rows.min() + 1 == len(rows) < 10  # one contiguous band narrower than 10
    time = A.mask(x.clone(), A.TimeMasking(8, iid_masks=True), 1, FLOOR)
    changed = (time != x).any(dim=2, keepdim=True).expand_as(x)
    assert torch.all(time[changed] == FLOOR) and torch.equal(time[~changed], x[~changed])
    assert changed[:, 0, 0].sum(dim=1).max() < 8


def _bands(masked: torch.Tensor) -> int:
    """Number of contiguous runs of True in a 1-D bool tensor."""
    flags = masked.int()
    return int(flags[0]) + int((flags[1:] - flags[:-1] == 1).sum())


@pytest.mark.parametrize("axis", ["freq", "time"])
def test_mask_count_applies_that_many_independent_masks(axis):
    """`count: 3` puts up to three bands per example: more masked positions than one band of fewer than
    `max_bins` can ever cover, in more than one band, never more than three. Through the
    `SpectrogramAugment` entry too, so the config's `count` is what reaches `mask`."""
    width, size = 6, 96
    x = torch.randn(256, 1, size, size)
    name, dim = ("freq_mask", 3) if axis == "freq" else ("time_mask", 2)
    settings = {"p": 1.0, "count": 3, ("max_bins" if axis == "freq" else "max_frames"): width}

    def masked_positions(out: torch.Tensor) -> torch.Tensor:
        """(batch, size) bool: positions on the masked axis whose whole band is at the floor."""
        return (out[:, 0] == FLOOR).all(dim=dim - 1)

    torch.manual_seed(0)
    one = A.SpectrogramAugment({name: {**settings, "count": 1}}, 2, FLOOR, BPO).train()(x, torch.zeros(256).long())[0]
    torch.manual_seed(0)
    three = A.SpectrogramAugment({name: settings}, 2, FLOOR, BPO).train()(x, torch.zeros(256).long())[0]
    covered_one, covered_three = masked_positions(one).sum(dim=1), masked_positions(three).sum(dim=1)
    assert covered_one.max() < width  # one mask: fewer than max_bins positions, always
    assert covered_three.max() >= width, "count=3 never covered more than one mask can"
    assert covered_three.float().mean() > covered_one.float().mean()
    bands = [_bands(row) for row in masked_positions(three)]
    assert max(bands) > 1 and max(bands) <= 3
    assert max(_bands(row) for row in masked_positions(one)) <= 1
    # Unmasked positions are untouched.
    keep = ~masked_positions(three)
    keep = (keep[:, None, :, None] if axis == "freq" else keep[:, None, None, :]).expand_as(x)
    assert torch.equal(three[keep], x[keep])


def test_log_gain_adds_the_gain_and_keeps_the_floor():
    x = torch.tensor([FLOOR, -5.0, 0.0, 1.0]).view(1, 1, 4, 1).repeat(2, 1, 1, 1)
    out = A.log_gain(x, torch.tensor([20.0, -80.0]), FLOOR)
    assert out[0, 0, :, 0].tolist() == pytest.approx([FLOOR, -5 + math.log(10), math.log(10), 1 + math.log(10)])
    assert out[1, 0, 0, 0] == FLOOR and torch.all(out[1] >= FLOOR)  # -80 dB pushes everything down to the floor
    assert out[1, 0, 3, 0] == pytest.approx(max(1 - 4 * math.log(10), FLOOR))


def test_log_noise_adds_magnitude_at_the_requested_snr():
    torch.manual_seed(0)
    x = torch.zeros(2, 1, 50, 200)  # magnitude 1 everywhere
    out = A.log_noise(x, torch.tensor([0.0, 20.0]))
    assert torch.all(out >= x)
    added = out.exp() - 1  # |N(0, 1)| * level; E|N| = sqrt(2 / pi)
    assert added[0].mean() == pytest.approx(math.sqrt(2 / math.pi), rel=0.05)
    assert added[1].mean() == pytest.approx(0.1 * math.sqrt(2 / math.pi), rel=0.05)


def test_mixup_mixes_inputs_and_targets_with_the_same_weight():
    x = torch.stack([torch.full((1, 2, 3), float(v)) for v in (0, 10, 20)])
    targets = torch.eye(3)
    mixed, mixed_targets = A.mixup(x, targets, torch.tensor([0.7, 1.0, 0.25]), torch.tensor([1, 2, 0]))
    assert mixed[:, 0, 0, 0].tolist() == pytest.approx([3.0, 10.0, 5.0])  # 0.7*0+0.3*10, 10, 0.25*20+0.75*0
    torch.testing.assert_close(mixed_targets, torch.tensor([[0.7, 0.3, 0], [0, 1, 0], [0.75, 0, 0.25]]))
    assert mixed_targets.sum(dim=1).tolist() == pytest.approx([1, 1, 1])


def test_mixup_module_returns_soft_targets_the_loss_accepts():
    torch.manual_seed(0)
    module = A.SpectrogramAugment({"mixup": {"p": 1.0, "alpha": 0.4}}, 4, FLOOR, BPO).train()
    x, labels = torch.randn(8, 1, 6, 5), torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    out, targets = module(x, labels)
    assert targets.shape == (8, 4) and torch.allclose(targets.sum(dim=1), torch.ones(8))
    assert not torch.equal(out, x)
    loss = torch.nn.CrossEntropyLoss()(torch.randn(8, 4), targets)  # probabilities as targets
    assert torch.isfinite(loss)


@pytest.mark.parametrize("config", ["specaugment", "pitch_shift", "time_shift", "gain", "noise", "mixup", "combo",
                                    "channel"])
def test_p_zero_and_eval_mode_are_the_identity(config):
    cfg = compose_config([f"augment={config}"])
    transforms = {name: {**settings, "p": 0.0} for name, settings in cfg.augment.transforms.items()}
    x, labels = torch.randn(8, 1, 84, 32), torch.arange(8) % 4
    off = A.SpectrogramAugment(transforms, 4, FLOOR, BPO).train()
    out, targets = off(x, labels)
    assert torch.equal(out, x)
    assert torch.equal(targets, labels) or torch.equal(targets, torch.nn.functional.one_hot(labels, 4).float())
    on = A.SpectrogramAugment(cfg.augment.transforms, 4, FLOOR, BPO).eval()
    out, targets = on(x, labels)
    assert out is x and targets is labels


def test_combo_is_the_ablations_best_combination():
    """`augment=combo` is the README's best row, run by the ablation as a `+`-joined list."""
    best = compose_config(["augment=[specaugment,time_shift,mixup]"]).augment
    assert compose_config(["augment=combo"]).augment == best


def test_waveform_gain_and_noise():
    torch.manual_seed(0)
    wave = torch.sin(torch.linspace(0, 400, 16000)).repeat(2, 1)
    louder = A.waveform_gain(wave, torch.tensor([6.0, -20.0]))
    torch.testing.assert_close(louder[0], wave[0] * 10 ** (6 / 20))
    torch.testing.assert_close(louder[1], wave[1] * 0.1)
    noisy = A.waveform_noise(wave, torch.tensor([10.0, 30.0]))
    signal = wave.pow(2).mean(dim=1)
    snr = 10 * torch.log10(signal / (noisy - wave).pow(2).mean(dim=1))
    assert snr.tolist() == pytest.approx([10.0, 30.0], abs=0.3)
    module = A.WaveformAugment({"gain": {"p": 1.0}, "noise": {"p": 1.0}})
    assert not torch.equal(module.train()(wave), wave)
    assert module.eval()(wave) is wave
    assert torch.equal(A.WaveformAugment({"gain": {"p": 0.0}}).train()(wave), wave)


def test_augment_configs_compose_from_the_command_line():
    cfg = compose_config(["augment=[specaugment,pitch_shift]"])
    assert set(cfg.augment.transforms) == {"freq_mask", "time_mask", "pitch_shift"}
    cfg = compose_config(["augment=gain", "+augment.transforms.noise.p=0.3"])
    assert set(cfg.augment.transforms) == {"gain", "noise"}
    assert compose_config(["augment=none"]).augment.transforms == {}  # the default is [combo, channel]: tests/test_robust_recipe.py


@pytest.mark.parametrize("override, message", [
    ("+augment.transforms.wobble.p=0.5", "augment.transforms.wobble: unknown transform"),
    ("augment.transforms.pitch_shift.p=1.5", "augment.transforms.pitch_shift.p=1.5: must be between 0 and 1"),
    ("+augment.transforms.pitch_shift.semitones=2", "augment.transforms.pitch_shift.semitones: unknown setting"),
])
def test_bad_augment_settings_fail_before_any_work(override, message):
    overrides = ["augment=pitch_shift", override]
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("[", r"\[")):
        validate_config(compose_config(overrides))


def test_waveform_transforms_need_on_the_fly_features():
    with pytest.raises(ConfigError, match=r"augment\.waveform=\['gain', 'noise'\]: waveform transforms need "
                                          r"features\.on_the_fly=true"):
        validate_config(compose_config(["augment=waveform"]))


def test_unknown_augment_option_is_named():
    with pytest.raises(ConfigError, match="augment=wobble: unknown augment config"):
        compose_config(["augment=[specaugment,wobble]"])


def test_apply_to_some_picks_about_p_of_the_batch():
    torch.manual_seed(0)
    x = torch.zeros(4000, 1)
    out = A._apply_to_some(x, 0.3, lambda v: v + 1)
    assert np.isclose(out.mean().item(), 0.3, atol=0.03)


def test_classifier_trains_on_mixed_targets_and_validates_on_clean_batches():
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    from audiocnn.training.module import Classifier

    class Recorder(torch.nn.Module):
        """Linear model that records the batches it sees."""

        def __init__(self):
            super().__init__()
            self.head = torch.nn.Linear(4 * 6, 3)
            self.seen = []

        def forward(self, x):
            self.seen.append((self.training, x.detach().clone()))
            return self.head(x.flatten(1))

    torch.manual_seed(0)
    x = torch.randn(16, 1, 4, 6)
    y = torch.arange(16) % 3
    model = Recorder()
    module = Classifier(model, optimizer_settings(OmegaConf.to_container(compose_config([]).optimizer)), 3,
                        augment=A.SpectrogramAugment({"mixup": {"p": 1.0}, "gain": {"p": 1.0}}, 3, FLOOR, BPO))
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(module, loader, loader)
    train_batches = [b for training, b in model.seen if training]
    val_batches = [b for training, b in model.seen if not training]
    assert train_batches and not torch.equal(train_batches[0], x)  # augmented in training
    assert val_batches and torch.equal(val_batches[0], x)  # untouched in validation
    assert torch.isfinite(trainer.callback_metrics["train_loss"])


def test_combo_config_wires_its_transforms_into_training_only(tmp_path, prepared_store):
    """`augment=combo` as the train stage builds it (`build_module` on the composed config, a real 1-epoch
    Lightning fit on the tiny feature store): the module's augmentation holds the combo's four transforms
    with their settings; in training the model is fed the augmented batch (not the loader's) and the loss
    gets mixup's soft targets; in validation the model sees the loader's batch untouched."""
    import lightning as L

    from audiocnn.models import build_model
    from audiocnn.experiment import data_module, job_of
    from audiocnn.experiment import train_job
    from audiocnn.training.train import build_module
    from tests.conftest import tiny_config

    cfg = tiny_config(tmp_path, "augment=combo", "model=cnn")
    for key in ("raw", "prepared", "features"):
        cfg.paths[key] = prepared_store.paths[key]
    L.seed_everything(0)
    data = data_module(cfg)
    module = build_module(train_job(job_of(cfg)), build_model(cfg.model, len(data.classes), cfg.features.n_bins), data)
    combo = compose_config(["augment=combo"]).augment.transforms
    assert set(module.augment.settings) == {"time_shift", "freq_mask", "time_mask", "mixup"} == set(combo)
    for name, settings in combo.items():
        assert {k: module.augment.settings[name][k] for k in settings} == dict(settings), name

    seen = {"augment": [], "model": [], "loss": []}
    module.augment.register_forward_hook(
        lambda m, args, out: seen["augment"].append((m.training, args[0].clone(), out[0].clone())))
    module.model.register_forward_pre_hook(lambda m, args: seen["model"].append((m.training, args[0].clone())))
    module.loss.register_forward_pre_hook(lambda m, args: seen["loss"].append(args[1].clone()))
    trainer = L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0)
    trainer.fit(module, datamodule=data)

    train_inputs = [x for training, x in seen["model"] if training]
    val_inputs = [x for training, x in seen["model"] if not training]
    augmented = [(clean, out) for training, clean, out in seen["augment"] if training]
    assert len(train_inputs) == len(augmented) == 2, "the training batches did not go through the augmentation"
    for (clean, out), fed in zip(augmented, train_inputs):
        assert not torch.equal(out, clean), "combo left a training batch unchanged"
        assert torch.equal(fed, out), "the model was not fed the augmented batch"
    soft = [t for t in seen["loss"] if t.dim() == 2]
    assert len(soft) == 2, "the training loss did not get mixup's class-probability targets"
    assert any((t.max(dim=1).values < 1 - 1e-6).any() for t in soft), "no training target was mixed"
    assert all(t.dim() == 1 for t in seen["loss"][2:])  # validation: the labels

    clean_val = next(iter(data.val_dataloader()))[0]
    assert len(val_inputs) == 1 and torch.equal(val_inputs[0], clean_val)
    assert all(out is clean or torch.equal(out, clean) for training, clean, out in seen["augment"] if not training)
