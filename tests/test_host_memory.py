"""jaxmat.retain_host_memory: repeated calls of a jitted function with a large scratch buffer stop
page-faulting (the reason energy + forces + stress cost 4-5 energy passes on the CPU)."""

import json
import subprocess
import sys

import pytest

PROBE = r"""
import json, resource, sys
import jaxmat
applied = jaxmat.retain_host_memory() if sys.argv[1] == "retain" else None
import jax, jax.numpy as jnp

@jax.jit
def f(x):  # ~40 MB of live intermediates: XLA's per-call scratch buffer
    outs = [x]
    for k in range(20):
        outs.append(jnp.sin(outs[-1]) * (1.0 + k))
    return sum(o.sum() for o in outs)

x = jnp.ones((2000, 256), jnp.float32)
c = f.lower(x).compile()
temp = c.memory_analysis().temp_size_in_bytes
for _ in range(3):
    c(x).block_until_ready()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    c(x).block_until_ready()
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 10
print(json.dumps({"applied": applied, "temp_pages": temp / 4096, "faults": faults}))
"""


def probe(mode):
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=300,
                         env={"PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu"})
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc allocator settings (Linux only)")
def test_retained_host_memory_stops_per_call_page_faults():
    default, retained = probe("default"), probe("retain")
    assert retained["applied"] == {"allocator": "glibc", "arena_max": 1, "mmap_max": 0, "trim_threshold": -1}
    assert retained["temp_pages"] > 5000  # the scratch buffer is large (> 20 MB)
    # glibc's default: the scratch buffer is mapped afresh (and faulted page by page) at every call
    assert default["faults"] > 0.9 * default["temp_pages"], default
    # retained: the heap is reused; a few 4 MiB blocks outside the scratch buffer may still be
    # mapped per call (0-4,000 of these 10,000 pages, run to run; 0 for the M3GNet E+F+S calls)
    assert retained["faults"] < 0.5 * retained["temp_pages"], retained
