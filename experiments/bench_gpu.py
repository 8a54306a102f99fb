"""The accelerator table: what one GPU does with jaxmat, in one run of under 8 minutes.

    python experiments/bench_gpu.py [--smoke] [--json PATH] [--budget-s 400] [--dtype float32]
                                    [--models A,B] [--sections models,md,ensemble,train]

Run it through ``scripts/gpu_bench.sh`` (it installs the carried wheels on the lent machine). ``--smoke``
(or ``GPU_BENCH_SMOKE=1``): every section at tiny sizes on the CPU, as ``tests/test_gpu_bench.py`` runs
it, so the script cannot rot. Structures: rattled (0.05 A) diamond Si supercells; float32. Sections:

1. ``models``: every embedded model (``jaxmat.list_pretrained()``), 64 to 10,648 atoms: a potential's
   energy + forces + stress (``jaxmat.potential.energy_forces_stress``, jitted), a property model's
   forward call. ``device ms``: the call on a graph already on the device (median); ``call ms``: host
   graph + transfer + call + results back, what a calculator call costs (atom-steps/s = atoms / call
   ms); ``peak MiB``: the most device memory used so far; the energy per atom (or the predicted value);
2. ``md``: the jax engine (``jaxmat.simulate.Engine.md``, Langevin 300 K, 1 fs, skin 0.3 A), R = 1, 8
   and 64 replicas of Si64 and one Si4096: atom-steps/s of a run of ``steps`` (list rebuilds included)
   repeated after the same run compiled everything;
3. ``ensemble``: 8 members of the default model (1e-3 relative noise on its weights each) as a deep
   ensemble, energy + forces + stress of every member vmapped vs one after another (``lax.map``) vs
   one member (compiled in section 1);
4. ``train``: one optimizer step (``jaxmat.train.loss_and_metrics``, ``jaxmat train``'s default E + F
   + S Huber loss, clip 10 + AdamW, parameters fed back) of the default model on 16 Si64 frames.

Sections take weighted shares of the time left in ``--budget-s``; an item starts only if twice the last
one's time still fits, else it is listed as skipped. A failed item is listed with its error (traceback
on stderr) and makes the exit status 1. The JSON is rewritten after every item (a run cut short keeps
what it measured); the markdown goes to stdout and next to the JSON.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from importlib import metadata
from pathlib import Path

import jax
import numpy as np
import optax
from ase.build import bulk

import jaxmat
from jaxmat.data import Frame, batch_budget, build_graphs, make_batch
from jaxmat.graph import atoms_to_graph, bucket_sizes, cast_floats, graph_sizes, pad_graph
from jaxmat.md import MDSettings
from jaxmat.models import stack_members
from jaxmat.potential import energy_forces_stress
from jaxmat.simulate import Engine
from jaxmat.train import config_from_dict, loss_and_metrics

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = {"models": 4.0, "md": 3.0, "ensemble": 1.5, "train": 1.5}  # weights of the time budget
PACKAGES = ("jax", "jaxlib", "flax", "optax", "e3nn-jax", "jraph", "ase", "vesin", "numpy", "msgpack")
# sizes are repetitions of the 8-atom cubic Si cell (1: 8 atoms, 2: 64, 8: 4,096, 11: 10,648)
PROFILES = {
    "full": {"efs_reps": (2, 4, 6, 8, 11), "repeats": 20, "md": ((2, 1), (2, 8), (2, 64), (8, 1)),
             "md_steps": 200, "md_chunk": 50, "members": 8, "ens_reps": (2, 6), "train_batch": 16,
             "train_reps": 2, "train_repeats": 10, "budget_s": 400.0},
    "smoke": {"efs_reps": (1,), "repeats": 2, "md": ((1, 2),), "md_steps": 4, "md_chunk": 2, "members": 2,
              "ens_reps": (1,), "train_batch": 2, "train_reps": 1, "train_repeats": 2, "budget_s": 600.0},
}


class Clock:
    """The time budget: ``share`` gives a deadline for part of what is left; ``fits`` says whether
    the next item, taken as twice the last one (``last``), ends before a deadline."""

    def __init__(self, budget_s: float):
        self.t0 = time.perf_counter()
        self.deadline, self.last = self.t0 + budget_s, 0.0

    def share(self, fraction: float, until: float | None = None) -> float:
        self.last, now = 0.0, time.perf_counter()
        return now + fraction * max(0.0, (self.deadline if until is None else until) - now)

    def fits(self, deadline: float) -> bool:
        return time.perf_counter() + 2 * self.last < min(deadline, self.deadline)

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0


def si_cell(reps: int, seed: int = 0):
    atoms = bulk("Si", "diamond", 5.43, cubic=True).repeat(reps)
    atoms.rattle(0.05, seed=seed)
    return atoms


def median_ms(fn, repeats: int) -> float:
    """Median wall time (ms) of ``fn()`` (its results blocked on) after one warm-up call."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


@functools.lru_cache(maxsize=None)
def efs_function():
    """One jitted ``energy_forces_stress(apply_fn, params, graph)`` (``apply_fn`` static), so the
    ensemble section's one-member row reuses the models section's compilation."""
    return jax.jit(lambda apply_fn, params, graph: energy_forces_stress(apply_fn, params, graph, True),
                   static_argnums=(0,))


def peak_mib():
    stats = jax.devices()[0].memory_stats() or {}
    return round(stats["peak_bytes_in_use"] / 2**20) if "peak_bytes_in_use" in stats else None


def _output(cmd: list[str]):
    try:
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=30).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict:
    names = {(d.metadata["Name"] or "").lower().replace("_", "-") for d in metadata.distributions()}
    wanted = PACKAGES + tuple(sorted(n for n in names if n.startswith("jax-cuda")))
    return {"device": jax.devices()[0].device_kind, "backend": jax.default_backend(),
            "n_devices": jax.device_count(), "python": platform.python_version(),
            "nvidia_smi": _output(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                   "--format=csv,noheader"]),
            "jaxmat_commit": _output(["git", "describe", "--always", "--dirty"]),
            "versions": {p: metadata.version(p) for p in wanted if p in names}}


def prepared(model, atoms, dtype):
    """(host graph, ``build()``: the padded, cast graph made afresh from ``atoms``, as a calculator does)."""
    g = atoms_to_graph(atoms, model.cutoff, model.three_body_cutoff)
    sizes = bucket_sizes(graph_sizes(g))

    def build():
        return cast_floats(pad_graph(atoms_to_graph(atoms, model.cutoff, model.three_body_cutoff), sizes), dtype)

    return g, build


def efs_row(model, reps: int, dtype: str, repeats: int) -> dict:
    """One model on one Si cell: compile, device-only and full-call times, and the result's sanity."""
    atoms = si_cell(reps)
    n, (g, build) = len(atoms), prepared(model, atoms, dtype)
    potential = model.output_kind == "atoms"
    fn = functools.partial(efs_function(), model.apply) if potential else jax.jit(model.apply)
    params = jax.device_put(model.params)
    host_ms = median_ms(build, min(repeats, 5))
    graph = jax.device_put(build())
    t = time.perf_counter()
    out = jax.block_until_ready(fn(params, graph))
    compile_s = time.perf_counter() - t
    device_ms = median_ms(lambda: fn(params, graph), repeats)
    call_ms = median_ms(lambda: jax.device_get(fn(params, build())), min(repeats, 5))
    if potential:
        forces = np.asarray(out["forces"], np.float64)[:n]
        extra = {"energy_per_atom": float(np.asarray(out["energy"], np.float64)[0]) / n,
                 "max_abs_force_sum": float(np.abs(forces.sum(0)).max()),
                 "stress_xx": float(np.asarray(out["stress"], np.float64)[0, 0, 0])}
    else:
        extra = {"prediction": float(np.asarray(out, np.float64).reshape(-1)[0])}
    if not all(np.isfinite(v) for v in extra.values()) or (potential and not np.isfinite(forces).all()):
        raise FloatingPointError(f"non-finite result at {n} atoms: {extra}")
    return {"atoms": n, "what": "E+F+S" if potential else "forward", "edges": int(g.graph.n_edge.sum()),
            "triplets": int(g.triplets.n_triplet.sum()) if g.triplets is not None else 0,
            "compile_s": compile_s, "device_ms": device_ms, "call_ms": call_ms, "host_ms": host_ms,
            "atom_steps_per_s": n / call_ms * 1e3, "peak_mib": peak_mib(), **extra}


def md_row(model_name: str, reps: int, replicas: int, dtype: str, steps: int, chunk: int) -> dict:
    """``Engine.md`` of ``replicas`` copies of one Si cell, twice: the same seeds give the same
    trajectories, so the first run meets every compilation (capacity growths included) and the
    second, timed, none."""
    engine = Engine(model=model_name, dtype=dtype)
    quiet = {"log": lambda line: None}
    systems, settings = [si_cell(reps)] * replicas, MDSettings(temperature=300.0, steps=steps, log_every=chunk)
    t = time.perf_counter()
    engine.md(systems, settings, trajectory=None, **quiet)
    first_s, compiled = time.perf_counter() - t, engine.n_compilations
    t = time.perf_counter()
    out = engine.md(systems, settings, trajectory=None, **quiet)
    wall, n = time.perf_counter() - t, len(systems[0])
    if not np.isfinite(out["etotal"]).all():
        raise FloatingPointError("non-finite MD energies")
    return {"atoms": n, "replicas": replicas, "steps": steps, "ms_per_step": 1e3 * wall / steps,
            "atom_steps_per_s": n * replicas * steps / wall, "first_run_s": first_s,
            "recompilations": engine.n_compilations - compiled, "rebuilds": int(out["n_rebuilds"]),
            "peak_mib": peak_mib()}


def ensemble_rows(model, members: int, reps: int, dtype: str, repeats: int) -> list[dict]:
    """One member, then ``members`` stacked members vmapped and one after another, on one Si cell."""
    def noisy(k):
        rng = np.random.default_rng(k)
        return model.with_params(jax.tree_util.tree_map(
            lambda x: (np.asarray(x) * (1 + 1e-3 * rng.normal(size=np.shape(x)))).astype(np.asarray(x).dtype),
            model.params))

    ens = stack_members([noisy(k) for k in range(members)], "deep")
    graph = jax.device_put(prepared(model, si_cell(reps), dtype)[1]())
    runs = [("one member", functools.partial(efs_function(), model.apply), jax.device_put(model.params))]
    runs += [(f"{members} members, {mode}", jax.jit(lambda p, g, m=mode: ens.member_results(p, g, True, m)),
              jax.device_put(ens.params)) for mode in ("vmap", "sequential")]
    out = []
    for what, fn, params in runs:
        t = time.perf_counter()
        jax.block_until_ready(fn(params, graph))
        compile_s = time.perf_counter() - t
        out.append({"atoms": 8 * reps**3, "what": what, "compile_s": compile_s,
                    "device_ms": median_ms(lambda: fn(params, graph), repeats), "peak_mib": peak_mib()})
    return [{**r, "x_one_member": r["device_ms"] / out[0]["device_ms"]} for r in out]


def train_row(model, batch_size: int, reps: int, dtype: str, repeats: int) -> dict:
    """One optimizer step of ``model`` on ``batch_size`` labelled Si cells (parameters fed back)."""
    cells = [si_cell(reps, seed=i) for i in range(batch_size)]
    frames = [Frame(a, -5.4 * len(a), np.zeros((len(a), 3)), np.zeros((3, 3)), f"Si{len(a)} seed {i}")
              for i, a in enumerate(cells)]
    graphs = build_graphs(frames, model)
    batch = jax.device_put(make_batch(list(range(batch_size)), frames, graphs, batch_budget(graphs, batch_size),
                                      dtype))
    lcfg = config_from_dict({"data": {"train": "in-memory frames"}}).loss  # jaxmat train's default loss
    tx = optax.chain(optax.clip_by_global_norm(10.0), optax.adamw(1e-4))

    @jax.jit
    def step(params, opt_state, batch):
        (loss, _), grads = jax.value_and_grad(loss_and_metrics, has_aux=True)(params, batch, model.apply, lcfg)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    params = jax.device_put(model.params)
    state = {"params": params, "opt": tx.init(params)}

    def one():
        state["params"], state["opt"], state["loss"] = step(state["params"], state["opt"], batch)
        return state["loss"]

    t = time.perf_counter()
    jax.block_until_ready(one())
    compile_s = time.perf_counter() - t
    ms = median_ms(one, repeats)
    if not np.isfinite(float(state["loss"])):
        raise FloatingPointError("non-finite training loss")
    n = sum(len(a) for a in cells)
    return {"model": model.name, "structures": batch_size, "atoms": n, "compile_s": compile_s, "step_ms": ms,
            "structures_per_s": batch_size / ms * 1e3, "atoms_per_s": n / ms * 1e3, "peak_mib": peak_mib()}


class Report:
    """Rows of each section, rewritten to the JSON file after every item."""

    def __init__(self, path: Path, header: dict):
        self.path, self.data, self.failed = path, {**header, **{s: [] for s in SECTIONS}}, 0

    def attempt(self, clock: Clock, deadline: float, section: str, label: dict, fn) -> list[dict]:
        """Run ``fn()`` (a row or a list of rows) if it fits; record its rows, its error or the skip."""
        if not clock.fits(deadline):
            rows = [{**label, "skipped": "time budget"}]
        else:
            t = time.perf_counter()
            try:
                rows = fn()
            except Exception as err:  # noqa: BLE001 - recorded, printed, and the exit status says so
                traceback.print_exc()
                self.failed += 1
                rows = {"error": f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0][:200]}"}
            clock.last = time.perf_counter() - t
            rows = [{**label, **r, "wall_s": clock.last} for r in (rows if isinstance(rows, list) else [rows])]
        self.data[section].extend(rows)
        self.save(clock)
        state = "skipped" if "skipped" in rows[0] else "FAILED" if "error" in rows[0] else "done"
        print(f"[{clock.elapsed():6.1f} s, cpu {time.process_time():6.1f} s] {section} {label}: {state}",
              file=sys.stderr, flush=True)
        return rows

    def save(self, clock: Clock):
        self.data["elapsed_s"] = clock.elapsed()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=float))
        os.replace(tmp, self.path)


# per section: title, then (column, row key, format: "" as is, "Si" before the atom count)
TABLES = {
    "models": ("Energy + forces + stress per call (potentials; forward only for property models)",
               [("model", "model", ""), ("atoms", "atoms", "d"), ("what", "what", ""), ("edges", "edges", "d"),
                ("triplets", "triplets", "d"), ("compile s", "compile_s", ".1f"),
                ("device ms", "device_ms", ".2f"), ("call ms", "call_ms", ".2f"), ("host ms", "host_ms", ".2f"),
                ("atom-steps/s", "atom_steps_per_s", ".0f"), ("peak MiB", "peak_mib", "d"),
                ("E/atom eV", "energy_per_atom", ".6f"), ("value", "prediction", ".6f")]),
    "md": ("MD, jax engine ({md_model}, Langevin 300 K, 1 fs, skin 0.3 A)",
           [("cell", "atoms", "Si"), ("replicas", "replicas", "d"), ("steps", "steps", "d"),
            ("ms/step", "ms_per_step", ".2f"), ("atom-steps/s", "atom_steps_per_s", ".0f"),
            ("first run s (compiling)", "first_run_s", ".1f"), ("recompilations", "recompilations", "d"),
            ("rebuilds", "rebuilds", "d"), ("peak MiB", "peak_mib", "d")]),
    "ensemble": ("Deep ensemble of {md_model}: energy + forces + stress of every member",
                 [("cell", "atoms", "Si"), ("what", "what", ""), ("compile s", "compile_s", ".1f"),
                  ("device ms", "device_ms", ".2f"), ("x one member", "x_one_member", ".2f"),
                  ("peak MiB", "peak_mib", "d")]),
    "train": ("One training step (E + F + S Huber loss, clip + AdamW)",
              [("model", "model", ""), ("structures", "structures", "d"), ("atoms", "atoms", "d"),
               ("compile s", "compile_s", ".1f"), ("step ms", "step_ms", ".1f"),
               ("structures/s", "structures_per_s", ".1f"), ("atoms/s", "atoms_per_s", ".0f"),
               ("peak MiB", "peak_mib", "d")]),
}


def _cell(row: dict, key: str, fmt: str) -> str:
    value = row.get(key)
    return "" if value is None else f"Si{value}" if fmt == "Si" else format(value, fmt)


def markdown(data: dict) -> str:
    env = data["environment"]
    lines = [f"# jaxmat on {env['device']} ({env['backend']}, {env['n_devices']} device(s)), {data['dtype']}"
             f"{', smoke sizes' if data['smoke'] else ''}", "",
             f"{env['nvidia_smi'] or 'no nvidia-smi'}; " + ", ".join(f"{k} {v}" for k, v in env["versions"].items())
             + f"; Python {env['python']}; jaxmat {env['jaxmat_commit'] or '(no git)'}; {data['elapsed_s']:.0f} s", ""]
    for section, (title, columns) in TABLES.items():
        if not (rows := data[section]):
            continue
        columns = [c for c in columns if c[1] not in ("energy_per_atom", "prediction") or any(c[1] in r for r in rows)]
        lines += [f"## {title.format(**data)}", "", "| " + " | ".join(c[0] for c in columns) + " |",
                  "|" + "---|" * len(columns)]
        for r in rows:
            cells = [_cell(r, key, fmt) for _, key, fmt in columns]
            if "skipped" in r or "error" in r:
                note = f"skipped ({r['skipped']})" if "skipped" in r else f"FAILED: {r['error']}"
                cells = cells[:2] + [note] + [""] * (len(columns) - 3)
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def run_sections(report: Report, clock: Clock, p: dict, dtype: str, names: list[str], sections: list[str]):
    default, loaded = jaxmat.DEFAULT_MODEL, {}

    def model(name):  # loaded inside the first row's try: a broken bundle is one failed row
        return loaded.get(name) or loaded.setdefault(name, jaxmat.load_model(name))

    def share(section):
        return clock.share(SECTIONS[section] / sum(SECTIONS[s] for s in SECTIONS if s in sections))

    if "models" in sections:
        for name in names:  # property models (cheap) first: the time they leave goes to the potentials
            try:
                model(name)
            except Exception:  # noqa: BLE001 - raised again, and recorded, in the model's first row
                pass
        names = sorted(names, key=lambda n: n in loaded and loaded[n].output_kind == "atoms")
        models_end = share("models")
        for i, name in enumerate(names):
            deadline, failed = clock.share(1 / (len(names) - i), models_end), False
            for reps in p["efs_reps"]:
                label = {"model": name, "atoms": 8 * reps**3}
                if failed:
                    report.data["models"].append({**label, "skipped": "a smaller cell failed"})
                    continue
                failed = "error" in report.attempt(clock, deadline, "models", label, lambda: efs_row(
                    model(name), reps, dtype, p["repeats"]))[0]
        sections = sections[1:]
    if "md" in sections:
        deadline, sections = share("md"), sections[1:]
        for reps, replicas in p["md"]:
            report.attempt(clock, deadline, "md", {"atoms": 8 * reps**3, "replicas": replicas},
                           lambda: md_row(default, reps, replicas, dtype, p["md_steps"], p["md_chunk"]))
    if "ensemble" in sections:
        deadline, sections = share("ensemble"), sections[1:]
        for reps in p["ens_reps"]:
            report.attempt(clock, deadline, "ensemble", {"atoms": 8 * reps**3},
                           lambda: ensemble_rows(model(default), p["members"], reps, dtype, p["repeats"]))
    if "train" in sections:
        report.attempt(clock, share("train"), "train", {"model": default, "structures": p["train_batch"]},
                       lambda: train_row(model(default), p["train_batch"], p["train_reps"], dtype, p["train_repeats"]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (also GPU_BENCH_SMOKE=1): the CPU test")
    ap.add_argument("--json", help="output JSON (default $OUT/gpu_bench.json, else out/gpu_bench.json)")
    ap.add_argument("--budget-s", type=float, help="time budget, s (default 400; smoke 600)")
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    ap.add_argument("--models", help="comma-separated model names (default: every embedded one)")
    ap.add_argument("--sections", default=",".join(SECTIONS), help="a comma-separated subset of the default")
    args = ap.parse_args(argv)
    sections = [s for s in SECTIONS if s in args.sections.split(",")]  # in the table's order
    if set(args.sections.split(",")) - set(sections):
        ap.error(f"--sections: expected a subset of {','.join(SECTIONS)}, got {args.sections}")
    smoke = args.smoke or os.environ.get("GPU_BENCH_SMOKE", "").lower() in ("1", "true", "yes")
    p = PROFILES["smoke" if smoke else "full"]
    out = Path(args.json) if args.json else Path(os.environ.get("OUT") or ROOT / "out") / "gpu_bench.json"

    jaxmat.retain_host_memory()  # as the jaxmat command does, before the first JAX computation
    clock = Clock(p["budget_s"] if args.budget_s is None else args.budget_s)
    report = Report(out, {"environment": environment(), "smoke": smoke, "dtype": args.dtype,
                          "md_model": jaxmat.DEFAULT_MODEL, "profile": p})
    names = args.models.split(",") if args.models else jaxmat.list_pretrained()
    with jax.enable_x64(args.dtype == "float64"):
        run_sections(report, clock, p, args.dtype, names, sections)
    report.save(clock)
    text = markdown(report.data)
    out.with_suffix(".md").write_text(text + "\n")
    print(text + f"\nJSON: {out}; table: {out.with_suffix('.md')}; {report.failed} item(s) failed", flush=True)
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
