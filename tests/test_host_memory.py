"""jaxmat.retain_host_memory: repeated energy + forces + stress calls (Si64) stop
page-faulting (the reason energy + forces + stress cost 4-5 energy passes on the CPU)."""

import json
import subprocess
import sys

import pytest

from helpers import FIXTURES

PROBE = r"""
import json, resource, sys
import jaxmat
applied = jaxmat.retain_host_memory() if sys.argv[1] == "retain" else None
import ase.io, jax
from jaxmat.graph import atoms_to_graph, bucket_sizes, graph_sizes, pad_graph
from jaxmat.potential import energy_forces_stress

model = jaxmat.load_model()
atoms = [a for a in ase.io.read(sys.argv[2], ":") if a.info["name"] == "Si64_rattled"][0]
g = atoms_to_graph(atoms, model.cutoff, model.three_body_cutoff)
g = jax.tree_util.tree_map(jax.numpy.asarray, pad_graph(g, bucket_sizes(graph_sizes(g))))
c = jax.jit(lambda p, gg: energy_forces_stress(model.apply, p, gg)).lower(model.params, g).compile()
temp = c.memory_analysis().temp_size_in_bytes  # ~65 MB: the backward pass's saved activations
for _ in range(3):
    jax.block_until_ready(c(model.params, g))
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    jax.block_until_ready(c(model.params, g))
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 5
print(json.dumps({"applied": applied, "temp_pages": temp / 4096, "faults": faults}))
"""


def probe(mode):
    out = subprocess.run([sys.executable, "-c", PROBE, mode, str(FIXTURES / "m3gnet_mp2021_dev.extxyz")],
                         capture_output=True, text=True, timeout=300,
                         env={"PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu"})
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # (default suite under 15 min on 2 cores; run with -m slow)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc allocator settings (Linux only)")
def test_retained_host_memory_stops_per_call_page_faults():
    default, retained = probe("default"), probe("retain")
    assert retained["applied"] == {"allocator": "glibc", "arena_max": 1, "mmap_max": 0, "trim_threshold": -1}
    assert retained["temp_pages"] > 5000  # the scratch buffer is large (> 20 MB)
    # glibc's default: the scratch buffer is mapped afresh (and faulted page by page) at every call
    assert default["faults"] > 0.9 * default["temp_pages"], default
    # retained: the heap is reused (measured: 0 faults per call in most runs; in some, blocks of
    # ~1,000 pages are still mapped afresh, up to a fifth of the buffer)
    assert retained["faults"] < 0.5 * retained["temp_pages"], retained
