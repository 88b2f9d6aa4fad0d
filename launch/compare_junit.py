"""Per-test times of two pytest JUnit XML files, matched by test name: the same tests before and after a change.

  python launch/compare_junit.py BEFORE.xml AFTER.xml
"""

import sys
import xml.etree.ElementTree as ET


def times(path: str) -> dict[str, float]:
  """Seconds per test name (module dropped, so tests that moved between files still match)."""
  return {case.get('name'): float(case.get('time')) for case in ET.parse(path).getroot().iter('testcase')}


def main(before_path: str, after_path: str) -> None:
  before, after = times(before_path), times(after_path)
  both = sorted(set(before) & set(after), key=lambda k: after[k] - before[k])
  total = lambda t: sum(t[k] for k in both)
  print(f'{len(both)} tests in both: {total(before):.0f} s before, {total(after):.0f} s after '
        f'({len(before)} and {len(after)} tests in all)')
  for k in both[:5] + both[-5:]:
    print(f'  {after[k] - before[k]:+7.1f} s  {before[k]:6.1f} -> {after[k]:6.1f}  {k}')


if __name__ == '__main__':
  main(*sys.argv[1:3])
