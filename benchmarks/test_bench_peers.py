"""Dense F.linear and torch's own sparse paths on the headline cases.

The baseline (dense: cuBLAS on a GPU, MKL/oneDNN on a CPU) and the peers (a BSR weight
in F.linear; CSR through torch.sparse.mm) that sparsekern's backends are compared with.
sparsekern's own linear layer is benchmarked in test_bench_linear.py, in the same
groups, so the numbers print side by side. Where torch does not implement a path
(BSR backward on a CPU, half precision on a CPU) the benchmark skips with torch's reason.
"""

import pytest

from sparsekern.bench import impls
from sparsekern.bench.suite import case_id, headline_cases, prepare, run

CASES = headline_cases()


@pytest.mark.parametrize("impl_name", list(impls.BASELINES))
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_peer(benchmark, device, case, impl_name):
    impl = impls.by_name(impl_name)
    fn, problem = prepare(case, impl, device)
    run(benchmark, case, impl_name, fn, problem, device)
