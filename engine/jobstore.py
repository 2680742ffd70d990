"""Job records in Redis: what the API and the workers know about a bulk job.

The API creates the record before it sends the chord; each per-file task stores its
file record in it; the chord callback writes the summary. ``GET /jobs/<id>`` and the
synchronous wait of ``POST /bulk_inference`` read it (O(1): counters, not a scan).

Keys (all expire ``CXR_JOB_TTL_S`` after the last write, default 7 days):

* ``cxr:job:<id>``: a hash with ``status`` (queued, running, completed, failed),
  ``total``, ``processed``, ``skipped`` (counters), ``input``, ``output``, ``layout``,
  ``owner`` (the subject of the token that sent the job: ``GET /jobs/<id>`` shows the
  job to that subject and to admins only), ``created_at``, ``started_at``,
  ``finished_at`` (epoch seconds), and ``summary`` (the JSON job summary, once finished);
* ``cxr:job:<id>:files``: a hash, file index -> the file's record (JSON);
* ``cxr:job:<id>:paths``: a list, the job's input files by index (so that a file whose
  task died without a word can still be named in the summary);
* ``cxr:job:<id>:starts``: a hash, file index -> how many times a worker started the
  file's task (``begin_file``), to give up a file that kills its worker every time;
* ``cxr:jobs:active``: a set of the ids of jobs not finished yet, for the stalled-job
  watchdog (``workers.watchdog``).

The per-file keys are deleted when the job finishes (the summary holds their content).

Recording a file is idempotent (a Lua script): a redelivered task that stores the same
file again moves the counters only if the file's status changed. A finished job, or
one whose record is gone (expired, or Redis lost its data), takes no more file records:
a late or duplicate task cannot reopen it. Nothing here imports Celery, Flask or
TensorFlow.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from engine.monitoring import job_finished
from engine.summary import failed_summary

JOB_KEY = "cxr:job:{job_id}"
FILES_KEY = "cxr:job:{job_id}:files"
PATHS_KEY = "cxr:job:{job_id}:paths"
STARTS_KEY = "cxr:job:{job_id}:starts"
ACTIVE_KEY = "cxr:jobs:active"
FINISHED = ("completed", "failed")
DEFAULT_JOB_TTL_S = 7 * 86400

# KEYS[1] job hash, KEYS[2] files hash; ARGV: index, record JSON, new status, ttl, now.
# Returns 1 (first record of the file), 0 (recorded again), -1 (job gone or finished).
_RECORD_FILE = """
local status = redis.call('HGET', KEYS[1], 'status')
if (not status) or status == 'completed' or status == 'failed' then
  return -1
end
local old = redis.call('HGET', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
if old then
  local old_status = cjson.decode(old)['status']
  if old_status ~= ARGV[3] then
    redis.call('HINCRBY', KEYS[1], old_status, -1)
    redis.call('HINCRBY', KEYS[1], ARGV[3], 1)
  end
else
  redis.call('HINCRBY', KEYS[1], ARGV[3], 1)
end
if redis.call('HGET', KEYS[1], 'status') == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'running')
end
redis.call('HSETNX', KEYS[1], 'started_at', ARGV[5])
redis.call('HSET', KEYS[1], 'updated_at', ARGV[5])
redis.call('HDEL', KEYS[1], 'stalled_seen_at')
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return old and 0 or 1
"""

# KEYS[1] job hash, KEYS[2] files hash, KEYS[3] starts hash; ARGV: index, ttl.
# Returns {"gone"|"finished"|"recorded"|"start", starts so far (with this one), record}.
_BEGIN_FILE = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then
  return {'gone', 0, false}
end
if status == 'completed' or status == 'failed' then
  return {'finished', 0, false}
end
local record = redis.call('HGET', KEYS[2], ARGV[1])
if record then
  return {'recorded', 0, record}
end
local n = redis.call('HINCRBY', KEYS[3], ARGV[1], 1)
redis.call('EXPIRE', KEYS[3], ARGV[2])
return {'start', n, false}
"""


# KEYS[1] job hash; ARGV: now. 1 if the job is unfinished and was touched, else 0.
_TOUCH = """
local status = redis.call('HGET', KEYS[1], 'status')
if (not status) or status == 'completed' or status == 'failed' then
  return 0
end
redis.call('HSET', KEYS[1], 'updated_at', ARGV[1])
return 1
"""


def job_ttl_s(environ: Mapping[str, str] | None = None) -> int:
    raw = (environ if environ is not None else os.environ).get("CXR_JOB_TTL_S", "").strip()
    return int(float(raw)) if raw else DEFAULT_JOB_TTL_S


@dataclass(frozen=True)
class FileStart:
    """What ``begin_file`` found. ``state``: ``start`` (process the file; ``starts``
    counts this delivery), ``recorded`` (an earlier delivery recorded it: ``record``),
    ``finished`` (the job is over: do nothing) or ``gone`` (no such job record)."""

    state: str
    starts: int
    record: dict[str, Any] | None


@dataclass(frozen=True)
class JobProgress:
    job_id: str
    status: str
    total: int
    processed: int
    skipped: int
    summary: dict[str, Any] | None
    #: The subject of the token that sent the job; None for a record written without one.
    owner: str | None = None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def as_data(self) -> dict[str, Any]:
        """The ``Data`` of ``GET /jobs/<id>``: the summary once finished, else progress."""
        if self.summary is not None:
            return self.summary
        return {
            "job_id": self.job_id,
            "status": self.status,
            "total": self.total,
            "processed": self.processed,
            "skipped_count": self.skipped,
            "done": self.processed + self.skipped,
        }


class JobStore:
    def __init__(self, client: redis.Redis, ttl_s: int | None = None) -> None:
        """``client`` must decode responses to ``str``."""
        # redis-py >= 7 types each sync command as ``Awaitable[T] | T``; this client is
        # synchronous, so its results are used as plain values.
        self.client: Any = client
        self.ttl_s = ttl_s if ttl_s is not None else job_ttl_s()
        self._record_file = client.register_script(_RECORD_FILE)
        self._begin_file = client.register_script(_BEGIN_FILE)
        self._touch = client.register_script(_TOUCH)

    @classmethod
    def from_url(cls, url: str, ttl_s: int | None = None, *, retries: int = 3, **kwargs: Any) -> JobStore:
        """A store on its own connection pool; brief Redis outages are retried with backoff."""
        kwargs.setdefault("socket_connect_timeout", 2.0)
        kwargs.setdefault("socket_timeout", 10.0)
        kwargs.setdefault("health_check_interval", 30)
        kwargs.setdefault("decode_responses", True)
        client = redis.Redis.from_url(
            url,
            retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries),
            retry_on_error=[redis.ConnectionError, redis.TimeoutError],
            **kwargs,
        )
        return cls(client, ttl_s)

    def create(
        self,
        job_id: str,
        *,
        paths: Sequence[str],
        input_path: str,
        output_path: str,
        layout: str,
        owner: str | None = None,
    ) -> None:
        key = JOB_KEY.format(job_id=job_id)
        paths_key = PATHS_KEY.format(job_id=job_id)
        pipe = self.client.pipeline()
        for start in range(0, len(paths), 1000):
            pipe.rpush(paths_key, *paths[start : start + 1000])
        pipe.expire(paths_key, self.ttl_s)
        pipe.hset(
            key,
            mapping={
                "status": "queued",
                "total": len(paths),
                "processed": 0,
                "skipped": 0,
                "input": input_path,
                "output": output_path,
                "layout": layout,
                "created_at": f"{time.time():.3f}",
                **({"owner": owner} if owner is not None else {}),
            },
        )
        pipe.expire(key, self.ttl_s)
        pipe.sadd(ACTIVE_KEY, job_id)
        pipe.execute()

    def touch(self, job_id: str) -> bool:
        """Note that an unfinished job is alive without recording a file (``updated_at``):
        the API does it while the job waits for its tasks to be sent, so the stalled-job
        watchdog's clock (no file recorded for ``CXR_STALL_GRACE_S``) starts only once
        they are out. False when the job is finished or gone (nothing is written)."""
        return bool(self._touch(keys=[JOB_KEY.format(job_id=job_id)], args=[f"{time.time():.3f}"]))

    def job_paths(self, job_id: str) -> list[str]:
        return [str(p) for p in self.client.lrange(PATHS_KEY.format(job_id=job_id), 0, -1)]

    def meta(self, job_id: str) -> dict[str, str]:
        raw = self.client.hgetall(JOB_KEY.format(job_id=job_id))
        return {str(k): str(v) for k, v in raw.items() if k != "summary"}

    def begin_file(self, job_id: str, index: int) -> FileStart:
        """Called when a worker starts a file's task: count the delivery, or say why not to."""
        state, starts, record = self._begin_file(
            keys=[JOB_KEY.format(job_id=job_id), FILES_KEY.format(job_id=job_id), STARTS_KEY.format(job_id=job_id)],
            args=[index, self.ttl_s],
        )
        return FileStart(str(state), int(starts), json.loads(record) if record else None)

    def record_file(self, job_id: str, index: int, record: Mapping[str, Any]) -> bool | None:
        """Store one file's record; True the first time this file is recorded, False when
        it was recorded before, None when the job is finished or its record gone."""
        added = self._record_file(
            keys=[JOB_KEY.format(job_id=job_id), FILES_KEY.format(job_id=job_id)],
            args=[index, json.dumps(record, ensure_ascii=False), record["status"], self.ttl_s, f"{time.time():.3f}"],
        )
        return None if int(added) < 0 else bool(added)

    def fail(self, job_id: str, reason: str) -> None:
        """Finish a job that never got going (its chord could not be sent): ``failed``,
        every file skipped as ``lost``. Tasks that did get out find the job finished
        and do nothing, so no file is processed behind the summary's back."""
        paths = self.job_paths(job_id)
        records = self.file_records(job_id)  # files refused at discovery keep their own reason
        skipped = [
            {
                "path": p,
                "status": "skipped",
                **(
                    {"reason": records[i].get("reason", "lost"), "detail": records[i].get("detail", reason)}
                    if i in records
                    else {"reason": "lost", "detail": reason}
                ),
            }
            for i, p in enumerate(paths)
        ]
        self.finish(job_id, failed_summary(skipped, job_id=job_id, total=len(paths), failure=reason))

    def active_jobs(self) -> list[str]:
        return sorted(str(j) for j in self.client.smembers(ACTIVE_KEY))

    def active_overview(self) -> list[dict[str, str]]:
        """Status, ``created_at`` and ``started_at`` of every unfinished job (the metrics'
        scrape-time gauges, ``engine.monitoring``); one round trip for the lot."""
        ids = self.active_jobs()
        pipe = self.client.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(JOB_KEY.format(job_id=job_id), ["status", "created_at", "started_at"])
        jobs = []
        for status, created, started in pipe.execute() if ids else []:
            if status is not None and status not in FINISHED:  # an expired record is not a running job
                jobs.append({"status": str(status), "created_at": created or "", "started_at": started or ""})
        return jobs

    def forget_active(self, job_id: str) -> None:
        self.client.srem(ACTIVE_KEY, job_id)

    def mark_stalled_seen(self, job_id: str, when: float) -> float | None:
        """Note that a sweep found the job stalled; returns the earlier note, if any."""
        key = JOB_KEY.format(job_id=job_id)
        pipe = self.client.pipeline()
        pipe.hget(key, "stalled_seen_at")
        pipe.hsetnx(key, "stalled_seen_at", f"{when:.3f}")
        earlier, _ = pipe.execute()
        return float(earlier) if earlier else None

    def clear_stalled_seen(self, job_id: str) -> None:
        self.client.hdel(JOB_KEY.format(job_id=job_id), "stalled_seen_at")

    def file_records(self, job_id: str) -> dict[int, dict[str, Any]]:
        raw = self.client.hgetall(FILES_KEY.format(job_id=job_id))
        return {int(k): json.loads(v) for k, v in raw.items()}

    def finish(self, job_id: str, summary: Mapping[str, Any]) -> None:
        key = JOB_KEY.format(job_id=job_id)
        pipe = self.client.pipeline()
        pipe.hset(
            key,
            mapping={
                "status": summary["status"],
                "finished_at": f"{time.time():.3f}",
                "summary": json.dumps(summary, ensure_ascii=False),
            },
        )
        pipe.expire(key, self.ttl_s)
        # The per-file records live on in the summary; drop the hash now.
        pipe.delete(FILES_KEY.format(job_id=job_id), PATHS_KEY.format(job_id=job_id), STARTS_KEY.format(job_id=job_id))
        pipe.hdel(key, "stalled_seen_at")
        pipe.srem(ACTIVE_KEY, job_id)
        pipe.execute()
        job_finished(str(summary["status"]))

    def progress(self, job_id: str) -> JobProgress | None:
        fields = self.client.hmget(
            JOB_KEY.format(job_id=job_id), ["status", "total", "processed", "skipped", "summary", "owner"]
        )
        if fields[0] is None:
            return None
        status, total, processed, skipped, summary, owner = fields
        return JobProgress(
            job_id=job_id,
            status=str(status),
            total=int(total or 0),
            processed=int(processed or 0),
            skipped=int(skipped or 0),
            summary=json.loads(summary) if summary else None,
            owner=str(owner) if owner is not None else None,
        )
