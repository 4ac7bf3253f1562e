"""kaon.monitoring: request logs with redaction, drift and outlier detectors, alerts.

    ref = fit_reference(model, x_calibration)             # at registration; saved as reference.npz
    monitor = Monitor(ref, feature_extractor(model))       # at serving, off the hot path
    monitor.observe(x_live)                                # -> outlier scores; alerts when drift persists
"""

from kaon.monitoring.alarm import AlarmState, update_alarm
from kaon.monitoring.alerts import Alert, WebhookSink, log_sink
from kaon.monitoring.features import FeatureExtractor, Features, feature_extractor
from kaon.monitoring.metrics import MonitorMetrics
from kaon.monitoring.monitor import Monitor
from kaon.monitoring.redaction import Redactor, luhn_valid
from kaon.monitoring.reference import FILENAME as REFERENCE_FILENAME
from kaon.monitoring.reference import Reference, fit_reference
from kaon.monitoring.request_log import Exchange, RequestLog

__all__ = [
    "REFERENCE_FILENAME", "AlarmState", "Alert", "Exchange", "FeatureExtractor", "Features", "Monitor",
    "MonitorMetrics", "Redactor", "Reference", "RequestLog", "WebhookSink", "feature_extractor", "fit_reference",
    "log_sink", "luhn_valid", "update_alarm",
]
