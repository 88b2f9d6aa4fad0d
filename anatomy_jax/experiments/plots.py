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
  acc.set_ylim(0, 100)
  lines = ax.get_lines() + acc.get_lines()
  ax.legend(lines, [l.get_label() for l in lines], loc='center right', fontsize=8)
  ax.set_title(title or Path(metrics_path).parent.name)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(out_path)
  plt.close(fig)
  return Path(out_path)
