"""Every error kaon raises, with its HTTP status and a stable code.

The tree::

    KaonError (500, internal)
    ├── InvalidInputError (422, invalid_input)      a request or argument does not match what is expected
    │   └── MalformedRequestError (400, malformed_request)   the body cannot be parsed at all
    ├── NotFoundError (404, not_found)              a model, version, run, alias or route that does not exist
    ├── ConfigError (400, invalid_config)           a flag, option or environment variable is wrong
    ├── ModelLoadError (400, model_load_failed)     a model file cannot be loaded
    │   ├── UnsafeModelError (400, unsafe_model)    a pickle-based file without --trust-pickle
    │   └── IntegrityError (409, integrity_error)  an artifact whose sha256 does not match the registry
    ├── MissingDependencyError (500, missing_dependency)  an optional extra is not installed
    ├── RegistryError (503, registry_unavailable)   the database cannot be reached or written
    ├── UnauthorizedError (401, unauthorized) / ForbiddenError (403, forbidden)
    ├── RequestTimeoutError (408, request_timeout)  a request's body did not arrive in time
    ├── PayloadTooLargeError (413, payload_too_large)
    ├── RateLimitedError (429, rate_limited)
    ├── OverloadedError (503, overloaded)           the queue is full; retry after `retry_after_s`
    ├── EndpointTimeoutError (504, timeout)
    └── TrainingError (400, training_failed)        NaN loss, shapes that do not fit the model, labels out of range

A message says what happened, what was expected, what was received and how to fix it.
"""

from __future__ import annotations

from typing import Any


class KaonError(Exception):
    """Base of every kaon error. `status_code` maps it onto HTTP; `code` is stable for clients."""

    status_code: int = 500
    code: str = "internal"

    def __init__(self, message: str, *, fields: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields or []

    def to_dict(self, request_id: str | None = None) -> dict[str, Any]:
        """The one error envelope every kaon HTTP route answers with."""
        return {
            "error": {
                "code": self.code,
                "message": self.message,
                "fields": self.fields,
                "request_id": request_id,
            }
        }


class InvalidInputError(KaonError):
    status_code = 422
    code = "invalid_input"


class MalformedRequestError(InvalidInputError):
    status_code = 400
    code = "malformed_request"


class NotFoundError(KaonError):
    status_code = 404
    code = "not_found"


class MethodNotAllowedError(KaonError):
    status_code = 405
    code = "method_not_allowed"

    def __init__(self, message: str, *, allowed: list[str]) -> None:
        super().__init__(message)
        self.allowed = allowed


class ConfigError(KaonError):
    status_code = 400
    code = "invalid_config"


class ModelLoadError(KaonError):
    status_code = 400
    code = "model_load_failed"


class UnsafeModelError(ModelLoadError):
    code = "unsafe_model"


class IntegrityError(ModelLoadError):
    status_code = 409
    code = "integrity_error"


class MissingDependencyError(KaonError):
    status_code = 500
    code = "missing_dependency"

    def __init__(self, package: str, extra: str, purpose: str) -> None:
        super().__init__(
            f"{purpose} needs the '{package}' package, which is not installed. "
            f"Install it with: pip install 'kaon[{extra}]'"
        )
        self.package = package
        self.extra = extra


class RegistryError(KaonError):
    status_code = 503
    code = "registry_unavailable"


class UnauthorizedError(KaonError):
    status_code = 401
    code = "unauthorized"


class ForbiddenError(KaonError):
    status_code = 403
    code = "forbidden"


class RequestTimeoutError(KaonError):
    status_code = 408
    code = "request_timeout"


class PayloadTooLargeError(KaonError):
    status_code = 413
    code = "payload_too_large"


class UnsupportedMediaTypeError(KaonError):
    status_code = 415
    code = "unsupported_media_type"


class RateLimitedError(KaonError):
    status_code = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class OverloadedError(KaonError):
    status_code = 503
    code = "overloaded"

    def __init__(self, message: str, *, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class EndpointTimeoutError(KaonError):
    status_code = 504
    code = "timeout"


class TrainingError(KaonError):
    status_code = 400
    code = "training_failed"


class UnexportableModelError(InvalidInputError):
    """No exporter could turn the model into ONNX; the message has each reason and the module at fault."""

    code = "unexportable_model"


class InsufficientResourcesError(KaonError):
    """No node has room for a replica; the message says what is short."""

    status_code = 409
    code = "insufficient_resources"


def require(module: str, extra: str, purpose: str) -> Any:
    """Import an optional dependency, or raise an error that names the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(module.split(".")[0], extra, purpose) from exc
