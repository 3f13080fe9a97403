"""``raybal confirm`` (issue 36): a study's top configurations and its baseline re-trained on fresh
seeds, recorded as ``role = "confirm"``, read by ``raybal best`` beside the search-time figures."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from raybal.analysis.best import config_table
from raybal.analysis.confirmed import confirmed
from raybal.cli import main


def _rows(cid: str, role: str, vals: dict[int, float], method: str, start: int) -> list[dict]:
    return [{"trial_id": f"{cid}-{s}", "config_id": cid, "role": role, "status": "ok", "train.seed": s,
             "replicate": k, "balance.method": method, "final.val_accuracy": v, "config_json": "{}"}
            for k, (s, v) in enumerate(vals.items(), start=start)]


def test_the_confirmed_figures_match_hand_computations(tmp_path: Path) -> None:
    search = (_rows("A", "search", {0: 0.90, 1: 0.80}, "mu_target", 0) + _rows("B", "search", {0: 0.70, 1: 0.75},
                                                                               "mu_target", 0)
              + _rows("V", "baseline", {0: 0.60, 1: 0.65}, "vanilla", 0))
    conf = (_rows("A", "confirm", {1000: 0.78, 1001: 0.74}, "mu_target", 0)
            + _rows("B", "confirm", {1000: 0.77, 1001: 0.79}, "mu_target", 0)
            + _rows("V", "confirm", {1000: 0.70, 1001: 0.64}, "vanilla", 0))
    t = pd.DataFrame(search + conf)
    configs = config_table(t, "final.val_accuracy")  # the search's rows only
    assert configs.set_index("config_id").loc["A", "final.val_accuracy"] == pytest.approx(0.85)
    (tmp_path / "confirm.json").write_text(json.dumps({"seeds": [1000, 1001], "configs": [
        {"config_id": "A", "rank": 1, "role": "search"}, {"config_id": "B", "rank": 2, "role": "search"},
        {"config_id": "V", "rank": 0, "role": "baseline"}]}))
    c = confirmed(tmp_path, t, configs, "A", "final.val_accuracy", "max")
    assert c.interval.mean == pytest.approx(0.76) and c.interval.n == 2
    assert c.search_interval.mean == pytest.approx(0.85)
    assert c.gap == pytest.approx(0.09)  # the winner's curse: 0.85 at search time, 0.76 on fresh seeds
    d = c.vs_baseline.diff  # paired by seed: (0.78 - 0.70, 0.74 - 0.64)
    assert d.mean == pytest.approx(0.09) and d.n == 2 and d.low == pytest.approx(0.09 - 12.706 * 0.01, abs=1e-3)
    assert c.best_confirmed == "B"  # 0.78 confirmed beats the pick's 0.76
    tab = c.table.set_index("config_id")
    assert tab.loc["B", "gap"] == pytest.approx(0.725 - 0.78) and tab.loc["V", "role"] == "baseline"
    text = " ".join(c.sentences())
    assert "confirmed on 2 fresh seeds" in text and "0.0900 higher (the winner's curse" in text
    assert "B (search rank 2) has the best confirmed mean (0.7800): not the search's pick" in text


def test_confirm_retrains_the_top_configurations_and_the_baseline_on_fresh_seeds(
        small_study: Path, tmp_path: Path, local_ray: None, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "res"
    shutil.copytree(small_study, d)
    assert main(["best", str(d), "--json"]) == 0
    before = json.loads(capsys.readouterr().out)
    assert main(["confirm", str(d), "--top", "1", "--seeds", "2", "--quiet"]) == 0
    out = capsys.readouterr().out
    t = pd.read_parquet(d / "trials.parquet")
    search, conf = t[t["role"] != "confirm"], t[t["role"] == "confirm"]
    plan = json.loads((d / "confirm.json").read_text())
    picked = [c["config_id"] for c in plan["configs"]]
    base_id = search.loc[search["role"] == "baseline", "config_id"].iloc[0]
    ranking = [c for c in [before["config_id"], *(r["config_id"] for r in before["runners_up"])] if c != base_id]
    assert picked == [ranking[0], base_id] and plan["configs"][-1]["role"] == "baseline"
    assert len(conf) == 4 and set(conf["status"]) == {"ok"} and set(conf["config_id"]) == set(picked)
    assert set(conf["train.seed"]) == set(plan["seeds"]) and not set(plan["seeds"]) & set(search["train.seed"])
    assert not conf.duplicated(["config_id", "train.seed"]).any()
    # each confirmation run is its search configuration, only its seed differs
    for cid, g in conf.groupby("config_id"):
        stored = json.loads(search.loc[search["config_id"] == cid, "config_json"].iloc[0])
        search_seed = stored["train"].pop("seed")
        for cj in g["config_json"]:
            mine = json.loads(cj)
            assert mine["train"].pop("seed") != search_seed and mine == stored
    assert "confirmed on 2 fresh seeds" in out and "the winner's curse" in out
    assert main(["best", str(d), "--json"]) == 0
    after = json.loads(capsys.readouterr().out)
    # the selection and its search-time figures stand on the search's seeds
    assert (after["config_id"], after["value"], after["interval"]) == (before["config_id"], before["value"],
                                                                         before["interval"])
    c = after["confirmed"]
    assert c["interval"]["n"] == 2 and len(c["table"]) == 2
    assert (c["vs_baseline"] is not None) == (after["config_id"] != base_id)
    # the report: the confirmation's figure; the search's figures without the confirmation's runs
    assert main(["report", str(d), "--out", str(d / "rep")]) == 0
    html = (d / "rep" / "index.html").read_text()
    assert (d / "rep" / "confirmation.png").is_file() and "confirmed on 2 fresh seeds" in html
    assert "skipped: no confirmation" not in html
    # the same command again finds every run done: nothing is trained twice
    assert main(["confirm", str(d), "--top", "1", "--seeds", "2", "--quiet"]) == 0
    assert len(pd.read_parquet(d / "trials.parquet")) == len(t)
    capsys.readouterr()
    assert main(["confirm", str(d), "--top", "2", "--seeds", "2"]) == 2  # another plan than the one recorded
    assert "this study's confirmation is --top 1 --seeds 2" in capsys.readouterr().err


def test_confirm_bad_input_exits_2_with_one_line(small_study: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"kind": "run", "format_version": 1}))
    torn = tmp_path / "torn"
    shutil.copytree(small_study, torn)
    (torn / "confirm.json").write_text('{"top": 2, "seeds": [10')
    for argv, expect in ((["confirm", str(small_study), "--top", "0"], "--top: at least 1 configuration"),
                         (["confirm", str(small_study), "--seeds", "1"], "--seeds: at least 2 fresh seeds"),
                         (["confirm", str(run)], "no study.json"),
                         (["confirm", str(tmp_path / "nothing")], "no study.json"),
                         (["confirm", str(torn)], "confirm.json: not a confirmation plan raybal wrote")):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expect in err, (argv, err)
    assert not (small_study / "confirm.json").exists()


def test_the_confirmation_figure_is_skipped_not_fatal_when_no_configuration_can_be_called_best(
        small_study: Path, tmp_path: Path) -> None:
    """A confirmation whose study has no complete configuration under its constraints (an interrupted
    study, a constraint nobody meets): the report skips the figure with the reason instead of failing."""
    from raybal.analysis.plots import NoData, confirmation
    from raybal.results.tables import load_results

    d = tmp_path / "res"
    shutil.copytree(small_study, d)
    (d / "confirm.json").write_text(json.dumps({"top": 1, "seeds": [1000, 1001], "configs": []}))
    meta = json.loads((d / "study.json").read_text())
    meta["best"]["constraints"] = ["final.val_accuracy >= 2"]
    (d / "study.json").write_text(json.dumps(meta))
    with pytest.raises(NoData, match="no configuration whose every seed finished ok meets"):
        confirmation(load_results(d))


def test_a_figure_without_a_best_configuration_is_skipped_with_its_reason(small_study: Path, tmp_path: Path,
                                                                          monkeypatch) -> None:  # noqa: ANN001
    """raybal report: a figure that asks raybal best on a study with no configuration to call best (the
    importance and confirmation figures) is a note on the page, not a failed report."""
    import raybal.analysis.plots as plots
    from raybal.analysis.report import make_report
    from raybal.results.tables import ResultsError

    def no_best(res):  # noqa: ANN001, ANN202
        raise ResultsError("no configuration whose every seed finished ok meets the selection")

    monkeypatch.setattr(plots, "FIGURES", {"importance": (no_best, "which knob matters")})
    figures = make_report(small_study, tmp_path / "rep")
    assert [(f.name, f.path, f.note) for f in figures] == [
        ("importance", None, "no configuration whose every seed finished ok meets the selection")]
    assert "skipped: no configuration whose every seed" in (tmp_path / "rep" / "index.html").read_text()
