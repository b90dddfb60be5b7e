"""What one attempt on one node returns: `LaunchResult`, and `AttemptFailed` for submitit."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, Mapping, Optional


class AttemptFailed(RuntimeError):
    """Raised by `NodeLauncher.__call__` on Slurm when the attempt failed (even a failure being retried:
    exit code 75) or stopped without a requeue (the policy denied it: exit code 5)."""

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

    def adopt(self, decision: Mapping[str, Any]) -> None:
        """Take node 0's verdict for the attempt (its attempt.json), exit code included."""
        self.reason = decision.get("reason", self.reason)
        self.exit_code = int(decision.get("exit_code_node", self.exit_code))
        self.cause, self.action = decision.get("cause"), decision.get("action", "none")
        self.message = decision.get("message", self.message)
