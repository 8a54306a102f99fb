"""The command line's training and evaluation subcommands: ``jaxmat train``, ``evaluate``,
``ensemble`` and ``llpr`` (``jaxmat.cli`` parses the arguments and calls these). Each imports the
library only when it runs, so ``jaxmat --help`` and ``jaxmat list`` stay fast."""

from __future__ import annotations

import dataclasses
import shlex
import sys
from pathlib import Path

from jaxmat.errors import ConfigError

# deferred-module: CLI start-up. Each subcommand imports the library when it runs (jax and flax take
# seconds to import).


def run_train(args) -> int:
    from jaxmat.train import describe, interrupted_report, load_config, train_and_evaluate

    if args.describe:
        print(describe())
        return 0
    if not args.config:
        raise ValueError("a config file is required (jaxmat train --describe lists every field)")
    cfg = _train_overrides(load_config(args.config), args)
    from jaxmat.distributed import initialize_from_env

    multi = initialize_from_env()  # a SLURM job step or JAXMAT_COORDINATOR: jax.distributed, before any computation
    import jax

    workdir = args.workdir or str(Path(args.config).with_suffix(""))
    if jax.process_index() == 0:
        where = f" ({jax.process_count()} processes, {jax.device_count()} devices)" if multi else ""
        print(f"jaxmat train: {args.config} -> {workdir}{where}", flush=True)
    log = print if jax.process_index() == 0 else (lambda *a, **k: None)
    try:
        train_and_evaluate(cfg, workdir, resume=args.resume, log=log)  # ends with a summary of the run
    except KeyboardInterrupt:  # Ctrl-C: the loop checkpointed its last step (atomically); say how to go on
        if jax.process_index() == 0:
            again, resume = (_train_command(args, workdir, r) for r in (False, True))
            print(f"\njaxmat train: {interrupted_report(workdir, resume, again)}", file=sys.stderr, flush=True)
        return 130
    return 0


def _train_overrides(cfg, args):
    """``--epochs`` and ``--max-minutes`` replace optim.epochs and run.max_wall_minutes (checked as in a config)."""
    for flag, section, field, value in (("--epochs", "optim", "epochs", args.epochs),
                                        ("--max-minutes", "run", "max_wall_minutes", args.max_minutes)):
        if value is not None:
            try:
                setattr(cfg, section, dataclasses.replace(getattr(cfg, section), **{field: value}))
            except ConfigError as err:
                raise ConfigError(f"{flag} {value}: {err}") from None
    return cfg


def _train_command(args, workdir, resume: bool) -> str:
    """The shell command that runs this training again in ``workdir`` (with --resume: continues it)."""
    words = ["jaxmat", "train", args.config, "--workdir", workdir]
    words += ["--epochs", str(args.epochs)] if args.epochs is not None else []
    words += ["--max-minutes", f"{args.max_minutes:g}"] if args.max_minutes is not None else []
    return " ".join(shlex.quote(str(w)) for w in words + (["--resume"] if resume else []))


def run_evaluate(args) -> int:
    from jaxmat.data import read_frames
    from jaxmat.models import Ensemble, load_model
    from jaxmat.train import error_metrics, format_metrics, format_metrics_by_group, metrics_by_group, predict_frames

    model = load_model(args.model)
    if model.output_kind == "graph" and args.energy_key is None:
        raise ConfigError(f"--energy-key is required for {model.name}, a structure -> property model: it names the "
                          "info key of the per-structure target (e.g. eform_per_atom)")
    for path in args.data:
        require = ("energy",) if model.output_kind == "graph" else ("energy", "forces")
        frames = read_frames(path, energy_key=args.energy_key, require=require)
        metrics = error_metrics(predict_frames(model, model.params, frames, args.graphs_per_batch, args.dtype))
        print(f"{path}  ({len(frames)} structures, model {model.name})")
        print(format_metrics(metrics))
        if isinstance(model, Ensemble):
            _uncertainty_table(model, frames, path, args)
        elif type(model).__name__ == "LLPRModel":
            _llpr_table(model, frames, args)
        if args.group_key:
            table = metrics_by_group(model, model.params, frames, args.group_key, args.graphs_per_batch, args.dtype)
            print(f"by info[{args.group_key!r}]:")
            print(format_metrics_by_group(table))
    return 0


def _uncertainty_table(model, frames, path, args) -> None:
    """The calibration metrics of an ensemble on ``frames`` and its two plots."""
    from jaxmat.train import atom_report, format_atom_report, format_report, predict_members
    from jaxmat.train import uncertainty_plots, uncertainty_report
    from jaxmat.uncertainty import member_stats

    members = predict_members(model, frames, args.graphs_per_batch, args.dtype)
    print(f"uncertainty ({model.kind} ensemble of {model.size}, calibration {model.calibration['method']}; entries "
          "with zero reference excluded; MAE, RMS sigma and NLL in each row's unit):")
    print(format_report(uncertainty_report(model, members)))
    if members["forces_ref"].size:  # per atom: |force error| against |sigma vector| (what the MD watch uses)
        mean, std = member_stats(members["forces"])
        scale = model.spread_scale("forces") if model.is_calibrated("forces") else None
        print(format_atom_report(atom_report(members["forces_ref"], mean - members["forces_ref"], std, scale)))
    Path(args.plots).mkdir(parents=True, exist_ok=True)
    written = uncertainty_plots(model, members, Path(args.plots) / Path(path).stem)
    print("plots: " + ", ".join(str(p) for p in written))


def _llpr_table(model, frames, args) -> None:
    """The calibration metrics of an LLPR bundle on ``frames``, components and per atom."""
    from jaxmat.train import format_atom_report, format_report, llpr_predict, llpr_report

    report = llpr_report(model, llpr_predict(model, frames, args.graphs_per_batch, args.dtype))
    atoms = report.pop("atoms", None)
    how = f"{model.force_directions} force directions" if model.force_directions else "local force spreads"
    print(f"uncertainty (LLPR, {how}, calibration {model.calibration['method']}; "
          "entries with zero reference excluded; MAE, RMS sigma and NLL in each row's unit):")
    print(format_report(report))
    if atoms is not None:
        print(format_atom_report(atoms))


def run_ensemble(args) -> int:
    from jaxmat.data import read_frames
    from jaxmat.models import load_model, stack_members
    from jaxmat.train import fit_calibration, format_scales, predict_members
    from jaxmat.uncertainty import check_musil_size

    out = Path(args.output)
    if out.exists() and not args.force:  # e.g. `jaxmat ensemble a b c` meant `jaxmat ensemble OUT a b c`
        what = "a model bundle" if (out / "config.json").is_file() else ("a folder" if out.is_dir() else "a file")
        raise ConfigError(f"the output {args.output} exists ({what}); refusing to write over it. The first argument is "
                          "the output folder (jaxmat ensemble OUT MEMBER...): name a new folder, or add --force to "
                          "replace it")
    if args.method is not None and not args.calibrate_on:
        raise ConfigError(f"--method {args.method} chooses how --calibrate-on fits the spreads; without --calibrate-on "
                          "the ensemble is not calibrated: add --calibrate-on FILE or drop --method")
    method = args.method or "nll"
    if args.calibrate_on and method == "musil":
        check_musil_size(len(args.members), "jaxmat ensemble --method musil", "--method nll")
    meta = {"name": out.name, "members": list(args.members)}
    if args.calibrate_on:
        meta["calibrated_on"] = str(args.calibrate_on)
    ens = stack_members([load_model(m) for m in args.members], kind="deep", metadata=meta)
    if args.calibrate_on:
        frames = read_frames(args.calibrate_on, require=("energy",))
        ens = ens.with_calibration(fit_calibration(
            ens, predict_members(ens, frames), method,
            warn=lambda msg: print(f"jaxmat ensemble: warning: {msg}", file=sys.stderr, flush=True)))
    ens.save(args.output)
    print(f"wrote {args.output}: deep ensemble of {ens.size} {ens.family} members; {format_scales(ens.calibration)}")
    return 0


def run_llpr(args) -> int:
    from jaxmat.data import read_frames
    from jaxmat.models import load_model
    from jaxmat.train import fit_llpr, format_scales

    out = Path(args.out)
    if out.exists() and not args.force:
        raise ConfigError(f"the output {args.out} exists; refusing to write over it: name a new folder, or add --force")
    model = load_model(args.model)
    train = read_frames(args.train_file, require=())  # structures only: the feature covariance needs no labels
    valid = read_frames(args.calibrate_on, require=("energy",))
    llpr = fit_llpr(model, train, valid, force_directions=args.force_directions, dtype=args.dtype,
                    graphs_per_batch=args.graphs_per_batch)
    llpr = dataclasses.replace(llpr, _cache={}, metadata={**llpr.metadata, "name": out.name, "llpr_of": str(args.model),
                                                           "trained_on": str(args.train_file),
                                                           "calibrated_on": str(args.calibrate_on)})
    llpr.save(out)
    info = llpr.info
    print(f"wrote {args.out}: LLPR of {model.name} ({info['n_features']} last-layer features, {len(train)} training "
          f"frames, regularizer {info['regularizer']:.3g}); {format_scales(llpr.calibration)} fit on {len(valid)} frames "
          f"of {args.calibrate_on}; force/stress spreads from "
          + (f"{llpr.force_directions} feature-gradient directions" if llpr.force_directions
             else "each atom's energy variance (local; stress from the energy's, per volume)")
          + (f" ({100 * info['captured_force_variance']:.1f} % of the force variance there)"
             if info.get("captured_force_variance") is not None else ""))
    return 0
