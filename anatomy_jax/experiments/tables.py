"""The tables in README.md and docs/*.md that come from files under results/, regenerated from those files.

  python -m anatomy_jax.experiments.tables            # rewrite every generated table from results/
  python -m anatomy_jax.experiments.tables --check    # exit 1, naming file and table, where one disagrees

A generated table sits between two marker lines that name what renders it and the files it comes from:

  <!-- generated: table2 from results/cpu/table2.csv -->
  ...the table, a blank line, and the line saying at which commit the figures were measured...
  <!-- end generated -->

Renderers: `table2` (experiments/table2.py's table from table2.csv), `learning_curve` (learning_curve.csv),
`speed` (the benchmark's `--table` from bench_*.json, in the order the marker names them), `cv` (one row per
cross-validation's cv.json, experiments/cross_validate.py). Only the text
between the markers is written; the prose around it is the author's. The commit line shows each file's
commit as the file records it, never cut: '+dirty' (uncommitted changes) is said in words, and so is a
12-character commit (which hid whether the tree was dirty) or none at all.
"""

import csv
import difflib
import json
import re
from pathlib import Path

from absl import flags

from anatomy_jax.benchmark import speed
from anatomy_jax.core import cli, files
from anatomy_jax.core.errors import UserError
from anatomy_jax.experiments import learning_curve, table2

FLAGS = flags.FLAGS
ROOT = Path(__file__).resolve().parents[2]
START = re.compile(r'^<!-- generated: (\S+) from (.+?) -->$')
END = '<!-- end generated -->'
FLOAT_COLUMNS = ('runtime_s', 'val_loss', 'val_accuracy', 'test_accuracy', 'test_ci95_low', 'test_ci95_high',
                 'macro_f1', 'macro_auc', 'train_images_per_s')


def define_flags():
  """Command-line flags, defined only when run as a program (the module is also a library)."""
  flags.DEFINE_bool('check', False, 'Change nothing; exit 1 naming every table that differs from results/.')
  flags.DEFINE_string('root', str(ROOT), 'The repository whose README.md, docs/*.md and results/ are read.')


def documents(root: Path) -> list[Path]:
  """The markdown files that may hold generated tables."""
  return [p for p in [root / 'README.md', *sorted((root / 'docs').glob('*.md'))] if p.is_file()]


def _read_csv(path: Path) -> list[dict]:
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


def commit_line(recorded: dict[str, str | None]) -> str:
  """One line saying at which commit each source file's figures were measured, as the files record it.
  `recorded` maps a source (as markdown) to its commit text, None where the file records none."""
  groups: dict[str | None, list[str]] = {}
  for source, commit in recorded.items():
    groups.setdefault(commit, []).append(source)
  parts = []
  for commit, sources in groups.items():
    names = ', '.join(sources)
    if not commit or commit == 'unknown':
      parts.append(f'{names}, which record{"s" if len(sources) == 1 else ""} no commit')
    elif commit.endswith('+dirty'):
      parts.append(f'{names}, measured at `{commit}`: the tree had uncommitted changes, so these figures are not '
                   'reproducible from a commit')
    elif re.fullmatch(r'[0-9a-f]{40}', commit):
      parts.append(f'{names}, measured at commit `{commit}`')
    else:
      parts.append(f'{names}, measured at `{commit}` as recorded (cut to {len(commit)} characters, which hides '
                   'whether the tree had uncommitted changes)')
  return 'Source: ' + '; '.join(parts) + '.'


def _one_commit(rows: list[dict]) -> str | None:
  commits = sorted({c for r in rows for c in (r.get('git_commit') or '').split()})
  return ' '.join(commits) or None


def _table2_commit(path: Path, rows: list[dict], root: Path) -> tuple[str, str | None]:
  """(source as markdown, commit) for a Table II CSV. A CSV written before it had a `git_commit` column: the
  commit in the note of the table2.md beside it (where table2.py wrote it), said as coming from there."""
  commit = _one_commit(rows)
  note = path.with_suffix('.md')
  if commit is None and note.is_file():
    found = re.search(r'\bcode (\S+?)[;,]? ', note.read_text())
    if found:
      return f'`{path.relative_to(root)}` (the commit from `{note.name}` beside it)', found.group(1)
  return f'`{path.relative_to(root)}`', commit


def render_table2(sources: list[Path], root: Path) -> list[str]:
  (path,) = sources
  rows = _read_csv(path)
  for r in rows:
    r.update({k: float(r[k]) for k in FLOAT_COLUMNS}, num_params=int(r['num_params']))
    r.update({k: r[k] or None for k in ('paper_runtime_s', 'paper_val_loss', 'paper_val_accuracy',
                                         'paper_test_accuracy')})
  return table2.markdown_table(rows) + ['', commit_line(dict([_table2_commit(path, rows, root)]))]


def render_learning_curve(sources: list[Path], root: Path) -> list[str]:
  (path,) = sources
  rows = _read_csv(path)
  return learning_curve.markdown_table(rows) + ['', commit_line({f'`{path.relative_to(root)}`': _one_commit(rows)})]


def render_speed(sources: list[Path], root: Path) -> list[str]:
  records = [json.loads(p.read_text()) for p in sources]
  recorded = {f'`{p.relative_to(root)}`': r.get('git_commit') for p, r in zip(sources, records)}
  return speed.markdown_table(records).splitlines() + ['', commit_line(recorded)]


CV_PLAIN_OVERRIDES = ('folder.group_regex', 'folder.group_by', 'folder.group_csv', 'init_from', 'data_dir')


def _cv_label(setup: dict, folds: list[dict]) -> str:
  """The recipe: the config, the overrides that change what is trained (not the case grouping or where the start
  run lies), the ensemble, TTA (with zoomed views, when the folds' reports name them) and checkpoint."""
  changes = [o for o in setup.get('overrides', []) if o.split('=', 1)[0].strip() not in CV_PLAIN_OVERRIDES]
  members = setup.get('members', 1)
  parts = [f'`{Path(setup["config"]).name}`' + (f' with `{" ".join(changes)}`' if changes else '')]
  if members > 1:
    parts.append(f'ensemble of {members}')
  if setup.get('tta'):
    zoomed = any(v.startswith('zoom') for f in folds for v in f.get('tta_views', ()))
    parts.append('TTA with zoom' if zoomed else 'TTA')
  parts.append('last checkpoint' if setup.get('checkpoint') == 'latest' else 'best checkpoint')
  return ', '.join(parts)


def render_cv(sources: list[Path], root: Path) -> list[str]:
  """One row per cross-validation: mean +- std over its folds (fractions shown as %)."""
  def pct(cv, key):
    mean, std = cv['mean'].get(key), cv['std'].get(key)
    return '—' if mean is None else f'{100 * mean:.1f}' + ('' if std is None else f' ± {100 * std:.1f}')
  lines = ['| recipe | folds | accuracy (%) | case-pooled accuracy (%) | per-case accuracy (%) | macro-F1 | '
           'train time per fold (s) |', '|---|---|---|---|---|---|---|']
  recorded = {}
  for path in sources:
    cv = json.loads(path.read_text())
    setup, f1 = cv['setup'], cv['mean']['macro_f1']
    f1_std = cv['std'].get('macro_f1')
    lines.append(f'| {_cv_label(setup, cv["folds"])} | {len(cv["folds"])} of {setup["folds"]} | {pct(cv, "accuracy")} | '
                 f'{pct(cv, "case_pooled_accuracy")} | {pct(cv, "case_accuracy")} | '
                 f'{f1:.3f}{"" if f1_std is None else f" ± {f1_std:.3f}"} | {cv["mean"]["train_seconds"]:.0f} |')
    if cv.get('merged_from'):  # Folds measured apart (cross_validate --merge): each part at its own commit.
      for part in cv['merged_from']:
        recorded[f'`{path.relative_to(root)}` (folds {", ".join(map(str, part["folds"]))})'] = \
            part['provenance'].get('git_commit')
    else:
      recorded[f'`{path.relative_to(root)}`'] = (cv.get('provenance') or {}).get('git_commit')
  return lines + ['', commit_line(recorded)]


RENDERERS = {'table2': render_table2, 'learning_curve': render_learning_curve, 'speed': render_speed,
             'cv': render_cv}


def blocks(path: Path) -> list[tuple[str, list[str], int, int]]:
  """Every generated block of a markdown file: (renderer, sources, first line inside, line of the end marker)."""
  lines = path.read_text().splitlines()
  out, i = [], 0
  while i < len(lines):
    m = START.match(lines[i].strip())
    if m:
      end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == END or START.match(lines[j].strip())),
                 None)
      if end is None or lines[end].strip() != END:
        raise UserError(f'{path}:{i + 1}: "{lines[i].strip()}" has no "{END}" before the next table or the end.')
      out.append((m.group(1), m.group(2).split(), i + 1, end))
      i = end
    elif lines[i].strip() == END:
      raise UserError(f'{path}:{i + 1}: "{END}" without a "<!-- generated: NAME from FILES -->" before it.')
    i += 1
  return out


def render(name: str, sources: list[str], root: Path, where: str) -> list[str]:
  if name not in RENDERERS:
    raise UserError(f'{where}: no table called {name!r}; tables are {", ".join(RENDERERS)}.')
  paths = [root / s for s in sources]
  missing = [s for s, p in zip(sources, paths) if not p.is_file()]
  if missing:
    raise UserError(f'{where}: table {name!r} comes from {", ".join(missing)}, which is missing.')
  try:
    return RENDERERS[name](paths, root)
  except (KeyError, ValueError, json.JSONDecodeError) as e:
    raise UserError(f'{where}: table {name!r} cannot be made from {" ".join(sources)} ({type(e).__name__}: {e}).') from e


def regenerate(root: Path, write: bool) -> list[tuple[str, str, str]]:
  """Render every generated block under `root`; returns (file, table, diff) for each block that differed,
  rewriting the files when `write`."""
  changed = []
  for path in documents(root):
    lines = path.read_text().splitlines()
    new, mine = list(lines), []
    for name, sources, first, end in reversed(blocks(path)):  # From the bottom: line numbers stay right.
      rel = str(path.relative_to(root))
      body = render(name, sources, root, f'{rel}:{first}')
      if body != lines[first:end]:
        diff = '\n'.join(difflib.unified_diff(lines[first:end], body, f'{rel} ({name}, as written)',
                                              f'{name} from {" ".join(sources)}', lineterm='', n=0))
        mine.append((rel, name, diff))
        new[first:end] = body
    changed += mine[::-1]
    if write and new != lines:
      files.write_text(path, '\n'.join(new) + '\n')
  return changed


def main():
  root = Path(FLAGS.root)
  changed = regenerate(root, write=not FLAGS.check)
  if FLAGS.check:
    if changed:
      for _, _, diff in changed:
        print(diff)
      raise UserError('; '.join(f'{rel}: table {name} differs from results/' for rel, name, _ in changed) +
                      '. Run python -m anatomy_jax.experiments.tables to rewrite it from results/.')
    print('Every generated table agrees with results/.')
  else:
    for rel, name, _ in changed:
      print(f'Rewrote {rel}: table {name}.')
    if not changed:
      print('Every generated table already agreed with results/.')


if __name__ == '__main__':
  cli.run(main, __doc__, define_flags=define_flags)
