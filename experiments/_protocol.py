"""The training protocol shared by the benchmark tables (mlearn, ablations), and its resumable driver.

The protocol, fixed before any test number is seen:

* the validation split is carved from the official training file (``data.valid_fraction``, seeded by
  ``run.seed``; each seed has its own split, data order and initialisation);
* the budget is a number of epochs (the cosine schedule's horizon), with early stopping on the
  validation loss, and optionally a cap in one-core minutes (``Run.cap_minutes``: the run's minutes
  summed over every call); the model kept is the best-validation EMA weights (``best_model/``);
* the training config never names the test file: the driver evaluates the official test split once,
  after the run has ended by its epochs, by early stopping or at its cap, into ``test.json``, which is
  never recomputed. A run stopped by a per-call wall-time limit (``--minutes``) before its cap is
  resumed (bit-identically), not evaluated. Validation-only runs (a search) have no test file
  (``Run.test`` None) and are never evaluated on one;
* each run's summary says how it ended ("epochs", "early_stopping" or "cap") and how much its
  best-so-far validation curves fell over the last ``TAIL_FRACTION`` of its epochs (``tail_fall``);
* the record of finished runs keeps each run's spec fingerprint (``spec_sha256``): a driver whose
  protocol changed refuses the old record (``check_record``) instead of reporting its numbers.

Runs are independent subprocesses, ``lanes`` at a time, each pinned to one CPU core (one XLA thread),
so a run's minutes are minutes of one core. Calling the driver again skips finished runs and
resumes unfinished ones from their checkpoints.

    python experiments/_protocol.py one WORKDIR [--core K] [--minutes M]   (one run; the drivers call it)
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import fcntl
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

SINGLE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


#: the end of a validation curve whose fall a run summary reports (``tail_fall``)
TAIL_FRACTION = 0.1


class Run(NamedTuple):
    """One training run: ``config`` is a full training config (data.train, no data.test)."""
    key: str  #: row label, e.g. "finetune/Si/0"
    config: dict
    test: str | None  #: the official test file, evaluated once at the end (None: validation only, never a test)
    workdir: Path
    cap_minutes: float | None = None  #: budget in one-core minutes, summed over every call (None: none)

    @property
    def spec(self) -> dict:
        """What the run trains and tests (its workdir's protocol.json)."""
        return {"key": self.key, "config": self.config, "test": self.test,
                **({} if self.cap_minutes is None else {"cap_minutes": self.cap_minutes})}


def spec_sha256(run: Run) -> str:
    """The fingerprint a record keeps of each run's spec (config, test file, cap), with absolute paths
    cut to their last two parts, so that a record made here still matches in a clone elsewhere."""
    import hashlib

    def short(v):
        if isinstance(v, dict):
            return {k: short(x) for k, x in v.items()}
        if isinstance(v, list):
            return [short(x) for x in v]
        return "/".join(Path(v).parts[-2:]) if isinstance(v, str) and v.startswith("/") else v

    return hashlib.sha256(json.dumps(short(run.spec), sort_keys=True).encode()).hexdigest()


def merge(base: dict, over: dict) -> dict:
    """``base`` with ``over`` merged in, nested dicts key by key (neither is modified)."""
    out = json.loads(json.dumps(base))
    for k, v in over.items():
        out[k] = merge(out.get(k, {}), v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def fmt(values, digits: int) -> str:
    """"mean ± sample std" of ``values`` ("-" if none, the value alone if one)."""
    import numpy as np

    if not values:
        return "-"
    v = np.asarray(values, float)
    return f"{v.mean():.{digits}f}" if len(v) == 1 else f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}"


def status(workdir: Path) -> str:
    """"done" (summary.json written), "trained" (ended by its epochs, early stopping or at its cap, not
    yet summarised), "partial" (a checkpoint to resume) or "new"."""
    if (workdir / "summary.json").is_file():
        return "done"
    if ended(workdir) in ("epochs", "early_stopping", "cap"):
        return "trained"
    return "partial" if (workdir / "checkpoint.msgpack").is_file() else "new"


def ended(workdir: Path) -> str | None:
    """Why the run's last call stopped (results.json), with "cap" for a wall-time stop once the run's
    minutes have reached its ``cap_minutes``; None before any results."""
    try:
        why = json.loads((workdir / "results.json").read_text()).get("ended")
    except (OSError, ValueError):  # absent, or being written
        return None
    cap = _spec(workdir).get("cap_minutes")
    return "cap" if why == "wall_time" and cap is not None and spent_minutes(workdir) >= cap else why


def _spec(workdir: Path) -> dict:
    try:
        return json.loads((workdir / "protocol.json").read_text())
    except (OSError, ValueError):
        return {}


def spent_minutes(workdir: Path) -> float:
    """The run's one-core minutes so far: the wall time of every call (minutes.json), summed."""
    path = workdir / "minutes.json"
    return float(sum(json.loads(path.read_text()))) if path.is_file() else 0.0


def tail_fall(curve, fraction: float = TAIL_FRACTION) -> float | None:
    """How much (%) the best-so-far value of a validation ``curve`` fell over its last ``fraction`` of
    epochs: 100 (b[-k-1] - b[-1]) / b[-k-1] with b the running minimum and k = max(1, round(fraction
    * epochs)); None for a curve of k epochs or fewer. Near 0: the run had converged (by this measure)."""
    import numpy as np

    b = np.minimum.accumulate(np.asarray([c for c in curve if c is not None], float))
    k = max(1, int(round(fraction * len(b))))
    if len(b) <= k or not np.all(np.isfinite(b[-k - 1:])) or b[-k - 1] == 0:
        return None
    return float(100 * (b[-k - 1] - b[-1]) / b[-k - 1])


def prepare(run: Run) -> None:
    """Write the run's config and test file into its workdir; refuse a workdir made with another config
    (a changed protocol needs a new workdir, not a silently mixed run)."""
    if "test" in run.config.get("data", {}):
        raise ValueError(f"{run.key}: the training config must not name the test file (the driver evaluates it once)")
    run.workdir.mkdir(parents=True, exist_ok=True)
    spec = run.spec
    path = run.workdir / "protocol.json"
    if path.is_file():
        old = json.loads(path.read_text())
        if old != spec:
            raise ValueError(f"{run.key}: {path} was written for another config or test file; the protocol changed, "
                             f"so start this run in a new workdir (old: {old}, new: {spec})")
        return
    path.write_text(json.dumps(spec, indent=1) + "\n")


def load_record(record: Path) -> dict:
    """{run key: summary} of the finished runs (committed: runs/ stays on the machine that trained)."""
    return json.loads(record.read_text()) if record.is_file() else {}


@contextlib.contextmanager
def locked(path: Path, wait: float = 0.0):
    """An exclusive advisory lock on ``path`` (created), held for the block. A workdir's lock is not waited
    for (``wait`` 0: another holder is an error: two drivers on one run would train it twice); a record's
    is held for a moment per write, so its writers wait up to ``wait`` seconds for it."""
    with open(path, "a") as fh:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise RuntimeError(f"{path} is locked: another driver (or a run it started) is still working here") from None
                time.sleep(0.05)
        yield


#: seconds a record's writer waits for another writer's moment under the lock
RECORD_WAIT = 60.0


def _rewrite_record(record: Path, change) -> None:
    """Apply ``change`` (a function of the {key: summary} dict, in place) to the record file, read again
    under its lock and written atomically."""
    with locked(record.with_suffix(".lock"), wait=RECORD_WAIT):
        done = load_record(record)
        change(done)
        tmp = record.with_suffix(".tmp")
        tmp.write_text(json.dumps(dict(sorted(done.items())), indent=1) + "\n")
        tmp.replace(record)


def add_to_record(record: Path, summary: dict) -> None:
    """Add one finished run to the record file."""
    _rewrite_record(record, lambda done: done.update({summary["key"]: summary}))


def check_record(runs: list[Run], done: dict, record: Path, accept_unstamped: bool = False) -> None:
    """Refuse a record whose entry for one of ``runs`` was made under another spec (its ``spec_sha256``
    differs): skipping that run would report another protocol's number as this one's. An entry recorded
    before fingerprints existed is checked against its workdir's protocol.json where that is here, and
    otherwise refused unless ``accept_unstamped`` (a driver whose spec has only grown since, as git shows)."""
    move = (f"a changed protocol needs a new record: move {record.name} and the runs' workdirs aside "
            "(git keeps the record) and train anew")
    for r in runs:
        if r.key not in done:
            continue
        got = done[r.key].get("spec_sha256")
        if got is None and (r.workdir / "protocol.json").is_file():
            if _spec(r.workdir) != r.spec:
                raise ValueError(f"{record}: {r.key} was trained in {r.workdir} with another config, test file or cap "
                                 f"than this protocol names; {move}")
        elif got is None and not accept_unstamped:
            raise ValueError(f"{record}: {r.key} was recorded without its spec's fingerprint (an older protocol), so "
                             f"it cannot be matched to this one; {move}")
        elif got is not None and got != spec_sha256(r):
            raise ValueError(f"{record}: {r.key} was trained with another config, test file or cap than this protocol "
                             f"names; {move}")


def run_all(runs: list, record: Path, lanes: int = 2, minutes: float | None = None,
            log=print, accept_unstamped: bool = False) -> tuple[dict, list[str], list[str]]:
    """Train every run not yet in ``record`` and evaluate its test split, ``lanes`` subprocesses at a
    time, each pinned to one of this process's cores; each finished run's summary is added to ``record``
    as it ends, with its spec's fingerprint (``spec_sha256``; a run recorded under another spec is an
    error, ``check_record``). An item of ``runs`` may be a list of runs, a chain: its runs are trained
    one after the other on one core, each only once the one before is recorded (a stage two after its
    stage one). ``minutes``: wall-time cap per call (the run resumes on the next call). Returns the
    record, the runs that failed (reported, never recorded: fix the cause and call again) and the runs
    left unfinished by ``minutes`` (or waiting for the run before them in their chain)."""
    chains = [c if isinstance(c, list) else [c] for c in runs]
    flat = [r for c in chains for r in c]
    done = load_record(record)
    check_record(flat, done, record, accept_unstamped)
    todo = [c for c in chains if any(r.key not in done for r in c)]
    for c in todo:
        for r in c:
            prepare(r)
    cores = sorted(os.sched_getaffinity(0))[:max(lanes, 1)]
    left = sum(r.key not in done for r in flat)
    log(f"{len(flat) - left} of {len(flat)} runs finished; {left} to go on {len(cores)} core(s) {cores}")
    free, lock, failed, unfinished = list(cores), threading.Lock(), [], []

    def train(run, core) -> bool:
        """Train and record ``run`` on ``core``; whether it is recorded."""
        try:
            cmd = [sys.executable, __file__, "one", str(run.workdir), "--core", str(core)]
            if minutes:
                cmd += ["--minutes", str(minutes)]
            with open(run.workdir / "train.log", "a") as fh:
                rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT).returncode
            state = status(run.workdir)
            log(f"{run.key}: {state}" + (f" (exit {rc}; see {run.workdir / 'train.log'})" if rc else ""))
            if rc:
                failed.append(f"{run.key} (exit {rc}; {run.workdir / 'train.log'})")
            elif state == "done":
                summary = {**json.loads((run.workdir / "summary.json").read_text()), "spec_sha256": spec_sha256(run)}
                with lock:
                    add_to_record(record, summary)
                    done[run.key] = summary
                return True
            else:
                unfinished.append(f"{run.key} ({state})")
        except Exception as e:  # noqa: BLE001 - one run's trouble must not stop the others or the report
            failed.append(f"{run.key} ({type(e).__name__}: {e})")
        return False

    def work(chain):
        with lock:
            core = free.pop()
        try:
            for k, run in enumerate(chain):
                if run.key not in done and not train(run, core):
                    unfinished.extend(f"{r.key} (waits for {run.key})" for r in chain[k + 1:] if r.key not in done)
                    break
        finally:
            with lock:
                free.append(core)

    with ThreadPoolExecutor(len(cores)) as pool:
        list(pool.map(work, todo))
    return done, failed, unfinished


def forget(record: Path, key: str) -> None:
    """Drop ``key`` from the record file: a run to train again."""
    _rewrite_record(record, lambda done: done.pop(key, None))


def report_unfinished(failed: list[str], unfinished: list[str]) -> None:
    """Exit non-zero naming the failed (1) or unfinished (3) runs, after the table has been written."""
    if failed:
        sys.exit("failed runs (the table leaves them out):\n  " + "\n  ".join(failed + unfinished))
    if unfinished:
        print("unfinished runs (stopped by --minutes; call again to resume them):\n  " + "\n  ".join(unfinished))
        sys.exit(3)


def one(workdir: Path, core: int | None, minutes: float | None) -> None:
    """Train (or resume) the run in ``workdir`` and, once it has ended, evaluate its test split once."""
    if core is not None:
        os.sched_setaffinity(0, {core})
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + SINGLE_THREAD).strip()
    # XLA's persistent compilation cache, shared by the runs beside this one (local, like the runs): the
    # seeds of one configuration compile the same steps (~15-20 s of one core per padded shape), so
    # only the first seed pays; a hit runs the identical executable
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(workdir.resolve().parent / ".xla_cache"))
    import jaxmat
    from jaxmat.train import config_from_dict, train_and_evaluate

    jaxmat.retain_host_memory()  # before the first JAX computation, as the jaxmat command does
    spec = json.loads((workdir / "protocol.json").read_text())
    with locked(workdir / ".lock"):
        if status(workdir) in ("new", "partial"):
            limits = [m for m in (minutes, _remaining(workdir, spec)) if m is not None]
            cfg = config_from_dict(merge(spec["config"], {"run": {"max_wall_minutes": min(limits) if limits else None,
                                                                   "progress": False}}))
            with _metered(workdir):
                train_and_evaluate(cfg, workdir, resume=True)
        if status(workdir) == "trained":
            if spec.get("test") and not (workdir / "test.json").is_file():  # evaluated once: a kill after it keeps it
                evaluate_test(workdir, spec)
            _write_summary(workdir, spec)


@contextlib.contextmanager
def _metered(workdir: Path, every: float = 15.0):
    """Count this call's minutes in minutes.json (wall) and cpu_minutes.json (CPU), partial epochs
    included: the call's entry is rewritten every ``every`` seconds and at the end, so a call ended by
    a kill (SIGTERM or SIGKILL) under-counts by at most ``every`` seconds instead of losing them all."""
    t0, c0 = time.perf_counter(), time.process_time()
    before = {n: json.loads((workdir / n).read_text()) if (workdir / n).is_file() else []
              for n in ("minutes.json", "cpu_minutes.json")}

    def write():
        for name, used in (("minutes.json", time.perf_counter() - t0), ("cpu_minutes.json", time.process_time() - c0)):
            tmp = workdir / (name + ".tmp")
            tmp.write_text(json.dumps(before[name] + [used / 60]) + "\n")
            tmp.replace(workdir / name)

    done = threading.Event()

    def beat():
        while not done.wait(every):
            try:
                write()
            except OSError:  # a full disk, say: the next beat and the final write try again
                pass

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        write()


def _remaining(workdir: Path, spec: dict) -> float | None:
    """Minutes left under the run's cap (None: no cap); a tiny positive number once spent, so that a
    run killed after its cap but before its results still writes them (one more step)."""
    cap = spec.get("cap_minutes")
    return None if cap is None else max(cap - spent_minutes(workdir), 1e-6)


def evaluate_test(workdir: Path, spec: dict) -> dict:
    """The test split's metrics (overall and per ``info["group"]``) of the run's best model, written once
    to test.json with parity_test.png."""
    from jaxmat.models import load_model
    from jaxmat.train import config_frames, config_from_dict, error_metrics, metrics_by_group, predict_frames
    from jaxmat.train._plots import parity_plots

    if (workdir / "test.json").is_file():
        raise RuntimeError(f"{workdir}: the test split was already evaluated (test.json); it is evaluated once")
    model = load_model(workdir / "best_model")
    dtype = spec["config"].get("run", {}).get("dtype", "float32")
    # read as the run read its training file (keys, stress factor)
    frames = config_frames(config_from_dict(merge(spec["config"], {"data": {"test": spec["test"]}})), "test")
    pred = predict_frames(model, model.params, frames, dtype=dtype)
    out = {**error_metrics(pred), "by_group": metrics_by_group(model, model.params, frames, "group", dtype=dtype)}
    parity_plots(pred, workdir / "parity_test.png", title=f"{spec['key']} (test)")
    tmp = workdir / "test.json.tmp"
    tmp.write_text(json.dumps(out, indent=1) + "\n")
    tmp.replace(workdir / "test.json")
    return out


def _write_summary(workdir: Path, spec: dict) -> None:
    """summary.json: epochs, best epoch, why it ended ("epochs", "early_stopping" or "cap"), one-core
    minutes (summed over calls; CPU minutes alongside), the cap, parameter count, the validation
    curves and their fall over the last ``TAIL_FRACTION`` of epochs, the kept model's validation
    metrics and the test metrics (None for a validation-only run)."""
    import jax
    import numpy as np

    from jaxmat.models import load_model

    rows = list(csv.DictReader(open(workdir / "metrics.csv")))
    if (workdir / "minutes.json").is_file():
        minutes = sum(json.loads((workdir / "minutes.json").read_text()))
    else:  # runs summarised before minutes.json existed: wall_s restarts at every call
        walls = [float(r["wall_s"]) for r in rows]
        minutes = sum(w for w, nxt in zip(walls, walls[1:] + [0.0]) if nxt < w) / 60
    model = load_model(workdir / "best_model")
    results = json.loads((workdir / "results.json").read_text())
    curve = {k: [round(float(r[k]), 6) if r.get(k) not in (None, "") else None for r in rows]
             for k in ("val_loss", "val_e_mae", "val_f_mae")}
    cpu = workdir / "cpu_minutes.json"
    out = {"key": spec["key"], "epochs": int(rows[-1]["epoch"]), "best_epoch": int(model.metadata["validation"]["epoch"]),
           "ended": ended(workdir), "minutes": round(minutes, 2),
           "cpu_minutes": round(sum(json.loads(cpu.read_text())), 2) if cpu.is_file() else None,
           "cap_minutes": spec.get("cap_minutes"),
           "params": int(sum(np.size(x) for x in jax.tree_util.tree_leaves(model.params))),
           "curve": curve, "tail_fall_percent": {k: tail_fall(v) for k, v in curve.items()},
           "valid": results.get("valid", {}),
           "test": json.loads((workdir / "test.json").read_text()) if spec.get("test") else None}
    (workdir / "summary.json").write_text(json.dumps(out, indent=1) + "\n")



if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    o = sub.add_parser("one", help="train and evaluate one prepared run")
    o.add_argument("workdir", type=Path)
    o.add_argument("--core", type=int, default=None)
    o.add_argument("--minutes", type=float, default=None)
    args = p.parse_args()
    one(args.workdir, args.core, args.minutes)
