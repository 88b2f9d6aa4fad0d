"""Plots of a run: training curves (the paper's Figs. 4-6 and 12) and the confusion matrix."""

from pathlib import Path

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402


def head_names(records: list[dict]) -> list[str]:
  """Auxiliary heads whose validation accuracy the records hold (`val_<head>_accuracy`), in order."""
  return [k[len('val_'):-len('_accuracy')] for k in records[0] if k.startswith('val_') and k.endswith('_accuracy')
          and k != 'val_accuracy']


def curve_series(records: list[dict]) -> dict[str, tuple[list, list]]:
  """The training-curve plot's lines: label -> (epochs, values); losses, then accuracies in percent."""
  if not records:
    raise ValueError('No epochs to plot.')
  epochs = [r['epoch'] for r in records]
  series = {'training loss': (epochs, [r['train_loss'] for r in records]),
            'validation loss': (epochs, [r['val_loss'] for r in records]),
            'validation accuracy': (epochs, [100 * r['val_accuracy'] for r in records])}
  for head in head_names(records):
    series[f'validation accuracy ({head} head)'] = (epochs, [100 * r[f'val_{head}_accuracy'] for r in records])
  return series


def training_curves(records: list[dict], out_path, title: str = '') -> Path:
  """Training and validation loss (left axis) and validation accuracy of every head (right axis) per epoch."""
  series = curve_series(records)
  fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
  acc = ax.twinx()
  styles = iter([':', '--', '-.'] * 4)
  for label, (x, y) in series.items():
    if 'loss' in label:
      ax.plot(x, y, 'o-' if label.startswith('training') else 's-', label=label,
              color='tab:blue' if label.startswith('training') else 'tab:orange')
    elif label == 'validation accuracy':
      acc.plot(x, y, '^-', label=label, color='tab:green')
    else:
      acc.plot(x, y, next(styles), color='tab:green', alpha=0.6, label=label)
  ax.set_xlabel('epoch')
  ax.set_ylabel('loss')
  acc.set_ylabel('validation accuracy (%)')
  acc.set_ylim(max(0.0, min(min(y) for label, (_, y) in series.items() if 'accuracy' in label) - 5), 100)
  lines = ax.get_lines() + acc.get_lines()
  ax.legend(lines, [l.get_label() for l in lines], loc='center right', fontsize=8)
  ax.set_title(title)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(out_path)
  plt.close(fig)
  return Path(out_path)


def confusion_matrix(cm, class_names, out_path, title: str = '') -> Path:
  """Counts with row-normalised colour (recall per true class), each cell labelled."""
  import numpy as np
  cm = np.asarray(cm)
  norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
  k = len(class_names)
  fig, ax = plt.subplots(figsize=(1.2 + 0.8 * k, 1.0 + 0.7 * k), dpi=120)
  ax.imshow(norm, cmap='Blues', vmin=0, vmax=1)
  for i in range(k):
    for j in range(k):
      ax.text(j, i, str(cm[i, j]), ha='center', va='center', fontsize=8,
              color='white' if norm[i, j] > 0.5 else 'black')
  ax.set_xticks(range(k), class_names, rotation=45, ha='right', fontsize=8)
  ax.set_yticks(range(k), class_names, fontsize=8)
  ax.set_xlabel('predicted')
  ax.set_ylabel('true')
  ax.set_title(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(out_path)
  plt.close(fig)
  return Path(out_path)
