"""Errors a route answers with vLLM's OpenAI-shaped body.

Owns: `ApiError` and the body ``{"error": {"message", "type", "param", "code"}}`` where,
as in vLLM, ``type`` is a class-like name ("BadRequestError") and ``code`` the integer
status. Pure; the app's middleware renders it.
"""

from __future__ import annotations

from http import HTTPStatus

_TYPES = {400: "BadRequestError", 404: "NotFoundError", 500: "InternalServerError"}


def error_type(status: int) -> str:
    """vLLM's ``type`` for a status: the phrase in CamelCase plus "Error"."""
    if status in _TYPES:
        return _TYPES[status]
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        return "Error"
    return "".join(word.capitalize() for word in phrase.replace("-", " ").split()) + "Error"


class ApiError(Exception):
    """Answer ``status`` with an OpenAI-shaped error body."""

    def __init__(
        self, status: int, message: str, err_type: str | None = None, param: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.err_type = err_type or error_type(status)
        self.param = param

    def body(self) -> dict[str, object]:
        return {
            "error": {
                "message": self.message,
                "type": self.err_type,
                "param": self.param,
                "code": self.status,
            }
        }
