"""Case-grouped K-fold cross-validation: folds that keep cases whole and test every image once, the runner that
trains each fold (resumable) and its table."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from anatomy_jax import data as datasets
from anatomy_jax.core import config as settings
from anatomy_jax.core.errors import UserError
from anatomy_jax.data import splits
from anatomy_jax.evaluation import inference, scores
from anatomy_jax.evaluation import report as report_lib
from anatomy_jax.experiments import cross_validate
from anatomy_jax.training import train
from conftest import REPO, pattern

CLASSES = ('disc', 'horizontal', 'vertical')
LENET_TINY = f'{settings.CONFIGS / "lenet.py"}:tiny'
GROUPS = 'folder.group_regex=(case[0-9]+)_'


def make_case_folder(root, cases_per_class=7, size=28, seed=0):
  """root/<class>/caseNNN_i.png: cases of 1 to 4 images each (a case's images alike, each with its own noise)."""
  rng = np.random.default_rng(seed)
  order = {'horizontal': 0, 'vertical': 1, 'disc': 2}
  n = 0
  for name in CLASSES:
    (root / name).mkdir(parents=True, exist_ok=True)
    for _ in range(cases_per_class):
      for i in range(int(rng.integers(1, 5))):
        Image.fromarray(pattern(order[name], rng, size)).save(root / name / f'case{n:03d}_{i}.png')
      n += 1
  return root


def fold_dataset(root, data_dir, folds, fold, seed=0, size=28):
  config = settings.load_config(LENET_TINY, ['dataset=folder', f'manual_dir={root}', f'data_dir={data_dir}',
                                             f'folder.image_size={size}', GROUPS, f'folder.num_folds={folds}',
                                             f'folder.fold={fold}', f'folder.fold_seed={seed}'])
  train.check_config(config)
  return datasets.load_dataset(config)


def test_assign_folds_keeps_components_whole_balances_classes_and_is_deterministic():
  rng = np.random.default_rng(1)
  cases = [(f'p{i}', int(rng.integers(0, 3)), int(rng.integers(1, 6))) for i in range(60)]
  keys, labels = [], []
  for case, label, n in cases:
    for j in range(n):
      keys.append([f'{case}/img{j}', f'group:{case}'])
      labels.append(label)
  keys[3].append('p40/img0')  # An image identical to one of another case joins the two cases.
  folds = splits.assign_folds(keys, labels, 5)
  by_case = {}
  for k, f in zip(keys, folds):
    by_case.setdefault(k[1], set()).add(f)
  assert all(len(v) == 1 for v in by_case.values())
  assert by_case['group:p0'] == by_case['group:p40']
  assert set(folds) == set(range(5))
  # Each class's images are spread evenly: fold sizes within a class differ by at most the largest case (+ the
  # joined pair).
  for label in range(3):
    per_fold = np.bincount([f for f, l in zip(folds, labels) if l == label], minlength=5)
    assert per_fold.max() - per_fold.min() <= 10, per_fold
  # Order-free and seeded.
  order = rng.permutation(len(keys))
  shuffled = splits.assign_folds([keys[i] for i in order], [labels[i] for i in order], 5)
  assert [folds[i] for i in order] == shuffled
  assert splits.assign_folds(keys, labels, 5, seed=1) != folds
  with pytest.raises(UserError, match='cannot fill'):
    splits.assign_folds([['a'], ['b']], [0, 1], 3)


def test_folds_never_split_a_case_and_test_every_image_once(tmp_path):
  root = make_case_folder(tmp_path / 'cases')
  files = sorted(p for p in root.rglob('*.png'))
  folds = 3
  tested, sizes = [], []
  for k in range(folds):
    data = fold_dataset(root, tmp_path / 'tfds', folds, k)
    test_cases = set(data.groups['test'])
    other = set(data.groups['train']) | set(data.groups['validation'])
    assert test_cases and not test_cases & other  # No case on both sides.
    assert set(data.groups['validation']) and not set(data.groups['validation']) & set(data.groups['train'])
    assert set(data.splits['test'].labels) == {0, 1, 2}  # Stratified: every class in every fold.
    assert sum(data.sizes().values()) == len(files)
    assert data.metadata['folds']['fold'] == k
    tested += [splits.content_hash(im) for im in data.splits['test'].images]
    sizes.append(len(data.splits['test']))
  everything = [splits.content_hash(im) for im in data.splits['train'].images] + [
      splits.content_hash(im) for s in ('validation', 'test') for im in data.splits[s].images]
  assert sorted(tested) == sorted(everything)  # Every image in exactly one fold's test split.
  assert sizes == data.metadata['folds']['fold_sizes']


def test_folds_and_splits_are_the_same_whatever_size_the_images_are_stored_at(tmp_path):
  """Two recipes that store one collection at different sizes (the paper's 256, the ResNet's 64) must be tested
  on the same cases: folds and splits follow the files, not their pixels' hash at the stored size."""
  root = make_case_folder(tmp_path / 'cases', cases_per_class=8)
  for k in range(3):
    small, large = (fold_dataset(root, tmp_path / f'tfds{size}', 3, k, size=size) for size in (28, 40))
    assert small.splits['test'].images.shape[1] == 28 and large.splits['test'].images.shape[1] == 40
    for split in ('train', 'validation', 'test'):
      assert sorted(small.groups[split]) == sorted(large.groups[split]), (k, split)
  # The same for the pixels' own hashes: other keys, the same names, the same assignment.
  keys = [[f'0{i}', f'group:c{i // 3}'] for i in range(60)]  # Pixel hashes: hex digits, before 'group:'.
  other = [[f'1{i * 7 % 61}', f'group:c{i // 3}'] for i in range(60)]
  names = [f'cls/c{i // 3}_{i}.png' for i in range(60)]
  labels = [i // 3 % 2 for i in range(60)]
  assert splits.assign_splits(keys, 0.2, 0.2, names=names) == splits.assign_splits(other, 0.2, 0.2, names=names)
  assert splits.assign_folds(keys, labels, 4, names=names) == splits.assign_folds(other, labels, 4, names=names)
  assert splits.assign_folds(keys, labels, 4) != splits.assign_folds(other, labels, 4)  # By keys, they move.


def test_fold_fields_are_checked(tmp_path):
  root = make_case_folder(tmp_path / 'cases', cases_per_class=2)
  config = settings.load_config(LENET_TINY, ['dataset=folder', f'manual_dir={root}', 'folder.num_folds=3',
                                             'folder.fold=3'])
  with pytest.raises(UserError, match='fold < num_folds'):
    train.check_config(config)
  with pytest.raises(UserError, match='are set by --manual_dir, --folds'):
    cross_validate.fold_config(LENET_TINY, 3, 0, str(root), ['folder.fold=1'])


def test_cross_validation_table_resume_and_refusal(tmp_path, monkeypatch):
  root = make_case_folder(tmp_path / 'cases')
  out = tmp_path / 'cv'
  overrides = [f'data_dir={tmp_path / "tfds"}', 'folder.image_size=28', GROUPS, 'num_epochs=1', 'plots=False']
  calls = []
  real = train.train_and_evaluate
  monkeypatch.setattr(train, 'train_and_evaluate', lambda config, workdir, *a: calls.append(workdir) or real(
      config, workdir, *a))
  cv = cross_validate.run_cross_validation(LENET_TINY, 3, root, out, overrides)
  assert len(calls) == 3 and cv['complete']
  rows = cv['folds']
  for r in rows:
    results = json.loads((out / f'fold_{r["fold"]}' / 'results.json').read_text())
    assert r['accuracy'] == pytest.approx(results['test_accuracy'], abs=1e-6)  # Evaluation agrees with training.
    assert r['test_cases'] >= 3 and 0 <= r['case_accuracy'] <= 1
  # The table's means are the folds' figures', and the pooled confusion matrix holds every image once.
  for key in ('accuracy', 'macro_f1', 'case_accuracy'):
    assert cv['mean'][key] == pytest.approx(np.mean([r[key] for r in rows]))
    assert cv['std'][key] == pytest.approx(np.std([r[key] for r in rows], ddof=1))
  cm = np.array(cv['confusion_matrix'])
  assert cm.sum() == len(list(root.rglob('*.png'))) == sum(r['test_images'] for r in rows)
  assert cv['pooled']['accuracy'] == pytest.approx(np.trace(cm) / cm.sum())
  md = (out / 'cv.md').read_text()
  mean_line = next(l for l in md.splitlines() if l.startswith('| mean ± std'))
  assert f'{100 * cv["mean"]["accuracy"]:.2f} ± {100 * cv["std"]["accuracy"]:.2f}' in mean_line
  assert md.count('\n| ') >= 3 + 2 + 1 + 3
  Image.open(out / 'confusion_cv.png').verify()
  # A rerun trains nothing and gives the same table; an interrupted one trains only the unfinished fold.
  mtimes = [(out / f'fold_{k}' / 'results.json').stat().st_mtime for k in range(3)]
  again = cross_validate.run_cross_validation(LENET_TINY, 3, root, out, overrides)
  assert len(calls) == 3 and again['folds'] == rows
  assert [(out / f'fold_{k}' / 'results.json').stat().st_mtime for k in range(3)] == mtimes
  (out / 'fold_2' / 'results.json').unlink()
  (out / 'cv.json').unlink()
  again = cross_validate.run_cross_validation(LENET_TINY, 3, root, out, overrides)
  assert calls[3:] == [str(out / 'fold_2')] and again['mean']['accuracy'] == pytest.approx(cv['mean']['accuracy'])
  # Other settings in the same OUT are refused, naming what differs.
  with pytest.raises(UserError, match='overrides'):
    cross_validate.run_cross_validation(LENET_TINY, 3, root, out, overrides + ['seed=1'])
  with pytest.raises(UserError, match='folds'):
    cross_validate.run_cross_validation(LENET_TINY, 4, root, out, overrides)
  # The program: the same OUT, nothing left to train; it prints the table.
  command = [sys.executable, '-m', 'anatomy_jax.experiments.cross_validate', f'--config={LENET_TINY}', '--folds=3',
             f'--manual_dir={root}', f'--outdir={out}'] + [f'--override={o}' for o in overrides]
  done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-2000:]
  assert '| mean ± std |' in done.stdout and 'Starting lenet' not in done.stderr
  refused = subprocess.run(command[:-1], cwd=REPO, capture_output=True, text=True, timeout=600)
  assert refused.returncode == 1 and 'other settings (overrides differ' in refused.stderr


def test_pool_by_case_gives_every_image_its_cases_mean():
  probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4]], np.float32)
  groups = np.array(['b', 'a', 'b', 'c'])
  pooled = scores.pool_by_case(probs, groups)
  np.testing.assert_allclose(pooled, [[0.6, 0.4], [0.2, 0.8], [0.6, 0.4], [0.6, 0.4]], rtol=1e-6)


def test_members_are_seeded_runs_evaluated_as_their_ensemble(tmp_path, monkeypatch):
  root = make_case_folder(tmp_path / 'cases', cases_per_class=5)
  out = tmp_path / 'cv'
  overrides = [f'data_dir={tmp_path / "tfds"}', 'folder.image_size=28', GROUPS, 'num_epochs=1', 'plots=False']
  # The patterns are too easy for test-time augmentation to change an answer: make it answer otherwise (the
  # next class), so that the figures show which answers they count.
  tta = inference.Run.predict_tta
  monkeypatch.setattr(inference.Run, 'predict_tta', lambda self, *a, **k: np.roll(tta(self, *a, **k), 1, axis=-1))
  cv = cross_validate.run_cross_validation(LENET_TINY, 2, root, out, overrides, members=2, tta=True,
                                          checkpoint='latest')
  assert cv['complete'] and cv['setup']['members'] == 2 and cv['setup']['tta']
  for row in cv['folds']:
    fold = out / f'fold_{row["fold"]}'
    dirs = [fold / 'member_0', fold / 'member_1']
    assert [json.loads((d / 'requested_config.json').read_text())['seed'] for d in dirs] == [0, 1]
    report = json.loads((fold / 'eval_test.json').read_text())
    assert report['ensemble'] == [str(d) for d in dirs] and report['checkpoint'] == 'latest'
    assert report['step'] == [json.loads((d / 'results.json').read_text())['steps_trained'] for d in dirs]
    # The row's figures are the members' test-time-augmented probabilities averaged, computed here again.
    runs = [inference.load_run(d, 'latest') for d in dirs]
    data, mapping = report_lib.dataset_for(runs[0])
    test = data.splits['test']
    probs = np.mean([r.predict_tta(test.images) for r in runs], axis=0)
    labels = mapping[test.labels]
    assert row['accuracy'] == pytest.approx(float((probs.argmax(-1) == labels).mean()))
    pooled = scores.pool_by_case(probs, data.groups['test'])
    assert row['case_pooled_accuracy'] == pytest.approx(float((pooled.argmax(-1) == labels).mean()))
    assert row['train_seconds'] == pytest.approx(sum(json.loads((d / 'results.json').read_text())['train_seconds']
                                                     for d in dirs))
    assert row['tta_views'] == report['tta']['views'] == runs[0].preprocess.view_names()
  # The pooled figures are the rows' (test-time augmented) ones, every image counted once.
  reports = [json.loads((out / f'fold_{k}' / 'eval_test.json').read_text()) for k in range(2)]
  assert all(r['tta']['confusion_matrix'] != r['confusion_matrix'] for r in reports)
  assert cv['confusion_matrix'] == np.sum([r['tta']['confusion_matrix'] for r in reports], axis=0).tolist()
  images = sum(r['test_images'] for r in cv['folds'])
  assert cv['pooled']['accuracy'] == pytest.approx(sum(r['accuracy'] * r['test_images'] for r in cv['folds']) / images)
  md = (out / 'cv.md').read_text()
  assert 'an ensemble of 2 runs' in md and 'test-time augmentation' in md and 'last checkpoint' in md
  # A report from before the views were recorded (before the zoomed views) is made again, not reused.
  stale = json.loads((out / 'fold_0' / 'eval_test.json').read_text())
  del stale['tta']['views']
  (out / 'fold_0' / 'eval_test.json').write_text(json.dumps(stale))
  cross_validate.run_cross_validation(LENET_TINY, 2, root, out, overrides, members=2, tta=True, checkpoint='latest')
  assert 'views' in json.loads((out / 'fold_0' / 'eval_test.json').read_text())['tta']
  with pytest.raises(UserError, match='members'):
    cross_validate.run_cross_validation(LENET_TINY, 2, root, out, overrides, members=3, tta=True,
                                        checkpoint='latest')


def test_an_outdir_from_before_members_tta_and_checkpoint_resumes_with_their_defaults(tmp_path):
  old = {'config': 'c.py', 'folds': 5, 'manual_dir': '/d', 'overrides': [], 'resolved_config': {}}
  (tmp_path / cross_validate.SETUP_FILE).write_text(json.dumps(old))
  cross_validate.check_setup(tmp_path, {**old, 'members': 1, 'tta': False, 'checkpoint': 'best'})
  with pytest.raises(UserError, match='members differ'):
    cross_validate.check_setup(tmp_path, {**old, 'members': 3, 'tta': False, 'checkpoint': 'best'})


def test_some_folds_here_some_there_merge_into_one_table(tmp_path):
  root = make_case_folder(tmp_path / 'cases')
  overrides = [f'data_dir={tmp_path / "tfds"}', 'folder.image_size=28', GROUPS, 'num_epochs=1', 'plots=False']
  with pytest.raises(UserError, match='only_folds=3'):
    cross_validate.run_cross_validation(LENET_TINY, 3, root, tmp_path / 'bad', overrides, only_folds=[3])
  a = cross_validate.run_cross_validation(LENET_TINY, 3, root, tmp_path / 'a', overrides, only_folds=[1])
  b = cross_validate.run_cross_validation(LENET_TINY, 3, root, tmp_path / 'b', overrides, only_folds=[2, 0])
  assert [r['fold'] for r in a['folds']] == [1] and not a['complete'] and not (tmp_path / 'a' / 'fold_0').exists()
  assert '(1 of 3 folds: 1)' in (tmp_path / 'a' / 'cv.md').read_text()
  cv = cross_validate.merge([tmp_path / 'a' / 'cv.json', tmp_path / 'b' / 'cv.json'], tmp_path / 'all')
  rows = cv['folds']
  assert cv['complete'] and [r['fold'] for r in rows] == [0, 1, 2]
  assert rows == sorted(a['folds'] + b['folds'], key=lambda r: r['fold'])
  for key in ('accuracy', 'macro_f1', 'case_accuracy', 'case_pooled_accuracy'):
    assert cv['mean'][key] == pytest.approx(np.mean([r[key] for r in rows]))
  cm = np.array(cv['confusion_matrix'])
  assert (cm == np.array(a['confusion_matrix']) + np.array(b['confusion_matrix'])).all()
  assert cm.sum() == len(list(root.rglob('*.png')))  # Every image once over the merged folds.
  assert [m['folds'] for m in cv['merged_from']] == [[1], [0, 2]]
  assert '(merged)' in (tmp_path / 'all' / 'cv.md').read_text()
  # Parts holding a fold twice, or made with other settings, are refused.
  with pytest.raises(UserError, match='some folds twice'):
    cross_validate.merge([tmp_path / 'a' / 'cv.json', tmp_path / 'all' / 'cv.json'], tmp_path / 'x')
  other = json.loads((tmp_path / 'a' / 'cv.json').read_text())
  other['setup']['overrides'] = other['setup']['overrides'] + ['seed=1']
  (tmp_path / 'other.json').write_text(json.dumps(other))
  with pytest.raises(UserError, match='overrides differ'):
    cross_validate.merge([tmp_path / 'other.json', tmp_path / 'b' / 'cv.json'], tmp_path / 'x')
