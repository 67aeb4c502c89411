"""Every domain error of the service, in one place.

Raised deep (store, jobs, routes), each is turned into an HTTP status code, and any header such as Retry-After,
by the API's handler (``api.ERROR_STATUS``); nothing here knows about HTTP.
"""


class ServiceError(Exception):
    """A request the service understood but cannot carry out."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


# models


class InvalidName(ServiceError):
    pass


class ModelNotFound(ServiceError):
    pass


class ModelExists(ServiceError):
    pass


class ModelBusy(ServiceError):
    pass


class ModelUnreadable(ServiceError):
    """A file in the models folder that GRPO.load cannot read: the store is damaged, not the request."""


class ModelNotExportable(ServiceError):
    """A model whose policy or spaces the ONNX export cannot express (e.g. Dict observations)."""


# training jobs


class InvalidTrainingRequest(ServiceError):
    pass


class UnknownEnvironment(ServiceError):
    pass


class JobNotFound(ServiceError):
    pass


class JobNotActive(ServiceError):
    pass


class JobNotResumable(ServiceError):
    pass


class TooManyJobs(ServiceError):
    """Every training slot is busy and the queue is full."""


# requests


class NotAuthenticated(ServiceError):
    pass


class Forbidden(ServiceError):
    """A known key asked for something outside its scope."""


class RateLimited(ServiceError):
    """A client went over its route group's rate limit: ``limit`` in the limits package's words, and in how many
    seconds it may try again."""

    def __init__(self, detail: str, limit: str, retry_after_s: int) -> None:
        super().__init__(detail)
        self.limit = limit
        self.retry_after_s = retry_after_s


class InvalidObservation(ServiceError):
    pass


class BatchTooLarge(ServiceError):
    pass


class InvalidEvaluation(ServiceError):
    pass


class PresetNotFound(ServiceError):
    pass
