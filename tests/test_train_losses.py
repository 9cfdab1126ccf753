import math

import pytest
import torch
import torch.nn.functional as F

from bridgeocr.errors import ConfigError
from bridgeocr.train.losses import ce_loss, combine, ctc_loss, ctc_targets, kd_loss, target_mask


def _mask():
    return torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0]], dtype=torch.bool)


def test_ce_loss_ignores_pad_and_shifts():
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 11)
    ids = torch.randint(0, 11, (2, 6))
    am = _mask()
    got = ce_loss(logits, ids, am)
    terms = []
    for b in range(2):
        for t in range(5):
            if am[b, t + 1]:
                terms.append(F.cross_entropy(logits[b, t][None], ids[b, t + 1][None]))
    assert torch.allclose(got, torch.stack(terms).mean(), atol=1e-6)
    # changing padded targets or the last logit does not change the loss
    ids2 = ids.clone()
    ids2[1, 3:] = 7
    logits2 = logits.clone()
    logits2[:, -1] += 5
    logits2[1, 2:] += 3  # position 2 of row 1 predicts a PAD target
    assert torch.allclose(ce_loss(logits2, ids2, am), got, atol=1e-6)


@pytest.mark.parametrize("tau", [1.0, 2.0, 0.5])
def test_kd_loss_matches_kl_div(tau):
    torch.manual_seed(1)
    s = torch.randn(2, 6, 13, requires_grad=True)
    t = torch.randn(2, 6, 13)
    mask = target_mask(_mask())
    got = kd_loss(s, t, mask, tau)
    log_p = F.log_softmax(s / tau, -1)
    q = F.softmax(t / tau, -1)
    per = F.kl_div(log_p, q, reduction="none").sum(-1)
    want = (per * mask).sum() / mask.sum() * tau**2
    assert torch.allclose(got, want, atol=1e-5)
    got.backward()
    assert s.grad is not None and torch.isfinite(s.grad).all()
    # masked positions get no gradient
    assert s.grad[1, 3:].abs().max() == 0


def test_kd_zero_when_equal_and_direction():
    x = torch.randn(1, 4, 9)
    m = torch.ones(1, 4, dtype=torch.bool)
    assert kd_loss(x, x, m, 1.0).abs() < 1e-6
    # KL(Q||P), not KL(P||Q): swap differs in general
    y = torch.randn(1, 4, 9) * 3
    assert not torch.allclose(kd_loss(x, y, m), kd_loss(y, x, m))
    log_p, q = F.log_softmax(x, -1), F.softmax(y, -1)
    assert torch.allclose(kd_loss(x, y, m), F.kl_div(log_p, q, reduction="none").sum(-1).mean(), atol=1e-5)


def test_kd_teacher_with_minus_inf_is_finite():
    s = torch.randn(1, 3, 5)
    t = torch.randn(1, 3, 5)
    t[..., 0] = -float("inf")
    assert torch.isfinite(kd_loss(s, t, torch.ones(1, 3, dtype=torch.bool)))


def test_combine_forms():
    ce, kd = torch.tensor(2.0), torch.tensor(4.0)
    assert combine(ce, kd, 0.5, "sum").item() == pytest.approx(4.0)
    assert combine(ce, kd, 0.25, "interpolate").item() == pytest.approx(0.75 * 2 + 0.25 * 4)
    assert combine(ce, None, 0.5, "sum").item() == pytest.approx(2.0)
    with pytest.raises(ConfigError):
        combine(ce, kd, 0.5, "product")
    with pytest.raises(ConfigError):
        kd_loss(torch.zeros(1, 1, 2), torch.zeros(1, 1, 2), torch.ones(1, 1, dtype=torch.bool), 0.0)


def test_ctc_loss_and_targets():
    # ids: BOS=1 EOS=2 PAD=0
    ids = torch.tensor([[1, 5, 6, 7, 2], [1, 8, 2, 0, 0]])
    am = ids != 0
    tg, lens = ctc_targets(ids, am, drop_ids=[0, 1, 2])
    assert lens.tolist() == [3, 1]
    assert tg[0].tolist() == [5, 6, 7] and tg[1, 0].item() == 8
    logits = torch.randn(2, 10, 12, requires_grad=True)
    frames = torch.ones(2, 10, dtype=torch.bool)
    frames[1, 6:] = False
    loss = ctc_loss(logits, frames, tg, lens, blank=0)
    assert math.isfinite(loss.item()) and loss.item() > 0
    loss.backward()
    assert logits.grad[1, 6:].abs().max() == 0
