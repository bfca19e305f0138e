"""The error taxonomy: every failure a client can see, with its HTTP status and OpenAI shape.

Owns: `GpumuxError` and its subclasses (status, OpenAI `type`, stable `code`) and the
envelope `{"error": {"message", "type", "param", "code"}}`; also `StepFailed`, the one
internal failure that crosses layers (adapters raise it, the orchestrator recovers from
it), so that no adapter imports it from the scheduler above.
Does not: render HTTP responses (`http/errors` does) or log. Pure.
"""

from __future__ import annotations

from typing import ClassVar

from gpumux.core.eviction import Step


class GpumuxError(Exception):
    """Root of every error that ends up in a client's response."""

    http_status: ClassVar[int] = 500
    error_type: ClassVar[str] = "server_error"
    code: ClassVar[str] = "internal_error"

    def __init__(
        self, message: str, *, param: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.retry_after = retry_after

    def envelope(self) -> dict[str, object]:
        return openai_envelope(self.message, self.error_type, self.code, self.param)


def openai_envelope(
    message: str, error_type: str, code: str | None, param: str | None = None
) -> dict[str, object]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


class ClientError(GpumuxError):
    http_status = 400
    error_type = "invalid_request_error"
    code = "invalid_request"


class InvalidJson(ClientError):
    code = "invalid_json"


class MissingModel(ClientError):
    code = "missing_model"


class UnsupportedMediaType(ClientError):
    http_status = 415
    code = "unsupported_media_type"


class InvalidApiKey(ClientError):
    http_status = 401
    error_type = "authentication_error"
    code = "invalid_api_key"


class ModelNotFound(ClientError):
    http_status = 404
    code = "model_not_found"


class RouteNotFound(ClientError):
    http_status = 404
    code = "not_found"


class MethodNotAllowed(ClientError):
    http_status = 405
    code = "method_not_allowed"


class ExpectationFailed(ClientError):
    http_status = 417
    code = "expectation_failed"


class RequestTooLarge(ClientError):
    http_status = 413
    code = "request_too_large"


class QueueFull(GpumuxError):
    http_status = 429
    error_type = "rate_limit_error"
    code = "queue_full"


class ServerError(GpumuxError):
    http_status = 500


class ModelUnavailable(ServerError):
    http_status = 503
    code = "model_unavailable"


class ShuttingDown(ServerError):
    http_status = 503
    code = "shutting_down"


class QueueTimeout(ServerError):
    http_status = 504
    error_type = "timeout_error"
    code = "queue_timeout"


class UpstreamTimeout(ServerError):
    http_status = 504
    error_type = "timeout_error"
    code = "upstream_timeout"


class BackendCrashed(ServerError):
    http_status = 502
    code = "backend_crashed"


class BackendUnreachable(ServerError):
    http_status = 502
    code = "backend_unreachable"


class AdapterLoadFailed(ServerError):
    """vLLM refused (or did not finish) loading a configured LoRA adapter; the message
    carries vLLM's own. The next request for the adapter tries the load again."""

    http_status = 502
    code = "adapter_load_failed"


class SwitchConflict(ClientError):
    http_status = 409
    code = "switch_in_progress"


class AdminTokenMissing(ClientError):
    http_status = 401
    error_type = "authentication_error"
    code = "missing_admin_token"


class AdminTokenInvalid(ClientError):
    http_status = 403
    error_type = "permission_error"
    code = "invalid_admin_token"


# ---- internal: never shown to a client as such -------------------------------------


class StepFailed(Exception):
    """A step could not be completed; `detail` is safe to show to operators."""

    def __init__(self, model: str, step: Step, detail: str) -> None:
        super().__init__(f"{model}: {step.value} failed: {detail}")
        self.model = model
        self.step = step
        self.detail = detail
