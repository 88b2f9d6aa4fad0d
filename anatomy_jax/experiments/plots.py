"""Training-curve plots from metrics.jsonl, like the paper's Figs. 4-6 and 12."""

import json
from pathlib import Path

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402


def read_records(path) -> list[dict]:
  return [json.loads(l) for l in Path(path).read_text().splitlines() if l.strip()]


def training_curves(metrics_path, out_path, title: str = '') -> Path:
  """Training and validation loss (left axis) and validation accuracy (right axis) per epoch."""
  records = read_records(metrics_path)
  if not records:
    raise ValueError(f'{metrics_path} holds no epochs to plot.')
  epochs = [r['epoch'] for r in records]
  fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
  ax.plot(epochs, [r['train_loss'] for r in records], 'o-', label='training loss', color='tab:blue')
  ax.plot(epochs, [r['val_loss'] for r in records], 's-', label='validation loss', color='tab:orange')
  ax.set_xlabel('epoch')
  ax.set_ylabel('loss')
  acc = ax.twinx()
  acc.plot(epochs, [100 * r['val_accuracy'] for r in records], '^-', label='validation accuracy', color='tab:green')
  for head, style in (('loss1', ':'), ('loss2', '--')):
    if f'val_{head}_accuracy' in records[0]:
      acc.plot(epochs, [100 * r[f'val_{head}_accuracy'] for r in records], style, color='tab:green', alpha=0.6,
               label=f'validation accuracy ({head} head)')
  acc.set_ylabel('validation accuracy (%)')
  acc.set_ylim(max(0.0, min(100 * r['val_accuracy'] for r in records) - 5), 100)
  lines = ax.get_lines() + acc.get_lines()
  ax.legend(lines, [l.get_label() for l in lines], loc='center right', fontsize=8)
  ax.set_title(title or Path(metrics_path).parent.name)
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
