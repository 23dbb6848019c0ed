"""What a registry entry supports on this machine, asked of a fresh process with the entry's environment
(`framebench list`): its devices, Adam form, presets and precisions, answered on the worker's event
channel. Apart from the command line because it is the driver's work (a worker started, read and
stopped as a job's is), which the edge only prints.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import tempfile
import threading
import uuid

from framebench.core import registry

DESCRIBE_TIMEOUT_S = 120.0  # how long `framebench list` waits for one entry's answer
ANSWER_CAP_BYTES = 1 << 20  # the longest answer it reads


def describe(entry: registry.Entry) -> dict:
    """Ask a fresh process (with the entry's environment) what the entry supports here; its answer
    comes on the worker's event channel, whatever the backend prints. A process that does not answer
    within DESCRIBE_TIMEOUT_S (an import or an available() that hangs) is killed with all it started,
    and it dies with this one."""
    timeout_s = DESCRIBE_TIMEOUT_S
    from framebench.driver.node import read_lines, start_worker, stop_job, worker_process
    from framebench.driver.worker import JOB_TOKEN_VARIABLE, PARENT_PID_VARIABLE

    token = uuid.uuid4().hex
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **entry.variables, PARENT_PID_VARIABLE: str(os.getpid()), JOB_TOKEN_VARIABLE: token}
    lines: queue.Queue = queue.Queue(1)
    done = threading.Event()
    with tempfile.TemporaryFile() as log:
        process, channel = start_worker(worker_process(sys.executable, "--describe", entry.backend, entry.variant), env, log)
        process.stdin.close()
        threading.Thread(target=read_lines, args=(channel, lines, ANSWER_CAP_BYTES, done), daemon=True).start()
        try:
            _, answer = lines.get(timeout=timeout_s)
        except queue.Empty:
            return {"error": f"no answer within {timeout_s:g} s (its import or available() hangs); killed"}
        finally:
            done.set()
            stop_job(process, token)
        log.seek(0)
        printed = log.read().decode("utf-8", errors="replace")
    try:
        info = json.loads(answer.decode("utf-8")) if isinstance(answer, bytes) else None
    except ValueError:
        info = None
    if isinstance(info, dict) and (set(info) == {"error"} or set(info) == {"devices", "adam_form", "presets", "precisions"}):
        return info
    return {"error": (printed.strip().splitlines() or ["no answer"])[-1]}  # it died first, or said something else: its last line says why
