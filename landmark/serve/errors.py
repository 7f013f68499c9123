"""Errors in Google's shapes, so clients written for Cloud Vision read ours unchanged.

A call that fails as a whole answers `{"error": {"code": HTTP, "message", "status"}}`;
one photo of a batch that fails gets `{"code": google.rpc code, "message"}` in its own
response, and the others are still answered.
"""

from __future__ import annotations

from fastapi.responses import JSONResponse

STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
          404: "NOT_FOUND", 408: "DEADLINE_EXCEEDED", 409: "ALREADY_EXISTS",
          413: "INVALID_ARGUMENT", 500: "INTERNAL", 503: "UNAVAILABLE"}
RPC_CODE = {"INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 4, "NOT_FOUND": 5,
            "ALREADY_EXISTS": 6, "PERMISSION_DENIED": 7, "INTERNAL": 13, "UNAVAILABLE": 14,
            "UNAUTHENTICATED": 16}


class ApiError(Exception):
    """A request refused as a whole, with its HTTP status and one clear message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message

    def response(self) -> JSONResponse:
        return error_response(self.status, self.message)


class PhotoError(Exception):
    """One photo of a batch that cannot be answered; the rest of the batch is."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message

    def body(self) -> dict:
        return {"code": RPC_CODE[self.status], "message": self.message}


def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": status, "message": message,
                                   "status": STATUS.get(status, "UNKNOWN")}}, status_code=status)
