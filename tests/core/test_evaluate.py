"""Per-digit evaluation and the comparison of two evaluations, on hand-made examples."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lora_core.errors import NonFiniteOutputs
from lora_core.evaluate import Evaluation, compare, evaluate, predict
from lora_core.preprocess import PreparedDigit, predict_probabilities

# index:          0  1  2  3  4  5  6  7
LABELS = torch.tensor([0, 1, 2, 3, 3, 9, 8, 1])
PREDS = torch.tensor([0, 1, 2, 2, 3, 9, 9, 0])


def test_from_predictions_hand_example():
    ev = Evaluation.from_predictions(PREDS, LABELS)
    assert ev.accuracy == 5 / 8
    assert ev.support == [1, 2, 1, 2, 0, 0, 0, 0, 1, 1]
    assert ev.per_digit_accuracy == [1.0, 0.5, 1.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    assert ev.wrong_counts == [0, 1, 0, 1, 0, 0, 0, 0, 1, 0]
    assert ev.misclassified == [3, 6, 7]
    assert ev.predictions == PREDS.tolist()
    confusion = [[0] * 10 for _ in range(10)]
    for t, p in [(0, 0), (1, 1), (2, 2), (3, 2), (3, 3), (9, 9), (8, 9), (1, 0)]:
        confusion[t][p] += 1
    assert ev.confusion == confusion
    summary = ev.summary()
    assert set(summary) == {"accuracy", "per_digit_accuracy", "wrong_counts", "support", "confusion", "misclassified"}
    assert summary["misclassified"] == [3, 6, 7]


def test_perfect_and_all_wrong():
    labels = torch.arange(10).repeat(3)
    perfect = Evaluation.from_predictions(labels, labels)
    assert perfect.accuracy == 1.0
    assert perfect.per_digit_accuracy == [1.0] * 10
    assert perfect.wrong_counts == [0] * 10
    assert perfect.misclassified == []
    wrong = Evaluation.from_predictions((labels + 1) % 10, labels)
    assert wrong.accuracy == 0.0
    assert wrong.wrong_counts == [3] * 10
    assert wrong.misclassified == list(range(30))
    assert all(wrong.confusion[t][(t + 1) % 10] == 3 for t in range(10))


def test_weakest_digit_is_lowest_accuracy_then_lowest_digit():
    labels = torch.arange(10).repeat(4)
    preds = labels.clone()
    preds[labels == 7] = torch.tensor([7, 0, 0, 7])  # 7: 50%
    preds[labels == 3] = torch.tensor([3, 0, 0, 3])  # 3: 50%
    preds[labels == 5] = torch.tensor([5, 5, 5, 0])  # 5: 75%
    ev = Evaluation.from_predictions(preds, labels)
    assert ev.per_digit_accuracy[3] == ev.per_digit_accuracy[7] == 0.5
    assert ev.weakest_digit == 3


def test_compare_deltas():
    before = Evaluation.from_predictions(PREDS, LABELS)
    after_preds = torch.tensor([0, 1, 2, 3, 3, 9, 9, 2])  # fixes index 3, breaks nothing new, 7 still wrong
    after = Evaluation.from_predictions(after_preds, LABELS)
    diff = compare(before, after)
    assert diff["accuracy_delta"] == pytest.approx(1 / 8)
    assert diff["per_digit_delta"][3] == pytest.approx(0.5)
    assert diff["per_digit_delta"][1] == 0.0
    assert diff["wrong_counts_delta"] == [0, 0, 0, -1, 0, 0, 0, 0, 0, 0]
    assert diff["fixed"] == [3]
    assert diff["broken"] == []
    assert diff["confusion_delta"][3][2] == -1 and diff["confusion_delta"][3][3] == 1
    assert diff["confusion_delta"][1][0] == -1 and diff["confusion_delta"][1][2] == 1

    back = compare(after, before)
    assert back["fixed"] == [] and back["broken"] == [3]
    assert back["accuracy_delta"] == pytest.approx(-1 / 8)
    same = compare(before, before)
    assert same["accuracy_delta"] == 0 and same["fixed"] == same["broken"] == []
    assert same["confusion_delta"] == [[0] * 10 for _ in range(10)]


class _Lookup(nn.Module):
    """A 'model' that predicts the digit stored in the first input column."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot(x[:, 0].long(), 10).float() + self.dummy


def test_evaluate_and_predict_in_batches_keep_order():
    labels = torch.arange(5003) % 10
    x = torch.zeros(5003, 3)
    x[:, 0] = labels.float()
    x[::7, 0] = 0  # every 7th image predicted as 0
    model = _Lookup()
    model.train()
    logits = predict(model, x, batch_size=1000)
    assert logits.shape == (5003, 10)
    assert torch.equal(logits.argmax(1), x[:, 0].long())
    assert model.training  # mode restored
    ev = evaluate(model, x, labels)
    wrong = [i for i in range(0, 5003, 7) if labels[i] != 0]
    assert ev.misclassified == wrong
    assert ev.accuracy == pytest.approx(1 - len(wrong) / 5003)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 9), st.integers(0, 9)), min_size=1, max_size=200))
def test_from_predictions_agrees_with_a_plain_count(pairs):
    labels = torch.tensor([t for t, _ in pairs])
    preds = torch.tensor([p for _, p in pairs])
    ev = Evaluation.from_predictions(preds, labels)
    n = len(pairs)
    assert ev.accuracy == pytest.approx(sum(t == p for t, p in pairs) / n)
    for d in range(10):
        support = sum(t == d for t, _ in pairs)
        correct = sum(t == p == d for t, p in pairs)
        assert ev.support[d] == support
        assert ev.wrong_counts[d] == support - correct
        assert ev.per_digit_accuracy[d] == (pytest.approx(correct / support) if support else 0.0)
        assert ev.confusion[d] == [sum(t == d and p == q for t, p in pairs) for q in range(10)]
    assert ev.misclassified == [i for i, (t, p) in enumerate(pairs) if t != p]
    assert sum(map(sum, ev.confusion)) == n


def test_no_prediction_is_read_from_outputs_that_are_not_finite():
    model = nn.Linear(784, 10)
    x = torch.zeros(7, 784)
    x[2, 0], x[5, 1] = 2.0, -2.0
    with torch.no_grad():
        model.weight.zero_()
        model.weight[3, 0] = 3e38  # finite weights, yet the logits of x[2] and x[5] overflow: inf and -inf
        model.weight[4, 1] = 3e38
    for call in (lambda: predict(model, x), lambda: evaluate(model, x, torch.zeros(7, dtype=torch.long))):
        with pytest.raises(NonFiniteOutputs, match="^the model's outputs are NaN or infinite for 2 of 7 inputs, so no"):
            call()
    with pytest.raises(NonFiniteOutputs, match="for 1 of 1 inputs"):
        predict_probabilities(model, PreparedDigit(np.zeros((28, 28), np.float32), x[2:3], inverted=False))
    assert predict(model, x[:2]).shape == (2, 10)  # the finite rows alone are fine
