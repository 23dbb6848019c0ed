"""A worker that says and does what its script says, standing in for framebench.driver.worker (which
only says what is true) in the tests of what the node believes: `python tests/scripted_worker.py
SCRIPT` reads its job on stdin like the real one and runs the steps the JSON file SCRIPT lists, in order:

  {"send": EVENT}              one event line (EVENT a dict, as framebench.store.events.to_wire gives it)
  {"send": EVENT, "times": N}  the same line N times
  {"raw": TEXT}                TEXT on the channel as it is, no newline added
  {"fork": true}               fork without exec: the child keeps the channel and sleeps (its pid in $SCRIPT_PID_DIR)
  {"sleep": S}                 sleep S seconds
  {"exit": N}                  exit with status N at once
  {"signal": N}                kill itself with signal N

then exits 0."""

from __future__ import annotations

import json
import os
import sys
import time


def main() -> None:
    sys.stdin.read()
    channel = os.fdopen(int(os.environ["FRAMEBENCH_EVENT_FD"]), "w", encoding="utf-8")
    with open(sys.argv[1]) as script:
        steps = json.load(script)
    for step in steps:
        if "send" in step:
            channel.write((json.dumps(step["send"]) + "\n") * step.get("times", 1))
        if "raw" in step:
            channel.write(step["raw"])
        channel.flush()
        if step.get("fork") and os.fork() == 0:
            with open(os.path.join(os.environ["SCRIPT_PID_DIR"], str(os.getpid())), "w"):
                pass
            time.sleep(600)
            os._exit(0)
        time.sleep(step.get("sleep", 0))
        if "exit" in step:
            os._exit(step["exit"])
        if "signal" in step:
            os.kill(os.getpid(), step["signal"])
            time.sleep(5)


if __name__ == "__main__":
    main()
