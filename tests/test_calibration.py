from pathlib import Path

import pytest
import torch

from train.calibration import (
    auroc,
    expected_calibration_error,
    fit_temperature,
    open_set_report,
    reject_threshold,
    tta_probs,
)


def _synthetic(true_t: float, n: int = 4000, c: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits whose labels are drawn from softmax(logits / true_t): calibrated at true_t."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(n, c, generator=gen) * 4
    labels = torch.multinomial((logits / true_t).softmax(1), 1, generator=gen).squeeze(1)
    return logits, labels


def test_temperature_scaling_recovers_the_true_temperature() -> None:
    logits, labels = _synthetic(2.5)
    t = fit_temperature([logits], labels)
    assert abs(t - 2.5) < 0.25
    before = expected_calibration_error(tta_probs([logits], 1.0), labels)
    after = expected_calibration_error(tta_probs([logits], t), labels)
    assert before > 0.1 and after < 0.03


def test_tta_probs_averages_views() -> None:
    a, b = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    assert torch.allclose(tta_probs([a, b], 1.0), torch.tensor([[0.5, 0.5]]))


def test_auroc_and_threshold() -> None:
    known, unknown = torch.linspace(0.5, 1.0, 100), torch.linspace(0.0, 0.49, 50)
    assert auroc(known, unknown) == 1.0
    assert auroc(known, known) == 0.5
    thr = reject_threshold(known, 0.95)
    rep = open_set_report(known, unknown, thr)
    assert rep["known_accepted"] >= 0.95 - 1e-6 and rep["unknown_rejected"] == 1.0


def test_threshold_with_unknown_photos_decides_most_photos_right() -> None:
    known = torch.tensor([0.3, 0.6, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.99, 1.0])
    unknown = torch.tensor([0.1, 0.2, 0.25, 0.4, 0.5, 0.85])
    alone = reject_threshold(known, 0.8)
    assert alone == pytest.approx(0.8)  # the highest keeping 80%
    both = reject_threshold(known, 0.8, unknown)
    # 0.6 kept, every unknown but 0.85 rejected: J = 0.9 + 5/6, the best at or below 0.8;
    # midway between 0.6 and the next lower score, 0.5
    assert both == pytest.approx(0.55)
    rep = open_set_report(known, unknown, both)
    assert rep["known_accepted"] == pytest.approx(0.9)
    assert rep["unknown_rejected"] == pytest.approx(5 / 6)
    # the floor holds even when rejecting more unknowns would pay
    assert reject_threshold(known, 0.95, unknown) <= torch.sort(known).values[0].item()


def test_background_logit_folds_energy_into_the_top_probability() -> None:
    known = torch.tensor([[8.0, 0.0, 0.0], [0.0, 7.0, 0.0]])
    unknown = torch.tensor([[1.0, 0.0, 0.0]])  # one clear winner, but every logit is low
    plain = tta_probs([torch.cat([known, unknown])], 1.0)
    folded = tta_probs([torch.cat([known, unknown])], 1.0, background=3.0)
    assert torch.equal(plain.argmax(1), folded.argmax(1))  # ranking unchanged
    assert folded[2].max() < 0.2 < 0.5 < plain[2].max()  # low energy now looks unsure
    assert folded[0].max() > 0.99


def test_choose_background_only_when_it_helps() -> None:
    from train.assess import choose_background
    gen = torch.Generator().manual_seed(0)

    def sample() -> torch.Tensor:
        x = torch.randn(300, 5, generator=gen)
        x[torch.arange(300), torch.randint(0, 5, (300,), generator=gen)] += 4
        return x

    known = sample()
    labels = known.argmax(1)  # a model right on every photo, confident
    shifted = sample() - 6  # same gaps, so softmax cannot tell; all logits low (energy can)
    b = choose_background([known], [shifted], 1.0, labels)
    assert b is not None
    folded, plain = tta_probs([known], 1.0, b), tta_probs([known], 1.0)
    assert expected_calibration_error(folded, labels) <= expected_calibration_error(
        plain, labels) + 0.02  # confidences still mean what they say
    assert choose_background([known], [known.clone()], 1.0, labels) is None  # nothing to gain


@pytest.mark.parametrize("background", [None, 1.5])
def test_exported_softmax_is_the_eager_one(tmp_path: Path, background: float | None) -> None:
    """The background-logit softmax the calibration code tunes is the very one a model
    file computes: the scripted and the eager results agree."""
    from landmark.contract import load_exported
    from train.export import export_model
    from train.models import create_model
    from train.presets import EvalPreprocess
    torch.manual_seed(0)
    net = create_model("tiny_cnn", 3).eval()
    x = torch.rand(4, 3, 40, 40)
    path = export_model(net, net.preset, ["a", "b", "c"], {}, tmp_path / "m.pt", [x[0]],
                        temperature=0.7, background=background)
    with torch.no_grad():
        logits = net(EvalPreprocess(net.preset)(x))
        want = tta_probs([logits], 0.7, background)
        got = load_exported(path).module(x)
    assert torch.allclose(got, want, atol=1e-6)
    assert (got.sum(1) < 1 - 1e-3).all() == (background is not None)
