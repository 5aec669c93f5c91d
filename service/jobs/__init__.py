"""The job system, one part per module.

* `events`: what a job reports (Accepted, Progress, Preview, Finished, Failed) and its numbered,
  resumable event log.
* `job`: one accepted job, its stop signal and the observer told of each step of its life.
* `runner`: runs one job through its backend to exactly one terminal event.
* `workers`: a device's waiting line and its worker threads, alone or in batches.
* `core`: the in-process job core: places, admits, runs and retains jobs.
* `store`: the interface the servicer speaks to (create, get, list, cancel, watch).
* `memorystore`: that interface over the in-process core (the default; needs nothing else).
* `redisstore`: that interface over Redis, shared by every replica: one queue per device
  class, events and snapshots any replica can read, idempotency keys across the deployment;
  its atomic steps are the Lua scripts of `redis_lua`; what any replica reads from it (a job, a
  caller's jobs, a job's events) is `redisreads`, how a replica runs jobs from the shared line
  (take, run, mirror, end) is `redisrun`.
* `leases`: the jobs a replica runs from the shared line: leases, taking over dead replicas'
  jobs, fencing, checkpoints (encoded by `checkpoints`), hand-off at a drain.

The names most callers need are re-exported here; the stores are imported from their modules
(they depend on the protobuf conversions, which depend on this package).
"""

from service.jobs.core import BATCH_MAX_CUDA, JobCore, Limits
from service.jobs.events import (
    Accepted,
    EncodedImage,
    Event,
    EventLog,
    Failed,
    Finished,
    Heartbeat,
    Preview,
    Progress,
    Resumed,
    State,
    Timings,
)
from service.jobs.job import Job, JobObserver, StopReason, StopSignal, new_job_id, not_found
from service.jobs.runner import PreviewStream, backend_job, run_job
from service.jobs.workers import DeviceWorkers, batch_key

__all__ = [
    "BATCH_MAX_CUDA",
    "Accepted",
    "DeviceWorkers",
    "EncodedImage",
    "Event",
    "EventLog",
    "Failed",
    "Finished",
    "Heartbeat",
    "Job",
    "JobCore",
    "JobObserver",
    "Limits",
    "Preview",
    "PreviewStream",
    "Progress",
    "Resumed",
    "State",
    "StopReason",
    "StopSignal",
    "Timings",
    "backend_job",
    "batch_key",
    "new_job_id",
    "not_found",
    "run_job",
]
