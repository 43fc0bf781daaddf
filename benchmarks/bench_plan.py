"""The planner benchmark (`seqpack bench plan`), runnable from a checkout: see
`seqpack.bench.plan` for what it measures.

    python benchmarks/bench_plan.py                      # 10M docs; TRL at 100k and 1M if installed
    python benchmarks/bench_plan.py --docs 1000000 --trl-docs 100000
"""

import sys

from seqpack.bench.plan import main

if __name__ == "__main__":
    sys.exit(main())
