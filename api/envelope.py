"""The response envelope of the API contract, and the one exception views raise.

Every answer but ``/ping`` is ``{"Result", "Data", "Message"}``. Views raise
:class:`ApiError` with the contract's exact message; anything else that escapes a view
becomes a 500 whose message never contains exception text (the exception is logged,
without request bodies, for the operator).
"""

from __future__ import annotations

from typing import Any

from flask import Response, jsonify


class ApiError(Exception):
    def __init__(self, status: int, message: str, data: Any = None, result: str = "Failure") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.data = data
        self.result = result


def envelope(status: int, message: str, data: Any = None, result: str = "Success") -> tuple[Response, int]:
    return jsonify({"Result": result, "Data": data, "Message": message}), status


def error_response(err: ApiError) -> tuple[Response, int]:
    return envelope(err.status, err.message, err.data, err.result)
