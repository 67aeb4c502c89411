"""Lists that grow: the paging and filters of GET /training/jobs and GET /models.

Without a parameter each list answers as the API document has it (every item, ``{"jobs": [...]}`` or
``{"models": [...]}``); with ``limit`` it answers one page, and with filters only what passes them, adding ``total``
and where the next page starts. Job pages are read by position in the database (``cursor``: no page is skipped or
repeated while jobs are added), or by ``offset``.
"""

from base64 import urlsafe_b64decode, urlsafe_b64encode
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from errors import ServiceError
from jobs import JobRunner
from records import JobState, ModelRecord
from schemas import JobList, JobSummary
from store import JobFilters

MAX_PAGE = 1_000


class InvalidCursor(ServiceError):
    pass


class ListQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limit: int | None = Field(None, ge=1, le=MAX_PAGE, description="At most this many items (default: all)")
    # Bounded like every number the service takes: SQLite's integers stop at 2**63 - 1 (a larger offset was a 500).
    offset: int = Field(0, ge=0, le=2**63 - 1, description="Skip this many items first")
    env: str | None = Field(None, max_length=200, description="Only this environment")
    study: str | None = Field(None, max_length=64, description="Only the trials of this study (GET /studies)")

    def is_plain(self) -> bool:
        return self == type(self)()


class JobListQuery(ListQuery):
    cursor: str | None = Field(None, max_length=64, description="next_cursor of the previous page")
    status: list[JobState] | None = Field(None, description="Only jobs in these states (repeat the parameter)")
    model: str | None = Field(None, max_length=64, description="Only models whose name contains this")
    order: Literal["submitted", "newest"] = Field("submitted", description="Oldest first, or newest first")


class ModelListQuery(ListQuery):
    name: str | None = Field(None, max_length=64, description="Only models whose name contains this")


def _encode(position: int) -> str:
    return urlsafe_b64encode(f"j{position}".encode()).decode().rstrip("=")


def _decode(cursor: str) -> int:
    try:
        text = urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if not text.startswith("j") or not text[1:].isdigit():
            raise ValueError(cursor)
        return int(text[1:])
    except ValueError:
        raise InvalidCursor(f"Invalid cursor {cursor!r}: pass the next_cursor of a previous page") from None


def jobs_page(runner: JobRunner, query: JobListQuery) -> JobList:
    filters = JobFilters(
        statuses=[state.value for state in query.status] if query.status else None,
        env_name=query.env,
        model_name=query.model,
        study_id=query.study,
        after=_decode(query.cursor) if query.cursor else None,
        newest_first=query.order == "newest",
    )
    records, total, last = runner.page(filters, query.limit, query.offset)
    more = query.limit is not None and len(records) == query.limit and last is not None
    if more:
        # One more look: a page that ends exactly at the last job has no next page.
        more = bool(runner.db.page_jobs(JobFilters(**{**vars(filters), "after": last}), 1)[0])
    return JobList(
        jobs=[JobSummary.model_validate(record) for record in records],
        total=total,
        next_cursor=_encode(last) if more and last is not None else None,
    )


def models_page(
    records: list[ModelRecord], query: ModelListQuery, study_jobs: set[str] | None
) -> tuple[list[ModelRecord], int]:
    """The page of ``records`` that passes ``query``, and how many pass it in all."""
    kept = [
        record
        for record in records
        if (query.env is None or record.env_name == query.env)
        and (query.name is None or query.name in record.name)
        and (study_jobs is None or record.job_id in study_jobs)
    ]
    end = None if query.limit is None else query.offset + query.limit
    return kept[query.offset : end], len(kept)
