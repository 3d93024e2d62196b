"""Recording-condition augmentations (audiocnn/training/augment_channel.py): each on a known input."""

from __future__ import annotations

import math

import pytest
import torch
import torchaudio.functional as AF

from audiocnn.config import ConfigError, compose_config, validate_config
from audiocnn.training import augment as A
from audiocnn.training import augment_channel as C

FLOOR = math.log(1e-4)
BPO = 12


def test_random_eq_is_a_smooth_bounded_curve_per_example_and_keeps_the_floor():
    torch.manual_seed(0)
    x = torch.full((8, 1, 84, 6), -2.0)
    x[:, :, 10, 3] = FLOOR  # one silent cell
    module = A.SpectrogramAugment({"eq": {"p": 1.0, "max_db": 6, "bands": 4}}, 2, FLOOR, BPO).train()
    out, _ = module(x, torch.zeros(8, dtype=torch.long))
    gain_db = (out - x) / A.DB_TO_NEPER
    assert out[:, :, 10, 3].eq(FLOOR).all()  # the floor stays the floor
    gain_db[:, :, 10, 3] = gain_db[:, :, 10, 2]
    profile = gain_db[:, 0, :, 0]
    assert torch.allclose(gain_db, profile[:, None, :, None].expand_as(gain_db), atol=1e-4)  # same in every frame
    assert profile.abs().max() <= 6 + 1e-4
    step = profile.diff(dim=1).abs()
    assert step.max() <= 12 / (83 / 3) + 1e-3  # piecewise linear: at most 2 * max_db per knot spacing per bin
    second = profile.diff(dim=1).diff(dim=1).abs()
    assert (second > 1e-3).sum(dim=1).max() <= 3 * 2  # bends only at the inner knots (2 bins around each)
    assert len({tuple(p.round(decimals=3).tolist()) for p in profile}) == 8  # a different curve per example


def test_eq_curve_interpolates_linearly_between_knots():
    curve = C.eq_curve(torch.tensor([[0.0, 6.0, -6.0]]), 5)
    assert curve[0].tolist() == pytest.approx([0.0, 3.0, 6.0, 0.0, -6.0])


def test_spectral_tilt_is_exactly_linear_in_bin_index():
    x = torch.full((3, 1, 48, 4), -3.0)
    g = torch.tensor([2.0, -1.5, 0.0])
    out = C.spectral_tilt(x, g, bins_per_octave=24, floor=FLOOR)
    gain_db = ((out - x) / C.NEPER_PER_DB)[:, 0, :, 0]
    expected = g[:, None] * (torch.arange(48) - 23.5)[None, :] / 24
    torch.testing.assert_close(gain_db, expected, atol=1e-4, rtol=0)
    slope = gain_db.diff(dim=1)
    torch.testing.assert_close(slope, (g / 24)[:, None].expand_as(slope), atol=1e-4, rtol=0)
    torch.manual_seed(0)  # the module's draws stay within +/- max_db_per_octave
    module = A.SpectrogramAugment({"tilt": {"p": 1.0, "max_db_per_octave": 2}}, 2, FLOOR, 24).train()
    drawn, _ = module(torch.full((16, 1, 48, 2), -3.0), torch.zeros(16, dtype=torch.long))
    per_octave = ((drawn + 3.0) / C.NEPER_PER_DB)[:, 0, :, 0].diff(dim=1).mean(dim=1) * 24
    assert per_octave.abs().max() <= 2 + 1e-3 and per_octave.std() > 0.1


def test_reverb_turns_an_impulse_into_a_causal_tail_with_the_drawn_time_constant():
    x = torch.full((2, 1, 3, 40), FLOOR)
    x[:, :, 1, 10] = 0.5  # an impulse in time in bin 1
    tau = torch.tensor([2.0, 5.0])
    out = C.reverb_tail(x, tau, attenuation_db=6.0, floor=FLOOR)
    assert torch.equal(out[:, :, :, :10], x[:, :, :, :10])  # nothing before the impulse
    assert torch.equal(out[:, :, [0, 2]], x[:, :, [0, 2]])  # silent bins stay silent
    torch.testing.assert_close(out[:, 0, 1, 10], x[:, 0, 1, 10])  # the direct sound
    tail = out[:, 0, 1, 11:25]  # (beyond, tau = 2 reaches the floor)
    first = 0.5 - 6 * C.NEPER_PER_DB - 1 / tau  # r * e^(-1/tau) times the impulse
    torch.testing.assert_close(tail[:, 0], first, atol=1e-5, rtol=0)
    torch.testing.assert_close(tail.diff(dim=1), (-1 / tau)[:, None].expand(2, 13), atol=1e-4, rtol=0)


def test_freq_warp_moves_a_peak_at_c_plus_d_to_c_plus_alpha_d_and_keeps_the_centre():
    x = torch.full((3, 1, 84, 2), FLOOR)
    x[:, :, 48] = 0.0  # peak at c + d, c = 40, d = 8
    x[:, :, 40] = -1.0  # a mark at the centre
    alpha = torch.tensor([1.25, 0.75, 1.0])
    out = C.freq_warp(x, alpha, torch.full((3,), 40.0), FLOOR)
    peaks = out[:, 0, :, 0].argmax(dim=1)
    assert peaks.tolist() == [50, 46, 48]  # 40 + alpha * 8
    assert out[:, 0, 40, 0].tolist() == pytest.approx([-1.0] * 3)  # the centre stays
    assert torch.equal(out[2], x[2])  # alpha = 1 is the identity
    shrunk = C.freq_warp(torch.zeros(1, 1, 84, 1), torch.tensor([0.8]), torch.tensor([0.0]), FLOOR)
    assert shrunk[0, 0, :67].eq(0).all() and shrunk[0, 0, 67:].eq(FLOOR).all()  # k / 0.8 > 83: floor


def test_lowpass_biquad_attenuates_a_sine_above_the_cutoff():
    sr = 8000
    t = torch.arange(sr) / sr
    low, high = torch.sin(2 * math.pi * 200 * t), torch.sin(2 * math.pi * 3000 * t)
    b, a = C.lowpass_coefficients(sr, torch.tensor([500.0, 500.0]), 0.707)
    out = C.waveform_filter(torch.stack([low, high]), b, a)
    rms = out[:, sr // 2:].pow(2).mean(dim=1).sqrt() / (0.5 ** 0.5)
    assert rms[0] > 0.9 and rms[1] < 0.05  # 3 kHz is ~2.6 octaves above 500 Hz: about -31 dB
    torch.testing.assert_close(out[1], AF.lowpass_biquad(high, sr, 500.0, 0.707), atol=1e-4, rtol=0)
    b, a = C.peaking_coefficients(sr, torch.tensor([1000.0]), torch.tensor([6.0]), 1.0)
    peaked = C.waveform_filter(torch.sin(2 * math.pi * 1000 * t)[None], b, a)
    assert peaked[0, sr // 2:].pow(2).mean().sqrt() / (0.5 ** 0.5) == pytest.approx(10 ** (6 / 20), rel=0.02)


def test_waveform_reverb_of_an_impulse_is_the_direct_sound_then_a_decaying_tail():
    sr, rt60 = 8000, 0.4
    generator = torch.Generator().manual_seed(0)
    ir = C.decaying_noise_ir(torch.tensor([rt60]), sr, drr_db=0.0, length=sr, generator=generator)
    impulse = torch.zeros(1, sr)
    impulse[0, 1000] = 1.0
    out = C.waveform_reverb(impulse, ir)
    assert out[0, :1000].abs().max() < 1e-5 and out[0, 1000] == pytest.approx(1.0, abs=1e-4)
    assert out[0, 1001:].pow(2).sum() == pytest.approx(1.0, rel=1e-3)  # drr 0 dB: tail energy = direct
    windows = out[0, 1001:1001 + 2400].view(6, 400).pow(2).mean(dim=1)  # 50 ms windows
    db = 10 * torch.log10(windows)
    slope = (db[-1] - db[0]) / (5 * 0.05)  # dB per second
    assert (db.diff() < 0).all() and slope.item() == pytest.approx(-60 / rt60, rel=0.2)
    module = A.WaveformAugment({"eq": {"p": 1.0}, "lowpass": {"p": 1.0}, "reverb": {"p": 1.0}}, sr).train()
    wave = torch.randn(2, sr)
    assert module(wave).shape == wave.shape and not torch.equal(module(wave), wave)
    assert module.eval()(wave) is wave


def test_channel_config_composes_and_p_zero_is_the_identity():
    cfg = compose_config(["augment=channel"])
    assert set(cfg.augment.transforms) == {"eq", "tilt", "reverb", "freq_warp"}
    validate_config(cfg)
    x = torch.randn(4, 1, 84, 16)
    off = {name: {**s, "p": 0.0} for name, s in cfg.augment.transforms.items()}
    assert torch.equal(A.SpectrogramAugment(off, 2, FLOOR, BPO).train()(x, torch.zeros(4).long())[0], x)
    out, _ = A.SpectrogramAugment(cfg.augment.transforms, 2, FLOOR, BPO).train()(x, torch.zeros(4).long())
    assert torch.isfinite(out).all() and out.min() >= FLOOR


@pytest.mark.parametrize("overrides, message", [
    (["+augment.transforms.eq.width=3"], "augment.transforms.eq.width: unknown setting; allowed: p, max_db, bands"),
    (["+augment.transforms.eq.bands=1"], "augment.transforms.eq.bands=1: must be an integer >= 2"),
    (["+augment.transforms.eq.bands=2.5"], "augment.transforms.eq.bands=2.5: must be an integer >= 2"),
    (["+augment.transforms.tilt.max_db_per_octave=-1"], "augment.transforms.tilt.max_db_per_octave=-1: must be a "
                                                        "finite number >= 0"),
    (["+augment.transforms.eq.max_db=nan"], "augment.transforms.eq.max_db=nan: must be a finite number >= 0"),
    (["+augment.transforms.reverb.min_decay_frames=9"], "augment.transforms.reverb.min_decay_frames=9: must be <= "
                                                        "max_decay_frames=8.0"),
    (["+augment.transforms.reverb.min_decay_frames=0"], "augment.transforms.reverb.min_decay_frames=0: must be > 0"),
    (["+augment.transforms.freq_warp.max_alpha=1"], "augment.transforms.freq_warp.max_alpha=1: must be < 1"),
    (["features.on_the_fly=true", "+augment.waveform.lowpass.max_hz=9000"],
     "augment.waveform.lowpass.max_hz=9000: must be below features.sr / 2 = 8000"),
    (["features.on_the_fly=true", "+augment.waveform.eq.min_hz=5000"],
     "augment.waveform.eq.min_hz=5000: must be <= max_hz=3000.0"),
    (["features.on_the_fly=true", "+augment.waveform.reverb.max_rt60_s=0.1"],
     "augment.waveform.reverb.min_rt60_s=0.2: must be <= max_rt60_s=0.1"),
])
def test_bad_channel_settings_fail_with_one_line(overrides, message):
    with pytest.raises(ConfigError) as error:  # each transform added alone, its other settings the code's defaults
        validate_config(compose_config(["augment=none", *overrides]))
    assert str(error.value).startswith(message) and "\n" not in str(error.value), str(error.value)


def test_waveform_channel_transforms_need_the_sample_rate():
    with pytest.raises(ValueError, match=r"augment\.waveform\.reverb: needs the sample rate"):
        A.WaveformAugment({"reverb": {}})


def test_on_the_fly_training_runs_the_waveform_channel_transforms_at_the_feature_rate(tmp_path, prepared_store):
    """`features.on_the_fly=true` with waveform eq, lowpass and reverb, as the train stage builds it: the module
    filters at features.sr, and a 1-batch Lightning fit feeds the front-end the changed waveforms."""
    import lightning as L

    from audiocnn.models import build_frontend, build_model
    from audiocnn.experiment import data_module, job_of
    from audiocnn.experiment import train_job
    from audiocnn.training.train import build_module
    from tests.conftest import tiny_config

    cfg = tiny_config(tmp_path, "model=cnn", "features.on_the_fly=true", "+augment.waveform.eq.p=1",
                      "+augment.waveform.lowpass.p=1", "+augment.waveform.reverb.p=1")
    for key in ("raw", "prepared"):
        cfg.paths[key] = prepared_store.paths[key]
    validate_config(cfg)
    L.seed_everything(0)
    data = data_module(cfg)
    model = build_model(cfg.model, len(data.classes), cfg.features.n_bins, frontend=build_frontend(cfg.features))
    module = build_module(train_job(job_of(cfg)), model, data)
    assert module.waveform_augment.context["sr"] == cfg.features.sr
    assert list(module.waveform_augment.settings) == ["eq", "lowpass", "reverb"]
    seen = []
    module.waveform_augment.register_forward_hook(lambda m, args, out: seen.append((m.training, args[0], out)))
    trainer = L.Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=1, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0)
    trainer.fit(module, datamodule=data)
    trained = [(clean, out) for training, clean, out in seen if training]
    assert len(trained) == 1 and trained[0][1].shape == trained[0][0].shape
    assert not torch.equal(*trained[0]) and torch.isfinite(trained[0][1]).all()
    assert all(out is clean for training, clean, out in seen if not training)
