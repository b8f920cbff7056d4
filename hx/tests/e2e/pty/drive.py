#!/usr/bin/env python3
"""Types answers at a terminal program's prompts through a pseudo-terminal (pexpect).

hx/tests/e2e/setup.rs drives `hx setup` with it. Reads one JSON object on stdin:
  {"argv": [...], "env": {...}, "timeout": 60,
   "steps": [["text the program prints", "keys to type"], ...]}
Each step waits for its text (a literal, not a pattern) in the output, then types its keys
("\r" is Enter, " " toggles a multi-select item, "j" moves down a list). After the last
step it reads until the program exits. Prints the transcript with terminal escape
sequences removed; exits with the program's exit code, or 97 when a text never came.
"""

from __future__ import annotations

import io
import json
import re
import sys
import time

import pexpect

ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\r")


def main() -> int:
    spec = json.load(sys.stdin)
    log = io.StringIO()
    child = pexpect.spawn(
        spec["argv"][0],
        spec["argv"][1:],
        env=spec["env"],
        encoding="utf-8",
        codec_errors="replace",
        timeout=spec.get("timeout", 60),
        dimensions=(50, 200),
    )
    child.logfile_read = log
    for text, keys in spec["steps"]:
        try:
            child.expect_exact(text)
        except (pexpect.TIMEOUT, pexpect.EOF) as error:
            print(ESCAPES.sub("", log.getvalue()))
            print(f"\n[drive.py: {text!r} never came ({type(error).__name__})]")
            child.close(force=True)
            return 97
        time.sleep(0.1)  # the prompt has switched the terminal to its mode
        child.send(keys)
    try:
        child.expect(pexpect.EOF, timeout=spec.get("timeout", 60) * 3)
    except pexpect.TIMEOUT:
        print(ESCAPES.sub("", log.getvalue()))
        print("\n[drive.py: the program did not exit]")
        child.close(force=True)
        return 97
    child.close()
    print(ESCAPES.sub("", log.getvalue()))
    return child.exitstatus if child.exitstatus is not None else 128 + (child.signalstatus or 0)


if __name__ == "__main__":
    sys.exit(main())
