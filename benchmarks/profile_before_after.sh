#!/bin/sh
# Before/after of the training step, back to back on the same machine: "before" is the code of the git
# revision given as $1 (default HEAD~1), unpacked to a temporary folder and put first on PYTHONPATH; "after"
# is the working tree. Usage: sh benchmarks/profile_before_after.sh [REV] (from the repository root, after
# the bundled data sets are preprocessed). Prints one block per (code, data set, variant, shape).
set -e
rev=${1:-HEAD~1}
before=$(mktemp -d)
git archive "$rev" alphastomics | tar -x -C "$before"
py=.venv/bin/python
for shape in "bdtnp 256 4" "bdtnp 1200 4" "synthetic 256 4" "synthetic 1200 1"; do
  set -- $shape
  for variant in linear softmax; do
    for code in before after; do
      if [ $code = before ]; then pp=$before; else pp=; fi
      printf '%s code (%s): ' $code "$(if [ $code = before ]; then echo $rev; else echo working tree; fi)"
      PYTHONPATH=$pp OMP_NUM_THREADS=1 $py benchmarks/profile_step.py --data results/data/$1/processed \
        --variant $variant --max-cells $2 --batch-size $3 --steps 10 | sed -n '1p;$p' | paste -sd' '
    done
  done
done
rm -rf "$before"
