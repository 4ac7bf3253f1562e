"""kaon.robustness: adversarial attacks (and training against them), corruptions, calibration, audits."""

from kaon.robustness.attacks import FGSM, PGD
from kaon.robustness.auditor import audit, audits_of
from kaon.robustness.calibration import expected_calibration_error, reliability_bins
from kaon.robustness.report import AuditReport

__all__ = ["FGSM", "PGD", "AuditReport", "audit", "audits_of", "expected_calibration_error", "reliability_bins"]
