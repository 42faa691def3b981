"""Confusion matrix and scores against scikit-learn, known answers, NaN handling."""

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix as sk_confusion_matrix
from sklearn.metrics import jaccard_score, recall_score

from pccseg.train.metrics import confusion_matrix, scores_from_confusion


def random_masks(seed, shape=(3, 37, 41), num_classes=6, ignore_share=0.2):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, num_classes, shape, generator=g)
    pred = torch.randint(0, num_classes, shape, generator=g)
    target[torch.rand(shape, generator=g) < ignore_share] = 255
    return pred, target


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_confusion_matches_sklearn(seed):
    C = 6
    pred, target = random_masks(seed, num_classes=C)
    assert (target == 255).any()
    cm = confusion_matrix(pred, target, C)
    keep = target.reshape(-1) != 255
    ref = sk_confusion_matrix(target.reshape(-1)[keep].numpy(), pred.reshape(-1)[keep].numpy(), labels=range(C))
    np.testing.assert_array_equal(cm.numpy(), ref)


@pytest.mark.parametrize("seed", [0, 5])
def test_scores_match_sklearn(seed):
    C = 7
    pred, target = random_masks(seed, num_classes=C)
    # class 6 absent from both prediction and target, class 5 only predicted
    pred[pred == 6] = 0
    target[target == 6] = 1
    target[target == 5] = 2
    keep = target.reshape(-1) != 255
    t, p = target.reshape(-1)[keep].numpy(), pred.reshape(-1)[keep].numpy()
    s = scores_from_confusion(confusion_matrix(pred, target, C))

    labels = list(range(6))
    iou_ref = jaccard_score(t, p, labels=labels, average=None, zero_division=0)
    np.testing.assert_allclose(s.iou[:6], iou_ref, rtol=1e-12)
    assert s.iou[5] == 0.0                        # predicted but never true: IoU 0, counted
    assert math.isnan(s.iou[6])                    # absent from both: NaN, not counted
    assert s.miou == pytest.approx(iou_ref.mean())
    acc_ref = recall_score(t, p, labels=[0, 1, 2, 3, 4], average=None)
    np.testing.assert_allclose(s.acc[:5], acc_ref, rtol=1e-12)
    assert math.isnan(s.acc[5]) and math.isnan(s.acc[6])  # no target pixels
    assert s.macc == pytest.approx(acc_ref.mean())
    assert s.pixel_acc == pytest.approx((t == p).mean())


def test_known_answer():
    target = torch.tensor([[0, 0, 1, 1], [255, 255, 2, 2]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 2, 2, 0]])
    cm = confusion_matrix(pred, target, 4)
    assert cm.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    s = scores_from_confusion(cm, ["bg", "a", "b", "c"])
    assert s.iou[:3] == pytest.approx([1 / 3, 2 / 3, 1 / 2])
    assert math.isnan(s.iou[3])
    assert s.miou == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert s.acc[:3] == pytest.approx([1 / 2, 1.0, 1 / 2])
    assert s.pixel_acc == pytest.approx(4 / 6)
    d = s.to_dict()
    assert d["iou"][3] is None and d["class_names"] == ["bg", "a", "b", "c"]
    md = s.markdown()
    assert "| a | 66.67 | 100.00 |" in md and "| c | - | - |" in md
    rows = s.csv().splitlines()
    assert rows[0] == "class,iou,acc" and rows[4] == "c,," and rows[5].startswith("mean,0.5")


def test_all_ignored_and_bad_values():
    t = torch.full((4, 4), 255)
    cm = confusion_matrix(torch.zeros(4, 4, dtype=torch.long), t, 3)
    assert cm.sum() == 0
    s = scores_from_confusion(cm)
    assert math.isnan(s.miou) and math.isnan(s.pixel_acc)
    with pytest.raises(ValueError, match="0..2"):
        confusion_matrix(torch.zeros(2, 2, dtype=torch.long), torch.tensor([[0, 3], [1, 2]]), 3)
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(torch.zeros(2, 2), torch.zeros(2, 3), 3)
