import torch

from mmfuse.metrics import confusion_matrix, metrics_from_confusion


def test_confusion_matrix_rows_are_targets():
    cm = confusion_matrix(torch.tensor([0, 1, 1]), torch.tensor([0, 0, 1]), 2)
    assert cm.tolist() == [[1, 1], [0, 1]]


def test_accuracy_and_macro_f1_by_hand():
    preds, targets = torch.tensor([0, 0, 1, 2, 2, 2]), torch.tensor([0, 1, 1, 2, 2, 0])
    m = metrics_from_confusion(confusion_matrix(preds, targets, 3))
    assert m["accuracy"] == 4 / 6
    # class 0: tp 1, fp 1, fn 1 -> 0.5; class 1: tp 1, fp 0, fn 1 -> 2/3; class 2: tp 2, fp 1, fn 0 -> 0.8
    assert abs(m["macro_f1"] - (0.5 + 2 / 3 + 0.8) / 3) < 1e-9


def test_macro_f1_ignores_classes_never_seen():
    m = metrics_from_confusion(confusion_matrix(torch.tensor([1, 1]), torch.tensor([1, 1]), 5))
    assert m == {"accuracy": 1.0, "macro_f1": 1.0, "count": 2}
