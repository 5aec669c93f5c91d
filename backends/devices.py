"""Device names as the API speaks them (auto, cpu, cuda, cuda:N), resolved the same way everywhere."""

from __future__ import annotations

from backends.errors import InvalidArgument, Unavailable


def resolve(device: str, available: list[str], backend: str) -> str:
    """A concrete device from `available` (["cpu", "cuda:0", ...]) for a requested name."""
    requested = device.strip().lower() or "auto"
    if requested == "auto":
        return next((d for d in available if d.startswith("cuda:")), "cpu")
    if requested == "cuda":
        requested = "cuda:0"
    if requested == "cpu" or (requested.startswith("cuda:") and requested[5:].isdigit()):
        if requested not in available:
            raise Unavailable(
                f"device {requested} is not available to the {backend} backend "
                f"(available: {', '.join(available)})"
            )
        return requested
    raise InvalidArgument("options.device", f"unknown device {device!r}; use auto, cpu, cuda or cuda:N")
