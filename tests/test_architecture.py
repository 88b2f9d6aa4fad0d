"""The layers, read from the layout itself: each package's `__init__` declares `MAY_IMPORT`, the packages it may
import from (besides itself); the program modules directly in `anatomy_jax` follow `anatomy_jax/__init__.py`'s.

The checker reads those declarations and every module's imports without importing anything. A module outside a
package that declares its layer, an import of a package not declared, or declarations that form a cycle are
each reported. The second test runs the same checker on a made-up package with an upward import.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / 'anatomy_jax'


def declared(init: Path) -> tuple[str, ...] | None:
  """The `MAY_IMPORT = (...)` of a package's __init__.py, read without importing it; None when it has none."""
  for node in ast.parse(init.read_text()).body:
    if isinstance(node, ast.Assign) and any(getattr(t, 'id', None) == 'MAY_IMPORT' for t in node.targets):
      return tuple(ast.literal_eval(node.value))
  return None


def imports(path: Path, root: str) -> set[str]:
  """The modules of package `root` that a file imports (every import statement, at any depth)."""
  out = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.split('.')[0] == root:
      out |= {f'{root}.{a.name}' for a in node.names} if node.module == root else {node.module}
    elif isinstance(node, ast.Import):
      out |= {a.name for a in node.names if a.name.split('.')[0] == root}
  return out


def check_layers(package: Path) -> list[str]:
  """Every violation of the declared layers in `package` (a directory), as one line each."""
  root = package.name
  top = declared(package / '__init__.py')
  if top is None:
    return [f'{root}/__init__.py: declares no MAY_IMPORT for the program modules beside it']
  layers = {p.name: declared(p / '__init__.py') for p in sorted(package.iterdir()) if (p / '__init__.py').is_file()}
  problems = [f'{root}/{name}/__init__.py: declares no MAY_IMPORT' for name, may in layers.items() if may is None]
  layers = {name: may for name, may in layers.items() if may is not None}
  for name, may in layers.items():
    problems += [f'{root}/{name}: MAY_IMPORT names {other!r}, which is no package of {root}'
                 for other in may if other not in layers]
  problems += _cycles(layers, root)
  for path in sorted(package.rglob('*.py')):
    parts = path.relative_to(package.parent).with_suffix('').parts
    unit = parts[1] if len(parts) > 2 else None  # None: a program module directly in the package.
    if unit is not None and unit not in layers:
      continue  # Already reported: its package declares nothing.
    may = top if unit is None else layers[unit]
    for target in sorted(imports(path, root)):
      other = target.split('.')[1] if target.count('.') else ''
      if other == unit or (other in layers and other in may):
        continue
      what = 'a program module' if other not in layers else f'{other}/'
      problems.append(f'{"/".join(parts)}.py imports {target} ({what}), not among its MAY_IMPORT {may}')
  return problems


def _cycles(layers: dict[str, tuple], root: str) -> list[str]:
  """Declarations that lead back to themselves: layers must form a line from the bottom up."""
  problems = []

  def visit(name, trail):
    for other in layers.get(name, ()):
      if other in trail:
        problems.append(f'{root}: MAY_IMPORT declarations form a cycle: {" -> ".join(trail + [other])}')
      elif other in layers:
        visit(other, trail + [other])

  for name in layers:
    visit(name, [name])
  return sorted(set(problems))


def test_every_module_imports_only_what_its_package_declares():
  problems = check_layers(PACKAGE)
  assert not problems, '\n'.join(problems)


def test_the_layout_is_the_documented_one():
  # The bottom layer imports nothing of ours; each package lists what its __init__ docstring says.
  layers = {p.name: declared(p / '__init__.py') for p in PACKAGE.iterdir() if (p / '__init__.py').is_file()}
  assert layers['core'] == ()
  assert layers['models'] == layers['data'] == ('core',)
  assert layers['training'] == ('core', 'models', 'data')
  assert set(layers) == {'core', 'models', 'data', 'training', 'evaluation', 'benchmark', 'experiments'}
  assert {p.stem for p in PACKAGE.glob('*.py')} == {'__init__', 'main', 'evaluate', 'predict'}


def test_the_checker_catches_an_upward_import(tmp_path):
  # A made-up package: core at the bottom, train above it, and a core module that reaches up into train.
  fake = tmp_path / 'fakepkg'
  for name, may in (('', "('core', 'train')"), ('core', '()'), ('train', "('core',)")):
    (fake / name).mkdir(parents=True, exist_ok=True)
    (fake / name / '__init__.py').write_text(f'"""{name or "top"}."""\nMAY_IMPORT = {may}\n')
  (fake / 'core' / 'files.py').write_text('import os\n')
  (fake / 'train' / 'loop.py').write_text('from fakepkg.core import files\n')
  (fake / 'main.py').write_text('from fakepkg.train import loop\n')
  assert check_layers(fake) == []
  (fake / 'core' / 'bad.py').write_text('def f():\n  from fakepkg.train import loop\n  return loop\n')
  (fake / 'train' / 'up.py').write_text('import fakepkg.main\n')
  assert check_layers(fake) == [
      "fakepkg/core/bad.py imports fakepkg.train (train/), not among its MAY_IMPORT ()",
      "fakepkg/train/up.py imports fakepkg.main (a program module), not among its MAY_IMPORT ('core',)"]
  # A package without a declaration, and declarations that point at each other, are reported too.
  (fake / 'train' / '__init__.py').write_text('MAY_IMPORT = (\'core\', \'extra\')\n')
  (fake / 'extra').mkdir()
  (fake / 'extra' / '__init__.py').write_text('MAY_IMPORT = (\'train\',)\n')
  (fake / 'loose').mkdir()
  (fake / 'loose' / '__init__.py').write_text('"""No declaration."""\n')
  problems = check_layers(fake)
  assert 'fakepkg/loose/__init__.py: declares no MAY_IMPORT' in problems
  assert any('cycle: extra -> train -> extra' in p for p in problems), problems
