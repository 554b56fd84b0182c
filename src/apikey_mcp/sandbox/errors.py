"""The sandbox's errors, answered in the gateway's envelope: {"error": {"message", "type", "code", ...}}."""

from __future__ import annotations

from starlette.responses import JSONResponse


class SandboxError(Exception):
    """A refusal the sandbox answers as the gateway would: its status, code, message and extra fields."""

    def __init__(self, status: int, code: str, message: str, *, param: str | None = None, **extra: object) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.param, self.extra = status, code, message, param, extra

    def response(self) -> JSONResponse:
        body = {"message": self.message, "type": "gateway_error", "code": self.code, **self.extra}
        if self.param:
            body["param"] = self.param
        headers = {"retry-after": f"{self.extra['retry_after']:g}"} if "retry_after" in self.extra else None
        return JSONResponse({"error": body}, status_code=self.status, headers=headers)
