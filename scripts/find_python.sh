#!/usr/bin/env bash
# Print the path of a Python interpreter of at least the given version (default 3.12):
# one on PATH first, then one installed by pyenv. Exits 1 when none is found.
set -u
want="${1:-3.12}"
ok() { "$1" -c "import sys; sys.exit(sys.version_info[:2] < tuple(map(int, '$want'.split('.'))))" 2>/dev/null; }
for name in python3.13 python3.12 python3; do
  path=$(command -v "$name" 2>/dev/null) || continue
  if ok "$path"; then "$path" -c 'import sys; print(sys.executable)'; exit 0; fi
done
root=$(pyenv root 2>/dev/null || echo "${PYENV_ROOT:-$HOME/.pyenv}")
for candidate in "$root"/versions/3.1[2-9]*/bin/python; do
  [ -x "$candidate" ] && ok "$candidate" && { echo "$candidate"; exit 0; }
done
echo "no Python >= $want found (install one, or set COMPAT_PYTHON)" >&2
exit 1
