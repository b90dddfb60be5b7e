"""What one attempt on one node returns: `LaunchResult`, and `AttemptFailed` for submitit."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional


class AttemptFailed(RuntimeError):
    """Raised by `NodeLauncher.__call__` on Slurm when the attempt did not complete and is not requeued."""

    def __init__(self, result: "LaunchResult"):
        self.result = result
        super().__init__(f"training attempt {result.reason}"
                         f"{' (' + result.action + ')' if result.action not in ('none', '') else ''}: "
                         f"{result.message} [exit code {result.exit_code}]")


@dataclass
class LaunchResult:
    reason: str  # completed | stopped | failed
    exit_code: int
    job_id: Optional[str] = None
    restart: Optional[int] = None
    node_rank: Optional[int] = None
    step: Optional[int] = None
    cause: Optional[str] = None  # see attempt's docstring: preempted | timeout | launcher-died | crashed ...
    action: str = "none"  # none | requeue | requeue-denied | requeue-failed
    message: str = ""
    signal: Optional[str] = None  # the stop signal that came from outside; None when none did
    log_dir: Optional[str] = None

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)
