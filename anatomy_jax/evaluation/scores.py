"""Classification metrics beyond accuracy: per-class precision/recall/F1, ROC AUC, confidence intervals."""

import math

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
  z = logits - logits.max(axis=-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=-1, keepdims=True)


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
  z = logits - logits.max(axis=-1, keepdims=True)
  log_p = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
  return float(-np.mean(log_p[np.arange(len(labels)), labels]))


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
  """counts[true, predicted]."""
  return np.bincount(labels * num_classes + preds, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def per_class(cm: np.ndarray) -> dict[str, np.ndarray]:
  """Precision, recall, F1 and support of each class (0 where undefined, e.g. a class never predicted)."""
  tp = np.diag(cm).astype(np.float64)
  predicted, support = cm.sum(axis=0), cm.sum(axis=1)
  precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
  recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
  denom = precision + recall
  f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
  return {'precision': precision, 'recall': recall, 'f1': f1, 'support': support}


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
  """Area under the ROC curve: the probability that a random positive scores above a random negative
  (ties count one half), from the Mann-Whitney rank statistic. NaN when either class is absent."""
  n_pos, n_neg = int(positive.sum()), int((~positive).sum())
  if n_pos == 0 or n_neg == 0:
    return float('nan')
  order = np.argsort(scores, kind='mergesort')
  sorted_scores = scores[order]
  ranks = np.empty(len(scores), np.float64)
  i = 0
  while i < len(scores):  # Average ranks over ties.
    j = i
    while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
      j += 1
    ranks[order[i:j + 1]] = (i + j) / 2 + 1
    i = j + 1
  u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2
  return float(u / (n_pos * n_neg))


def wilson_interval(correct: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
  """95% Wilson score interval for a proportion (sound near 0 and 1, where accuracies here live)."""
  if n == 0:
    return float('nan'), float('nan')
  p = correct / n
  centre = (p + z * z / (2 * n)) / (1 + z * z / n)
  half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
  return max(0.0, centre - half), min(1.0, centre + half)


def classification_report(logits: np.ndarray, labels: np.ndarray, class_names: list[str]) -> dict:
  """Everything `evaluate` reports for one head's logits."""
  k = len(class_names)
  preds = logits.argmax(axis=-1)
  probs = softmax(logits)
  cm = confusion_matrix(labels, preds, k)
  pc = per_class(cm)
  correct = int((preds == labels).sum())
  aucs = [roc_auc(probs[:, c], labels == c) for c in range(k)]
  present = pc['support'] > 0
  return {
      'num_examples': int(len(labels)),
      'accuracy': correct / max(len(labels), 1),
      'accuracy_ci95': list(wilson_interval(correct, len(labels))),
      'loss': cross_entropy(logits, labels),
      'macro_f1': float(pc['f1'][present].mean()) if present.any() else float('nan'),
      'macro_auc': float(np.nanmean(aucs)) if not all(math.isnan(a) for a in aucs) else float('nan'),
      # Macro averages cover the classes with examples here; a report must say which were left out.
      'macro_over_classes': int(present.sum()),
      'classes_without_examples': [name for name, p in zip(class_names, present) if not p],
      'per_class': {name: {'precision': float(pc['precision'][c]), 'recall': float(pc['recall'][c]),
                           'f1': float(pc['f1'][c]), 'auc': aucs[c], 'support': int(pc['support'][c])}
                    for c, name in enumerate(class_names)},
      'confusion_matrix': cm.tolist(),
  }


def log_probs(probs: np.ndarray) -> np.ndarray:
  """Probabilities back to logits (up to a constant), for the reports that take logits; 0 stays finite."""
  return np.log(np.maximum(probs, 1e-30))


def pool_by_case(probs: np.ndarray, groups: np.ndarray) -> np.ndarray:
  """Every image's class probabilities replaced by the mean over its case's images: one answer per case, given to
  each of its images (the label belongs to the case, and its images are views of it)."""
  _, index = np.unique(groups, return_inverse=True)
  sums = np.zeros((index.max() + 1, probs.shape[-1]), np.float64)
  np.add.at(sums, index, probs)
  return (sums / np.bincount(index)[:, None])[index].astype(probs.dtype)


def case_report(probs: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> dict:
  """Accuracy per case (patient, study): each case's answer is the class most of its images are given (ties:
  the highest summed probability), its truth the class most of its images have. With a 95% Wilson interval
  over cases, the number of cases, and how many cases hold images of more than one class."""
  preds = probs.argmax(axis=-1)
  correct, mixed, cases = 0, 0, sorted(set(groups.tolist()))
  for case in cases:
    members = groups == case
    votes = np.bincount(preds[members], minlength=probs.shape[-1]).astype(np.float64)
    votes += 1e-6 * probs[members].sum(axis=0) / max(members.sum(), 1)  # Breaks ties, never outvotes an image.
    truth = np.bincount(labels[members], minlength=probs.shape[-1])
    mixed += int((truth > 0).sum() > 1)
    correct += int(votes.argmax() == truth.argmax())
  return {'num_cases': len(cases), 'accuracy': correct / max(len(cases), 1),
          'accuracy_ci95': list(wilson_interval(correct, len(cases))), 'mixed_cases': mixed}
