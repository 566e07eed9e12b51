"""Station tables: built-ins, ehtim format, CSV/YAML, and their errors."""

from __future__ import annotations

import numpy as np
import pytest

from interfero.arrays import BUILTIN_ARRAYS, load_array, read_ehtim
from interfero.errors import InterferoError

from .conftest import shared_path


@pytest.mark.parametrize("name,n", [("EHT2017", 8), ("EHT2018", 9), ("ngEHT", 15)])
def test_builtin_arrays(name, n):
    arr = load_array(name)
    assert len(arr) == n and arr.name == name
    assert np.all(np.linalg.norm(arr.xyz, axis=1) > 6.3e6)  # on the Earth's surface
    assert np.all(arr.sefd > 0)
    assert set(load_array("EHT2017").names) <= set(arr.names)


def test_builtins_listed():
    assert BUILTIN_ARRAYS == ("EHT2017", "EHT2018", "ngEHT")


@pytest.mark.parametrize("table", ["EHT2017.txt", "EHT2025.txt", "EHTII.txt", "SITES.txt", "GMVA_86GHz.txt"])
def test_reads_ehtim_tables(eh, table):
    path = shared_path("arrays", table)
    ours = read_ehtim(path)
    ref = eh.array.load_txt(str(path))
    assert list(ours.names) == list(ref.tarr["site"])
    assert np.allclose(ours.xyz, np.stack([ref.tarr["x"], ref.tarr["y"], ref.tarr["z"]], 1))
    assert np.allclose(ours.sefd[:, 0], ref.tarr["sefdr"])


def test_builtin_eht2017_matches_shared_ehtim_table():
    ours = load_array("EHT2017")
    ref = read_ehtim(shared_path("arrays", "EHT2017.txt"))
    for s in ref.stations:
        mine = ours.stations[ours.index(s.name)]
        assert np.allclose(mine.xyz, s.xyz) and mine.sefd_r == s.sefd_r


def test_csv_and_yaml_round_trip(tmp_path):
    arr = load_array("EHT2018")
    (tmp_path / "a.csv").write_text(arr.to_csv())
    assert load_array(tmp_path / "a.csv").stations == arr.stations
    lines = ["stations:"] + [
        f"  - {{name: {s.name}, x_m: {s.x}, y_m: {s.y}, z_m: {s.z}, sefd_r_jy: {s.sefd_r}}}" for s in arr.stations
    ]
    (tmp_path / "a.yaml").write_text("\n".join(lines))
    back = load_array(tmp_path / "a.yaml")
    assert back.names == arr.names and np.allclose(back.xyz, arr.xyz)


HEADER = "name,x_m,y_m,z_m,sefd_r_jy,sefd_l_jy,elev_min_deg,elev_max_deg\n"


@pytest.mark.parametrize(
    "body,match",
    [
        ("name,x_m,y_m,z_m,colour\nA,1e6,2e6,6e6,red\n", "unknown column"),
        (HEADER + "A,6e6,0,0,100,100,10,85\nA,0,6e6,0,100,100,10,85\n", "duplicate"),
        (HEADER + "A,nan,0,6e6,100,100,10,85\n", "non-finite"),
        (HEADER + "A,6e6,0,0,-5,100,10,85\n", "SEFD"),
        (HEADER + "A,6e6,zero,0,100,100,10,85\n", "not a number"),
        (HEADER, "no stations"),
        ("", "no header"),
    ],
)
def test_malformed_tables(tmp_path, body, match):
    p = tmp_path / "bad.csv"
    p.write_text(body)
    with pytest.raises(InterferoError, match=match):
        load_array(p)


def test_unknown_station_and_array():
    arr = load_array("EHT2017")
    with pytest.raises(InterferoError, match="unknown station 'XYZ'"):
        arr.subset(["ALMA", "XYZ"])
    with pytest.raises(InterferoError, match="unknown array"):
        load_array("EHT1999")


def test_sorted_by_sefd_puts_alma_first():
    assert load_array("EHT2017").sorted_by_sefd().names[0] == "ALMA"


def test_array_edits_add_and_remove_stations():
    from interfero.arrays import load_array, n_sites

    base = load_array("EHT2017")
    less = load_array("EHT2017-JCMT-SMT-APEX")
    assert less.names == tuple(n for n in base.names if n not in ("JCMT", "SMT", "APEX"))
    more = load_array("EHT2017+KP+PDB")
    assert more.names == base.names + ("KP", "PDB")
    assert more.stations[-1] == load_array("ngEHT").stations[load_array("ngEHT").index("PDB")]
    assert n_sites(base) == 6 and n_sites(less) == 5  # ALMA/APEX and SMA/JCMT are one site each


@pytest.mark.parametrize("spec,match", [("EHT2017-XYZ", "cannot remove unknown station 'XYZ'"),
                                        ("EHT2017+XYZ", "unknown station 'XYZ'"),
                                        ("EHT2017-LMT-PV-SMT-SPT", "2 sites"),
                                        ("EHT2017-", "an edit is"),
                                        ("EHT1999-ALMA", "unknown array")])
def test_bad_array_edits(spec, match):
    from interfero.arrays import load_array

    with pytest.raises(InterferoError, match=match):
        load_array(spec)
