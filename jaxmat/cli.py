"""Command line: ``jaxmat md``, ``relax``, ``predict``, ``train``, ``evaluate``, ``ensemble``, ``llpr``, ``convert``, ``list``
(the training and evaluation subcommands are in ``jaxmat._cli_train``)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from jaxmat import _cli_train

# deferred-module: CLI start-up. Each subcommand imports the library when it runs (jax and flax take
# seconds to import), so `jaxmat --help` and `jaxmat list` stay fast.

_T0 = time.perf_counter()


def enable_compilation_cache() -> str | None:
    """Turn on JAX's persistent compilation cache for this process (applications only; the library
    never does this). Folder: $JAXMAT_CACHE_DIR or ~/.cache/jaxmat/xla; JAXMAT_CACHE_DIR=off disables."""
    import jax

    folder = os.environ.get("JAXMAT_CACHE_DIR", str(Path.home() / ".cache" / "jaxmat" / "xla"))
    if folder.lower() in ("off", "0", "none", ""):
        return None
    Path(folder).mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return folder


def _first_step_printer():
    """A printer for MD log lines that first says how long the first step took from start-up."""
    first = []

    def printer(line):
        if not first:
            first.append(time.perf_counter() - _T0)
            print(f"first step reached {first[0]:.1f} s after start", flush=True)
        print(line, flush=True)

    return printer


def _md(args) -> int:
    from jaxmat.errors import ConfigError
    from jaxmat.md import MDSettings, load_structure

    options = dict(temperature=args.temperature, timestep=args.timestep, steps=args.steps, ensemble=args.ensemble,
                   friction=args.friction, log_every=args.log_every, seed=args.seed,
                   max_temperature=args.max_temperature, max_energy_drift=args.max_energy_drift,
                   max_force_std=args.max_force_std, on_uncertain=args.on_uncertain, pressure=args.pressure)
    settings = MDSettings(**{k: v for k, v in options.items() if v is not None})  # checked before any work
    if args.replicas < 1:
        raise ConfigError(f"md.replicas = {args.replicas}: expected at least 1")
    if args.devices < 1:
        raise ConfigError(f"md.devices = {args.devices}: expected at least 1")
    if args.engine == "ase" and args.replicas != 1:
        raise ConfigError(f"md.replicas = {args.replicas}: replicas run on the jax engine (--engine jax)")
    if args.engine == "ase" and args.devices != 1:
        raise ConfigError(f"md.devices = {args.devices}: replicas are split over devices on the jax engine (--engine jax)")
    atoms = load_structure(args.structure, args.supercell)
    if args.engine == "jax":
        return _md_jax(args, settings, atoms)
    from jaxmat.calculators import JaxmatCalculator
    from jaxmat.md import run_md

    calc = JaxmatCalculator(model=args.model, dtype=args.dtype)
    cache = enable_compilation_cache()  # after the inputs were checked, before the first compilation
    print(f"jaxmat md: {atoms.get_chemical_formula()} ({len(atoms)} atoms), model {calc.model.name}, "
          f"{args.dtype}, {args.ensemble} {args.temperature} K, dt {args.timestep} fs, {args.steps} steps"
          f"{', XLA cache ' + cache if cache else ''}", flush=True)
    out = run_md(atoms, calc, settings, trajectory=args.trajectory, log=_first_step_printer(),
                 uncertain_file=args.uncertain_file)
    if out.get("stopped_at", -1) >= 0:
        print(f"stopped at step {out['stopped_at']}: the ensemble's force std passed {args.max_force_std} eV/A",
              flush=True)
    print(f"done in {time.perf_counter() - _T0:.1f} s; {calc.n_compilations} compilation(s); "
          f"trajectory {args.trajectory}", flush=True)
    return 0


def _md_jax(args, settings, atoms) -> int:
    from jaxmat.simulate import Engine, trajectory_paths

    engine = Engine(model=args.model, dtype=args.dtype, skin=args.skin)
    cache = enable_compilation_cache()
    print(f"jaxmat md (jax engine): {args.replicas} x {atoms.get_chemical_formula()} ({len(atoms)} atoms), model "
          f"{engine.model.name}, {args.dtype}, {settings.ensemble} {settings.temperature} K, dt {settings.timestep} fs, "
          f"{settings.steps} steps{', XLA cache ' + cache if cache else ''}", flush=True)
    engine.md([atoms] * args.replicas, settings, trajectory=args.trajectory, log=_first_step_printer(),
              progress=sys.stderr.isatty(), devices=args.devices)
    paths = trajectory_paths(args.trajectory, args.replicas)  # one file per replica when there are several
    if len(paths) <= 1:
        where = f"trajectory {paths[0]}" if paths else "no trajectory"
    else:
        where = "trajectories " + (", ".join(paths) if len(paths) <= 3 else
                                   f"{paths[0]} ... {paths[-1]} ({len(paths)} files)")
    print(f"done in {time.perf_counter() - _T0:.1f} s; {engine.n_compilations} compilation(s), {engine.n_rebuilds} "
          f"neighbour-list rebuild(s); {where}", flush=True)
    return 0


def _relax(args) -> int:
    from jaxmat.data import read_structures
    from jaxmat.md import _named_crystal
    from jaxmat.relax import RelaxSettings, format_table, relax_ase, write_relaxed

    settings = RelaxSettings(optimizer=args.optimizer, fmax=args.fmax, steps=args.steps, fix_cell=args.fix_cell,
                             pressure=args.pressure)
    from jaxmat.errors import ConfigError

    if args.engine == "jax" and args.optimizer != "fire":
        raise ConfigError(f"relax.optimizer = {args.optimizer!r}: the jax engine runs FIRE only")
    if args.batch_size < 1:
        raise ConfigError(f"relax.batch_size = {args.batch_size} (--batch-size): expected at least 1 structure at once")
    structures, names = [], []
    for spec in args.structures:
        if Path(spec).exists():
            frames = read_structures(spec, ":")
            structures += frames
            names += [spec if len(frames) == 1 else f"{spec}@{k}" for k in range(len(frames))]
        else:
            structures.append(_named_crystal(spec))
            names.append(spec)
    t0 = time.perf_counter()
    if args.engine == "jax":
        from jaxmat.simulate import Engine

        engine = Engine(model=args.model, dtype=args.dtype)
        enable_compilation_cache()
        records = engine.relax(structures, settings, names=names, graphs_per_batch=args.batch_size)
        extra = f"; {engine.n_compilations} compilation(s)"
    else:
        from jaxmat.calculators import JaxmatCalculator

        calc = JaxmatCalculator(model=args.model, dtype=args.dtype)
        enable_compilation_cache()
        records = [relax_ase(a, calc, settings, name) for a, name in zip(structures, names)]
        extra = f"; {calc.n_compilations} compilation(s)"
    print(format_table(records))
    written = write_relaxed(records, args.output)
    failed = sum(r.error is not None for r in records)
    print(f"{written} relaxed structure(s) written to {args.output}" + (f"; {failed} failed (not written)" if failed else "")
          + f"; {time.perf_counter() - t0:.1f} s ({args.engine} engine){extra}", flush=True)
    return 1 if failed else 0  # a script checking $? must not read success when a structure failed


def _convert(args) -> int:
    from jaxmat.convert import convert_matgl, convert_sevenn

    if Path(args.source).is_file():  # a sevenn checkpoint (.pth); a matgl model is a folder
        model = convert_sevenn(args.source, args.destination, name=args.name)
    else:
        model = convert_matgl(args.source, args.destination, name=args.name)
    print(f"wrote {args.destination} ({model.family}, {len(model.element_types)} elements)")
    return 0


def _predict(args) -> int:
    from jaxmat.data import read_structures
    from jaxmat.models import load_model

    model = load_model(args.model)
    structures, names = [], []
    for path in args.files:
        frames = read_structures(path, ":")
        structures += frames
        names += [path if len(frames) == 1 else f"{path}@{k}" for k in range(len(frames))]
    values = model.predict(structures, graphs_per_batch=args.batch_size, dtype=args.dtype)
    unit = "eV" if model.output_kind == "atoms" else model.metadata.get("units", {}).get("target", "")
    what = "energy" if model.output_kind == "atoms" else "prediction"
    print(f"# model {model.name}: {what} [{unit}]")
    for name, atoms, value in zip(names, structures, values):
        print(f"{name}\t{atoms.get_chemical_formula()}\t{value:.6f}")
    return 0


def _list(args) -> int:
    import json

    from jaxmat._pretrained import PRETRAINED_DIR, list_pretrained  # not jaxmat.models: no jax/flax import

    rows = [("name", "family", "cutoff", "trained on")]
    for name in list_pretrained():
        config = json.loads((PRETRAINED_DIR / name / "config.json").read_text())
        hyper, meta = config.get("hyperparameters", {}), config.get("metadata", {})
        cutoff = f"{hyper['cutoff']:g} A" if "cutoff" in hyper else "-"
        rows.append((name, str(config.get("model", "?")), cutoff, meta.get("training_data") or _readme_data(name)))
    widths = [max(len(r[k]) for r in rows) for k in range(3)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[3])
    return 0


def _readme_data(name: str) -> str:
    """The first line under '# Training dataset' of a shipped model's README-*.md (matgl's), or '-'."""
    from jaxmat._pretrained import PRETRAINED_DIR

    for readme in sorted((PRETRAINED_DIR / name).glob("README*.md")):
        lines = readme.read_text().splitlines()
        for k, line in enumerate(lines):
            if line.strip().lower() == "# training dataset":
                return next((x.strip() for x in lines[k + 1:] if x.strip()), "-")
    return "-"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxmat", description="JAX universal interatomic potentials")
    sub = parser.add_subparsers(dest="command", required=True)

    md = sub.add_parser("md", help="molecular dynamics of a structure with a pretrained potential")
    md.add_argument("structure", help="structure file (any ase.io format; its last frame) or crystal name, e.g. Si, Cu, "
                    "NaCl:rocksalt:5.64")
    md.add_argument("--model", default="M3GNet-MP-2021.2.8-PES", help="pretrained name or bundle folder")
    md.add_argument("--temperature", type=float, default=300.0, help="K (default 300)")
    md.add_argument("--timestep", type=float, default=1.0, help="fs (default 1)")
    md.add_argument("--steps", type=int, default=300)
    md.add_argument("--ensemble", choices=("langevin", "nve", "nose_hoover", "npt"), default="langevin",
                    help="nose_hoover and npt (C-rescale barostat, --pressure) need --engine jax")
    md.add_argument("--engine", choices=("ase", "jax"), default="ase",
                    help="ase: ASE integrators, one structure (default); jax: jitted on-device chunks, replicas")
    md.add_argument("--replicas", type=int, default=1, help="jax engine: copies run at once (seeds seed, seed+1, ...)")
    md.add_argument("--skin", type=float, default=0.3, help="jax engine: Verlet skin of the neighbour lists, A")
    md.add_argument("--devices", type=int, default=1,
                    help="jax engine: split the replicas over this many devices (at least one replica each)")
    md.add_argument("--pressure", type=float, default=None,
                    help="npt only (refused with other ensembles): target pressure, GPa (default 0)")
    md.add_argument("--friction", type=float, default=0.01, help="Langevin friction, 1/fs (default 0.01)")
    md.add_argument("--supercell", type=int, nargs=3, default=None, help="repeat the cell (default: >= 64 atoms for anything periodic in 3D, named crystal or file; 1 1 1 keeps it as given)")
    md.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    md.add_argument("--trajectory", default="md.traj", help="ASE trajectory output (default md.traj)")
    md.add_argument("--log-every", type=int, default=10)
    md.add_argument("--seed", type=int, default=0)
    md.add_argument("--max-temperature", type=float, default=None,
                    help="K: stop if the temperature exceeds this (default max(5000, 10 x --temperature))")
    md.add_argument("--max-energy-drift", type=float, default=None,
                    help="eV/atom: NVE stops if the total energy moves more than this (default 0.02)")
    md.add_argument("--max-force-std", type=float, default=None,
                    help="eV/A: with an ensemble or LLPR model, write a step whose largest per-atom force std (the "
                    "norm of an atom's std vector) exceeds this for relabelling (see --on-uncertain); it is always logged")
    md.add_argument("--on-uncertain", choices=("stop", "collect"), default=None,
                    help="stop at the first such step (default) or collect every one and go on")
    md.add_argument("--uncertain-file", default=None,
                    help="extxyz file of those steps (default: <trajectory>_uncertain.extxyz)")
    md.set_defaults(func=_md)

    rx = sub.add_parser("relax", help="relax structures (positions and cell) with a potential")
    rx.add_argument("structures", nargs="+", help="structure files (every frame) or crystal names, e.g. NaCl:rocksalt:5.8")
    rx.add_argument("--model", default="M3GNet-MP-2021.2.8-PES", help="pretrained name or bundle folder")
    rx.add_argument("--engine", choices=("ase", "jax"), default="ase",
                    help="ase: ASE optimizer per structure (default); jax: batched FIRE on the device")
    rx.add_argument("--optimizer", choices=("fire", "bfgs"), default="fire")
    rx.add_argument("--fmax", type=float, default=0.05, help="eV/A: converged when every force row is below (default 0.05)")
    rx.add_argument("--steps", type=int, default=500, help="optimizer steps at most (default 500)")
    rx.add_argument("--fix-cell", action="store_true", help="relax the positions only")
    rx.add_argument("--pressure", type=float, default=None,
                    help="GPa: target hydrostatic pressure of the cell relaxation (default 0; not with --fix-cell)")
    rx.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    rx.add_argument("--batch-size", type=int, default=32, help="jax engine: structures relaxed at once")
    rx.add_argument("--output", default="relaxed.extxyz", help="extxyz of the relaxed structures (default relaxed.extxyz)")
    rx.set_defaults(func=_relax)

    pr = sub.add_parser("predict", help="predict with a model (e.g. MEGNet formation energy) for structure files")
    pr.add_argument("model", help="pretrained name or bundle folder")
    pr.add_argument("files", nargs="+", help="structure files (any ase.io format; every frame is used)")
    pr.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    pr.add_argument("--batch-size", type=int, default=32)
    pr.set_defaults(func=_predict)

    cv = sub.add_parser("convert", help="convert a matgl model folder or a sevenn checkpoint (.pth) to a jaxmat "
                        "bundle (needs torch)")
    cv.add_argument("source", help="matgl model folder (model.json + state.pt) or sevenn checkpoint file")
    cv.add_argument("destination")
    cv.add_argument("--name", default=None)
    cv.set_defaults(func=_convert)

    tr = sub.add_parser("train", help="train or fine-tune a model from a JSON config")
    tr.add_argument("config", nargs="?", help="JSON config (see --describe)")
    tr.add_argument("--workdir", default=None, help="output folder (default: config path without .json)")
    tr.add_argument("--resume", action="store_true", help="continue the checkpoint in workdir (Ctrl-C keeps the last "
                    "checkpoint and prints the command that resumes it)")
    tr.add_argument("--epochs", type=int, default=None, help="override optim.epochs (e.g. 2 for a short trial run)")
    tr.add_argument("--max-minutes", type=float, default=None, help="override run.max_wall_minutes: stop after this "
                    "many minutes of training (checkpointed; the best model so far is evaluated; --resume continues)")
    tr.add_argument("--describe", action="store_true", help="print every config field and exit")
    tr.set_defaults(func=_cli_train.run_train)

    ev = sub.add_parser("evaluate", help="error metrics of a model on labelled data files")
    ev.add_argument("model", help="pretrained name or bundle folder")
    ev.add_argument("data", nargs="+", help="labelled structure files (any ase.io format)")
    ev.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    ev.add_argument("--graphs-per-batch", type=int, default=4)
    ev.add_argument("--energy-key", default=None, help="info key of the label (default: calculator energy), "
                    "e.g. eform_per_atom for a MEGNet formation-energy model")
    ev.add_argument("--group-key", default=None, help="also print metrics per value of this info key "
                    "(e.g. group for mlearn: AIMD-NVT, Elastic, Surface, Vacancy)")
    ev.add_argument("--plots", default=".", help="ensembles: folder of the reliability and error-vs-sigma plots "
                    "(<data stem>_reliability.png, <data stem>_scatter.png; default .)")
    ev.set_defaults(func=_cli_train.run_evaluate)

    en = sub.add_parser("ensemble", help="stack trained models of one architecture into one ensemble bundle")
    en.add_argument("output", help="folder of the ensemble bundle")
    en.add_argument("members", nargs="+", help="bundle folders (or pretrained names) of the members, >= 2")
    en.add_argument("--calibrate-on", default=None, help="labelled file none of the members trained on: fit the "
                    "scales of the energy/force/stress spreads there (default: not calibrated; a quantity the file "
                    "does not label stays not calibrated)")
    en.add_argument("--method", choices=("nll", "musil"), default=None,
                    help="with --calibrate-on: nll (default) or musil (the Musil/Imbalzano alpha, >= 4 members)")
    en.add_argument("--force", action="store_true", help="write over the output if it exists")
    en.set_defaults(func=_cli_train.run_ensemble)

    ll = sub.add_parser("llpr", help="last-layer (LLPR) uncertainty for a trained single potential: a bundle whose "
                        "calculator reports energy_std, forces_std, stress_std like an ensemble's")
    ll.add_argument("model", help="bundle folder or pretrained name of a single potential")
    ll.add_argument("train_file", help="labelled or unlabelled frames the model was trained on (the feature covariance)")
    ll.add_argument("--calibrate-on", required=True, help="labelled frames the model did not train on: fit the "
                    "regularizer and the energy/force/stress scales there")
    ll.add_argument("--out", required=True, help="folder of the LLPR bundle")
    ll.add_argument("--force-directions", type=int, default=8, help="feature-gradient directions behind the force and "
                    "stress spreads (cost: one backward cotangent each; all features = exact; default 8); 0 = local: "
                    "each atom's force spread from its energy variance, at one model's cost")
    ll.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    ll.add_argument("--graphs-per-batch", type=int, default=4)
    ll.add_argument("--force", action="store_true", help="write over the output if it exists")
    ll.set_defaults(func=_cli_train.run_llpr)

    ls = sub.add_parser("list", help="list the pretrained models shipped with jaxmat")
    ls.set_defaults(func=_list)
    return parser


def main(argv=None) -> int:
    from jaxmat.errors import SimulationError, TrainingError

    args = build_parser().parse_args(argv)
    from jaxmat._host_memory import retain_host_memory_from_env

    retain_host_memory_from_env()  # before the first JAX computation; see jaxmat._host_memory
    try:
        return args.func(args)
    except (ValueError, OSError, SimulationError, TrainingError) as err:
        # jaxmat's own errors (StructureError, ConfigError, BundleError, DatasetError, ...) are
        # ValueErrors; runs that blew up are Simulation/TrainingErrors; OSErrors name their file.
        # Each message names the cause.
        print(f"jaxmat {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
