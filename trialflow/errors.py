"""trialflow's errors.

    TrialflowError
    ├── InvalidSignup        bad input from the signup page (422)
    ├── NotFound             unknown trial, instance, effect (404)
    ├── TransitionRefused    the lifecycle does not allow this trigger now (409)
    ├── NotAllowed           the person may not take this step (403)
    ├── ConfigError          bad reference data or settings, with file and line
    ├── SlackCallFailed      Slack would not open a form while the person waited (views.open)
    └── DeliveryError        an effect could not be delivered
        ├── RetryLater       transient: try again (after ``retry_after`` seconds if known)
        └── PermanentFailure the provider refused for good: park the effect
            └── PayloadRefused   ... because of what trialflow sent (a 4xx about the content:
                                 Slack invalid_blocks / msg_too_long, GitHub 422): the same
                                 payload would be refused again, so a retry cannot help
"""
from __future__ import annotations


class TrialflowError(Exception):
    pass


class InvalidSignup(TrialflowError):
    def __init__(self, message: str, field: str = "email"):
        super().__init__(message)
        self.message = message
        self.field = field


class NotFound(TrialflowError):
    pass


class TransitionRefused(TrialflowError):
    def __init__(self, trigger: str, state: str, known: bool = True):
        self.trigger = trigger
        self.state = state
        self.known = known
        if known:
            msg = f"'{trigger}' is not allowed while the trial is {state}"
        else:
            msg = f"'{trigger}' is not a step of the trial lifecycle"
        super().__init__(msg)


class NotAllowed(TrialflowError):
    pass


class ConfigError(TrialflowError):
    def __init__(self, message: str, path: str | None = None, line: int | None = None):
        self.path = path
        self.line = line
        where = f"{path}:{line}: " if path and line else (f"{path}: " if path else "")
        super().__init__(f"{where}{message}")


class SlackCallFailed(TrialflowError):
    pass


class DeliveryError(TrialflowError):
    pass


class RetryLater(DeliveryError):
    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class PermanentFailure(DeliveryError):
    pass


class PayloadRefused(PermanentFailure):
    pass
