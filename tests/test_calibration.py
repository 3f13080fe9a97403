"""synthetic_aerial is calibrated like NTIRE-21 (issue: core engine), checked over 3 seeds
(seed 0 in `make test`, all three in `make test-all`).

EO alone >= 95 % test accuracy; SAR alone clearly lower but far above chance (10 %);
vanilla fusion >= 95 % with > 0.9 of the MU share on EO; Gaussian EO noise of variance 0.12
degrades vanilla fusion without erasing it.
"""

from __future__ import annotations

import pytest

from raybal.resolve import default_config
from raybal.training.loop import fit

ROB = {"robustness.enabled": True, "robustness.modalities": ["eo"], "robustness.corruptions": ["gaussian"],
       "robustness.levels": {"gaussian": [0.12]}, "robustness.splits": ["test"], "robustness.measure_mu": False}


@pytest.mark.slow  # ~2 minutes a seed on 2 cores: make test-all
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_synthetic_aerial_calibration(seed: int) -> None:
    base = {"train.seed": seed, "data.seed": seed}
    eo = fit(default_config(**base, **{"data.informativeness": {"sar": 0.0}})).final["final.test_accuracy"]
    sar = fit(default_config(**base, **{"data.informativeness": {"eo": 0.0}})).final["final.test_accuracy"]
    fused = fit(default_config(**base, **ROB))
    acc, share = fused.final["final.test_accuracy"], fused.final["final.mu.eo"]
    noisy = fused.robustness[0]["accuracy"]
    summary = f"seed {seed}: EO {eo:.3f} SAR {sar:.3f} fusion {acc:.3f} MU_eo {share:.3f} EO-noise@0.12 {noisy:.3f}"
    assert eo >= 0.95, summary
    assert 0.55 <= sar <= 0.9 and sar < eo - 0.08, summary
    assert acc >= 0.95, summary
    assert share > 0.9, summary
    assert 0.45 <= noisy <= acc - 0.05, summary  # degraded, not erased (chance is 0.10)


@pytest.mark.slow  # ~2.5 minutes a seed on 2 cores: make test-all
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_ntire21_profile_meets_its_unimodal_and_fusion_figures(seed: int) -> None:
    """The figures the profile was calibrated to and reaches (docs/flagship.md): EO alone 97.5 %, SAR alone
    84.9 %, vanilla fusion 97.8 %, each within the calibration's 2 points plus the seeds' spread there (SAR
    alone: 0.82-0.86 over seeds 0-4). Its vanilla EO share (~0.77) and noise figures are not calibration
    targets it meets: checked only for their direction."""
    base = {"train.seed": seed, "data.seed": seed, "data.profile": "ntire21"}
    eo = fit(default_config(**base, **{"data.informativeness": {"sar": 0.0}})).final["final.test_accuracy"]
    sar = fit(default_config(**base, **{"data.informativeness": {"eo": 0.0}})).final["final.test_accuracy"]
    fused = fit(default_config(**base, **ROB))
    acc, share, noisy = fused.final["final.test_accuracy"], fused.final["final.mu.eo"], fused.robustness[0]["accuracy"]
    summary = f"seed {seed}: EO {eo:.3f} SAR {sar:.3f} fusion {acc:.3f} MU_eo {share:.3f} EO-noise@0.12 {noisy:.3f}"
    assert abs(eo - 0.975) <= 0.025, summary
    assert abs(sar - 0.849) <= 0.04, summary
    assert abs(acc - 0.978) <= 0.025, summary
    assert share > 0.5 and noisy < acc - 0.01, summary  # leans on EO; EO noise costs accuracy
