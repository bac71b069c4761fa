#!/usr/bin/env bash
# Build one checkout per variant of commit REV into OUTDIR, for `loadtests.overhead --compare LABEL=OUTDIR/VARIANT`.
#   loadtests/prototypes/build.sh OUTDIR [REV]
# Variants: head (REV as is), sniffio (+00), lean (+02), lean-again (+02, an A/A copy), leanserver (+02 +03),
# leangc (+02 +04). A patch that REV already contains (02 from 90f0937 on) is skipped.
set -euo pipefail
out=${1:?usage: build.sh OUTDIR [REV]}
rev=${2:-HEAD}
here=$(cd "$(dirname "$0")" && pwd)
repo=$(git -C "$here" rev-parse --show-toplevel)
declare -A variants=(
  [head]="" [sniffio]="00" [lean]="02" [lean-again]="02" [leanserver]="02 03" [leangc]="02 04"
)
mkdir -p "$out"
for name in "${!variants[@]}"; do
  dir="$out/$name"
  rm -rf "$dir" && mkdir -p "$dir"
  git -C "$repo" archive "$rev" | tar -x -C "$dir"
  for n in ${variants[$name]}; do
    patch=$(ls "$here"/"$n"-*.patch)
    if [ "$n" = 02 ] && [ -f "$dir/adapters/upstream.py" ]; then
      echo "$name: 02 was adopted (adapters/upstream.py) in $rev, skipped"
      continue
    fi
    if git -C "$dir" apply --check "$patch" 2>/dev/null || (cd "$dir" && git apply --check "$patch" 2>/dev/null); then
      (cd "$dir" && git apply "$patch")
    elif (cd "$dir" && git apply --reverse --check "$patch" 2>/dev/null); then
      echo "$name: $(basename "$patch") already in $rev, skipped"
    else
      echo "$name: $(basename "$patch") does not apply to $rev" >&2
      exit 1
    fi
  done
  if [ "$name" = sniffio ]; then
    # 00 only declares the dependency: put sniffio itself in the checkout, which --compare puts first on sys.path.
    "$repo/.venv/bin/pip" install --quiet --disable-pip-version-check --target "$dir" 'sniffio>=1.3'
  fi
  echo "built $dir ($rev${variants[$name]:+ + ${variants[$name]}})"
done
