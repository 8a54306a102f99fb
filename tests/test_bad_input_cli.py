"""The command line's readers and options: every bad input is exit status 2 and one line on stderr
naming the file, option or structure at fault (run in-process; the compilation cache is off)."""

import re

import ase.io
import numpy as np
import pytest
from ase.build import molecule

from jaxmat import cli


@pytest.fixture(autouse=True)
def no_cache(monkeypatch):
    monkeypatch.setenv("JAXMAT_CACHE_DIR", "off")  # the CLI would otherwise set JAX's global cache config


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    (d / "garbage.xyz").write_bytes(bytes(range(256)) * 4)
    (d / "notes.txt").write_text("hello, this is not a structure\n")
    (d / "broken.xyz").write_text("3\ncomment\nSi 0 0\n")
    (d / "empty.extxyz").write_text("")
    (d / "cfg.json").write_text('{"optim": {"epochs": "2"}, "data": {"train": "x.extxyz"}}')
    (d / "cfg_ok.json").write_text('{"data": {"train": "labelled.extxyz"}}')
    ase.io.write(d / "ethanol.xyz", molecule("CH3CH2OH"))
    labelled = molecule("H2O")
    labelled.info.update(config_type="strained", vector=[1.0, 2.0, 3.0])
    from ase.calculators.singlepoint import SinglePointCalculator

    labelled.calc = SinglePointCalculator(labelled, energy=-14.0, forces=np.zeros((3, 3)))
    ase.io.write(d / "labelled.extxyz", labelled)
    (d / "adir").mkdir()
    (d / "afile").write_text("x")
    return d


CASES = {  # name: (argv with {d} for the inputs folder, stderr regex)
    "md binary garbage": (["md", "{d}/garbage.xyz"], r"garbage.xyz: cannot be read by ase.io \("),
    "md text file": (["md", "{d}/notes.txt"], r"notes.txt: cannot be read by ase.io \("),
    "md malformed xyz": (["md", "{d}/broken.xyz"], r"broken.xyz: cannot be read by ase.io \("),
    "md empty file": (["md", "{d}/empty.extxyz"], r"empty.extxyz: (cannot be read|holds no structures)"),
    "md zero lattice constant": (["md", "Si:diamond:0"], r"'Si:diamond:0': the lattice constant '0' must be a positive number"),
    "md negative lattice constant": (["md", "Si:diamond:-5.4"], "must be a positive number"),
    "md lattice constant not a number": (["md", "Si:diamond:abc"], "'abc' must be a positive number"),
    "md unknown crystal": (["md", "NotACrystal"], "neither a structure file nor a crystal ase.build.bulk knows"),
    "md unknown structure kind": (["md", "Si:hexagonal-ish"], "neither a structure file nor a crystal"),
    "md too many fields": (["md", "Si:diamond:5.43:1"], r"expected NAME\[:STRUCTURE\[:A\]\]"),
    "md zero supercell": (["md", "Si", "--supercell", "0", "1", "1"], r"md.supercell = \[0, 1, 1\] .*each >= 1"),
    "md 20 fs": (["md", "Si", "--timestep", "20"], r"md.timestep = 20.0 \(float\): expected in \(0, 10\] fs"),
    "md negative temperature": (["md", "Si", "--temperature", "-5"], r"md.temperature = -5.0"),
    "md zero friction": (["md", "Si", "--friction", "0"], r"md.friction = 0.0"),
    "md zero log interval": (["md", "Si", "--log-every", "0"], r"md.log_every = 0"),
    "md missing model": (["md", "Si", "--model", "{d}/no-model"], "no model bundle at"),
    "md collapsed crystal": (["md", "Si:diamond:1.7"], "overlap: 0.736 A apart"),
    "md a directory": (["md", "{d}/adir"], "adir is a directory, not a structure file"),
    "md supercell of a molecule": (["md", "{d}/ethanol.xyz", "--supercell", "2", "2", "2"], "cannot be repeated"),
    "md trajectory a directory": (["md", "Si", "--steps", "1", "--trajectory", "{d}/adir"], "Is a directory"),
    "md with a property model": (["md", "Si", "--model", "MEGNet-MP-2018.6.1-Eform"], "expected a potential"),
    "md runaway limit below the temperature": (["md", "Si", "--temperature", "6000", "--max-temperature", "5000"],
                                               "must be above the temperature"),
    "predict missing file": (["predict", "M3GNet-MP-2021.2.8-PES", "{d}/nope.xyz"], "file .*nope.xyz does not exist"),
    "predict garbage": (["predict", "M3GNet-MP-2021.2.8-PES", "{d}/garbage.xyz"], "garbage.xyz: cannot be read"),
    "evaluate garbage": (["evaluate", "M3GNet-MP-2021.2.8-PES", "{d}/garbage.xyz"], "garbage.xyz: cannot be read"),
    "evaluate zero batch": (["evaluate", "M3GNet-MP-2021.2.8-PES", "{d}/labelled.extxyz", "--graphs-per-batch", "0"],
                            r"evaluate.graphs_per_batch = 0 \(int\): expected >= 1"),
    "evaluate property model without its key": (["evaluate", "MEGNet-MP-2018.6.1-Eform", "{d}/labelled.extxyz"],
                                                "--energy-key is required"),
    "evaluate a text label": (["evaluate", "M3GNet-MP-2021.2.8-PES", "{d}/labelled.extxyz", "--energy-key", "config_type"],
                              r"labelled.extxyz:0: the energy label \(key 'config_type'\) is not a number"),
    "evaluate a vector label": (["evaluate", "M3GNet-MP-2021.2.8-PES", "{d}/labelled.extxyz", "--energy-key", "vector"],
                                r"the energy label \(key 'vector'\) is not a number"),
    "evaluate a misspelt group key": (["evaluate", "M3GNet-MP-2021.2.8-PES", "{d}/labelled.extxyz", "--group-key", "grp"],
                                      r"no frame has info\['grp'\]"),
    "train workdir a file": (["train", "{d}/cfg_ok.json", "--workdir", "{d}/afile"], "File exists"),
    "train missing config": (["train", "{d}/nope.json"], "config file .*nope.json does not exist"),
    "train wrong type": (["train", "{d}/cfg.json"], r"cfg.json: config: optim.epochs = '2' \(str\): expected an integer"),
    "train not JSON": (["train", "{d}/notes.txt"], "notes.txt is not valid JSON"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_cli_input(files, capsys, case):
    argv, match = CASES[case]
    code = cli.main([a.replace("{d}", str(files)) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"jaxmat {argv[0]}: error: "), err
    assert re.search(match, err), err


def test_md_cli_blow_up_exits_2_and_keeps_the_good_frames(files, tmp_path, capsys):
    traj = tmp_path / "md.traj"
    code = cli.main(["md", str(files / "ethanol.xyz"), "--timestep", "10", "--steps", "20", "--log-every", "1",
                     "--trajectory", str(traj)])
    captured = capsys.readouterr()
    assert code == 2 and "MD stopped at step 1" in captured.err and "runaway limit" in captured.err, captured.err
    assert len(ase.io.read(traj, ":")) == 1
