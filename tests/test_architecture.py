"""The layers of the package: a module imports only from layers below its own (or from inside its own package).

NOTES.md has the same map in words. A new module must be placed in LAYERS, or this test fails.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / 'anatomy_jax'

LAYERS = {
    'errors': 0,  # What every layer may raise.
    'files': 1, 'metrics': 1, 'provenance': 1, 'compilation': 1, 'interrupts': 1, 'plots': 1, 'optim': 1,
    'progress': 2, 'models': 2, 'datasets': 2,
    'settings': 3, 'steps': 3, 'input_pipeline': 3, 'parallel': 3, 'checkpoints': 3, 'records': 3, 'finetune': 3,
    'run_setup': 4, 'inference': 4, 'cli': 4,
    'train': 5, 'evaluate': 5, 'predict': 5,
    'benchmark': 6,
    'main': 7, 'experiments': 7,  # Programs and experiments on top; so is every package's __main__.
}


def unit(module: str) -> str:
  """The layer unit a dotted module name belongs to: its first component under anatomy_jax."""
  return module.split('.')[1] if module.count('.') else ''


def imports(path: Path) -> set[str]:
  out = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith('anatomy_jax'):
      out |= ({f'anatomy_jax.{a.name}' for a in node.names} if node.module == 'anatomy_jax' else {node.module})
    elif isinstance(node, ast.Import):
      out |= {a.name for a in node.names if a.name.startswith('anatomy_jax.')}
  return out


def test_every_module_imports_only_from_layers_below():
  problems = []
  for path in sorted(PACKAGE.rglob('*.py')):
    parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
    own = parts[1] if len(parts) > 1 else ''
    if own in ('__init__', ''):
      continue
    assert own in LAYERS, f'{path}: place this module in LAYERS (tests/test_architecture.py) and NOTES.md'
    level = 7 if parts[-1] == '__main__' else LAYERS[own]
    for target in imports(path):
      other = unit(target)
      if other == own:
        continue  # Inside its own package.
      if LAYERS[other] >= level:
        problems.append(f'{"/".join(parts)} (layer {level}) imports {target} (layer {LAYERS[other]})')
  assert not problems, '\n'.join(problems)


def test_the_layer_test_catches_an_upward_import(tmp_path):
  # The check above, applied to a made-up core module that reaches up into the experiments.
  bad = tmp_path / 'bad.py'
  bad.write_text('from anatomy_jax.experiments import plots\nimport anatomy_jax.train\n')
  assert imports(bad) == {'anatomy_jax.experiments', 'anatomy_jax.train'}
  assert [LAYERS[unit(t)] >= LAYERS['steps'] for t in sorted(imports(bad))] == [True, True]
