"""What the data planes refuse, and why, in the same words over HTTP and gRPC."""

from __future__ import annotations

REPOSITORY = (
    "the model repository API is not exposed by the gateway: models are loaded on demand; "
    "use the admin API (POST /admin/models/{name}/load, GET /admin/placement) instead"
)
SHARED_MEMORY = (
    "shared-memory regions can't be registered through the gateway (they live on one backend's host and "
    "the gateway chooses the backend); send tensors in the request"
)
OPERATOR = "not exposed by the gateway: set it on the backends themselves"


def http_refusal(path: str) -> str | None:
    """Why an HTTP path of Triton's protocol is refused by the gateway, or None when it isn't one of those.

    (Repository load and unload stay 404s that point to the admin API, from the KServe path parser.)"""
    if path.startswith("/v2/models/") and not path.endswith("/trace/setting"):
        return None  # the warm path: no split
    parts = path.rstrip("/").split("/")
    if parts[:2] != ["", "v2"] or len(parts) < 3:
        return None
    if parts[2] in ("systemsharedmemory", "cudasharedmemory"):
        return SHARED_MEMORY
    if parts[2] == "logging":
        return f"log settings are {OPERATOR}"
    if parts[2] == "trace" or (parts[2] == "models" and parts[-2:] == ["trace", "setting"]):
        return f"trace settings are {OPERATOR}"
    return None
