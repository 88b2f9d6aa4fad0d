"""The tables of README.md and docs/*.md that come from results/ (experiments/tables.py): the real ones agree with
results/, a changed figure in a copy of results/ is caught and named, and commits are shown as recorded.

results/ itself is never written: every changed figure is made in a copy under tmp_path.
"""

import csv
import json
import shutil
from pathlib import Path

import pytest

from anatomy_jax.core.errors import UserError
from anatomy_jax.experiments import learning_curve, table2, tables
from conftest import run_program

ROOT = Path(__file__).resolve().parent.parent
COMMIT = 'a844065553c379444d4316f104023973bebdb513'


def copy_repo(tmp_path: Path) -> Path:
  """README.md, docs/ and results/ copied: what the tables are read from and written into."""
  root = tmp_path / 'repo'
  root.mkdir()
  shutil.copy(ROOT / 'README.md', root / 'README.md')
  shutil.copytree(ROOT / 'docs', root / 'docs')
  shutil.copytree(ROOT / 'results', root / 'results')
  return root


def edit_csv(path: Path, model: str, field: str, value: str, key: str = 'model') -> None:
  with open(path, newline='') as f:
    rows = list(csv.DictReader(f))
  fields = list(rows[0])
  hits = [r for r in rows if r[key] == model]
  assert hits, model
  for r in hits:
    r[field] = value
  with open(path, 'w', newline='') as f:
    writer = csv.DictWriter(f, fields)
    writer.writeheader()
    writer.writerows(rows)


def outside_blocks(path: Path) -> list[str]:
  """The lines of a markdown file outside its generated blocks (the author's prose)."""
  lines = path.read_text().splitlines()
  for _, _, first, end in reversed(tables.blocks(path)):
    del lines[first:end]
  return lines


def test_readme_and_docs_tables_agree_with_results():
  found = {(str(p.relative_to(ROOT)), name, ' '.join(sources))
           for p in tables.documents(ROOT) for name, sources, _, _ in tables.blocks(p)}
  bench = ' '.join(f'results/cpu/bench_{m}.json' for m in ('lenet', 'proposed', 'alexnet', 'googlenet'))
  cv = ' '.join(f'results/cpu/medpix5_cv/{name}.json'
                for name in ('recommended_tta_zoom', 'one_run_tta_zoom', 'recommended', 'last_checkpoint',
                             'one_run_tta_last', 'one_run', 'paper_protocol'))
  # The tables known to come from results/ are marked (a lost marker would make the check below pass vacuously).
  assert {('README.md', 'table2', 'results/cpu/table2.csv'),
          ('docs/results.md', 'table2', 'results/cpu/table2.csv'),
          ('docs/results.md', 'learning_curve', 'results/cpu/learning_curve.csv'),
          ('docs/results.md', 'speed', bench),
          ('docs/own_images.md', 'cv', cv), ('docs/results.md', 'cv', cv)} <= found
  differing = tables.regenerate(ROOT, write=False)
  assert not differing, '\n'.join(diff for _, _, diff in differing) + \
      '\nRun python -m anatomy_jax.experiments.tables to rewrite them from results/.'


def test_the_rendered_table2_is_the_one_table2_py_wrote():
  # results/cpu/table2.md is table2.py's own output: the table rendered from the CSV must be the same lines.
  written = (ROOT / 'results/cpu/table2.md').read_text().splitlines()
  rendered = tables.render('table2', ['results/cpu/table2.csv'], ROOT, 'test')
  assert rendered[:-2] == written[:len(rendered) - 2]


def test_a_changed_figure_in_results_is_named_and_rewritten(tmp_path):
  root = copy_repo(tmp_path)
  assert tables.regenerate(root, write=False) == []
  prose = {p: outside_blocks(p) for p in tables.documents(root)}
  edit_csv(root / 'results/cpu/table2.csv', 'googlenet', 'test_accuracy', '91.47540983606558')
  assert [(f, name) for f, name, _ in tables.regenerate(root, write=False)] == \
      [('README.md', 'table2'), ('docs/results.md', 'table2')]

  out = run_program('anatomy_jax.experiments.tables', '--check', f'--root={root}', timeout=300)
  assert out.returncode == 1, out.stderr[-2000:]
  error = [l for l in out.stderr.splitlines() if l.startswith('error: ')]
  assert len(error) == 1 and 'README.md: table table2 differs' in error[0] and \
      'docs/results.md: table table2 differs' in error[0], out.stderr[-2000:]
  assert '+| googlenet | 778 | 0.282 | 93.26 | 91.48 [86.31, 93.02]' in out.stdout
  assert '90.16 [86.31' in (root / 'README.md').read_text()  # --check changes nothing.

  out = run_program('anatomy_jax.experiments.tables', f'--root={root}', timeout=300)
  assert out.returncode == 0 and 'Rewrote README.md: table table2.' in out.stdout, out.stderr[-2000:]
  for path in (root / 'README.md', root / 'docs/results.md'):
    text = path.read_text()
    assert '| googlenet | 778 | 0.282 | 93.26 | 91.48 [86.31, 93.02] |' in text and '90.16 [86.31' not in text
  assert {p: outside_blocks(p) for p in tables.documents(root)} == prose  # Only the blocks were written.
  assert tables.regenerate(root, write=False) == []


def test_a_changed_learning_curve_or_benchmark_is_caught(tmp_path):
  root = copy_repo(tmp_path)
  path = root / 'results/cpu/learning_curve.csv'
  with open(path, newline='') as f:
    rows = list(csv.DictReader(f))
  rows[3]['test_accuracy_std'] = '0.02'  # lenet at 0.2: 1.5 -> 2.0
  with open(path, 'w', newline='') as f:
    writer = csv.DictWriter(f, list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  bench = root / 'results/cpu/bench_alexnet.json'
  record = json.loads(bench.read_text())
  record['eval']['images_per_s'] = 170.0
  bench.write_text(json.dumps(record))
  differing = tables.regenerate(root, write=False)
  assert [(f, name) for f, name, _ in differing] == [('docs/results.md', 'learning_curve'), ('docs/results.md', 'speed')]
  assert '+| 433 (0.2) | 86.4 ± 2.0 |' in differing[0][2] and '| 170.0 |' in differing[1][2]


def test_commits_are_shown_as_recorded():
  line = tables.commit_line({'`a.json`': COMMIT + '+dirty', '`b.json`': COMMIT + '+dirty'})
  assert line == (f'Source: `a.json`, `b.json`, measured at `{COMMIT}+dirty`: the tree had uncommitted changes, '
                  'so these figures are not reproducible from a commit.')
  assert tables.commit_line({'`t.csv`': COMMIT}) == f'Source: `t.csv`, measured at commit `{COMMIT}`.'
  assert '`e52b0d15090f` as recorded (cut to 12 characters, which hides whether the tree had uncommitted changes)' \
      in tables.commit_line({'`t.csv`': 'e52b0d15090f'})
  assert tables.commit_line({'`c.csv`': None}) == 'Source: `c.csv`, which records no commit.'
  # The real files: the speed table and Table II, re-measured at a clean commit, show it in full.
  clean = '7abadb0ef88a5d6047de60d89a1da9c84987e5c9'
  bench = 'b27bee693b79ffeeaa66b5b3e24f75f8abc463f4'  # Re-measured after issue 23's CPU changes.
  again = '19f18ca164d81a89d755acb94f39417fc9e9fded'  # LeNet and GoogLeNet after the col2im rule (b7dd421).
  assert (f'`results/cpu/bench_lenet.json`, `results/cpu/bench_googlenet.json`, measured at commit `{again}`; '
          f'`results/cpu/bench_proposed.json`, `results/cpu/bench_alexnet.json`, measured at commit `{bench}`.') in \
      (ROOT / 'docs/results.md').read_text()
  assert f'`results/cpu/table2.csv`, measured at commit `{clean}`.' in (ROOT / 'README.md').read_text()


def test_new_results_record_the_full_commit_and_the_table_shows_it(tmp_path):
  # table2.py now writes each run's full commit into table2.csv; the rendered table shows it uncut.
  row = {c: 1.0 for c in table2.COLUMNS} | {'model': 'lenet', 'num_params': 10, 'git_commit': COMMIT + '+dirty',
                                            'paper_runtime_s': None, 'paper_val_loss': None,
                                            'paper_val_accuracy': None, 'paper_test_accuracy': None}
  out = tmp_path / 'results'
  out.mkdir()
  table2.write_tables([row], out)
  body = tables.render('table2', ['results/table2.csv'], tmp_path, 'test')
  assert body[2] == '| lenet | 1 | 1.000 | 1.00 | 1.00 [1.00, 1.00] | 1.0000 | 1.0000 | 10 | 1 | — / — / — / — |'
  assert body[-1] == (f'Source: `results/table2.csv`, measured at `{COMMIT}+dirty`: the tree had uncommitted '
                      'changes, so these figures are not reproducible from a commit.')
  # The learning curve's rows carry the commits of their runs.
  runs = [{'model': 'lenet', 'fraction': 1.0, 'seed': s, 'train_size': 9, 'val_accuracy': 0.5, 'test_accuracy': 0.5,
           'git_commit': COMMIT} for s in (0, 1)]
  assert learning_curve.aggregate(runs)[0]['git_commit'] == COMMIT
  assert learning_curve.markdown_table(learning_curve.aggregate(runs))[2] == '| 9 (1) | 50.0 ± 0.0 |'


@pytest.mark.parametrize('text,message', [
    ('<!-- generated: table2 from results/cpu/table2.csv -->\n| a |\n', 'has no "<!-- end generated -->"'),
    ('| a |\n<!-- end generated -->\n', 'without a "<!-- generated: NAME from FILES -->"'),
    ('<!-- generated: tabel2 from results/cpu/table2.csv -->\n<!-- end generated -->\n',
     "no table called 'tabel2'; tables are table2, learning_curve, speed"),
    ('<!-- generated: table2 from results/cpu/nothing.csv -->\n<!-- end generated -->\n',
     'comes from results/cpu/nothing.csv, which is missing'),
])
def test_bad_markers_are_one_clear_error(tmp_path, text, message):
  root = copy_repo(tmp_path)
  (root / 'docs' / 'extra.md').write_text(text)
  with pytest.raises(UserError, match='docs/extra.md') as e:
    tables.regenerate(root, write=False)
  assert message in str(e.value)


def test_help_says_what_the_program_does():
  out = run_program('anatomy_jax.experiments.tables', '-h', timeout=300)
  assert out.returncode == 0 and out.stdout.startswith('The tables in README.md'), out.stdout[:200]
  assert '--check' in out.stdout


def test_cross_validation_rows_come_from_cv_json(tmp_path):
  folds = [{'accuracy': a, 'macro_f1': 0.5, 'case_accuracy': 0.7, 'case_pooled_accuracy': p, 'train_seconds': 100.0}
           for a, p in ((0.7, 0.8), (0.8, 0.9))]
  cv = {'setup': {'config': 'configs/own_images.py', 'folds': 5, 'members': 3, 'tta': True, 'checkpoint': 'latest'},
        'folds': folds, 'mean': {'accuracy': 0.75, 'macro_f1': 0.5, 'case_accuracy': 0.7, 'case_pooled_accuracy': 0.85,
                                 'train_seconds': 100.0},
        'std': {'accuracy': 0.0707, 'macro_f1': 0.0, 'case_accuracy': 0.0, 'case_pooled_accuracy': 0.0707},
        'provenance': {'git_commit': COMMIT}}
  path = tmp_path / 'results' / 'cv.json'
  path.parent.mkdir()
  path.write_text(json.dumps(cv))
  lines = tables.render_cv([path], tmp_path)
  assert lines[2] == ('| `own_images.py`, ensemble of 3, TTA, last checkpoint | 2 of 5 | 75.0 ± 7.1 | 85.0 ± 7.1 | '
                      '70.0 ± 0.0 | 0.500 ± 0.000 | 100 |')
  assert lines[-1] == f'Source: `results/cv.json`, measured at commit `{COMMIT}`.'
  # Overrides that change the recipe are named (not the case grouping or the start run); merged folds name
  # each part's commit.
  cv['setup']['overrides'] = ['folder.group_regex=(MPX[0-9]+)_', 'init_from=/x/src', 'class_weights=balanced']
  cv['merged_from'] = [{'folds': [0, 1], 'provenance': {'git_commit': COMMIT}},
                       {'folds': [2], 'provenance': {'git_commit': COMMIT[::-1]}}]
  path.write_text(json.dumps(cv))
  lines = tables.render_cv([path], tmp_path)
  assert lines[2].startswith('| `own_images.py` with `class_weights=balanced`, ensemble of 3, TTA, last checkpoint |')
  assert lines[-1] == (f'Source: `results/cv.json` (folds 0, 1), measured at commit `{COMMIT}`; '
                       f'`results/cv.json` (folds 2), measured at commit `{COMMIT[::-1]}`.')
  # Folds whose reports name zoomed test-time views: the label says so.
  cv['folds'][0]['tta_views'] = ['centre', 'zoom 0.84', 'zoom 1.14', 'mirrored centre']
  path.write_text(json.dumps(cv))
  assert tables.render_cv([path], tmp_path)[2].startswith(
      '| `own_images.py` with `class_weights=balanced`, ensemble of 3, TTA with zoom, last checkpoint |')
