"""`python -m dialogue` and the `dialogue` command."""

import logging
import os
import sys

from dialogue.apps.cli import app


def main() -> None:
    """`python -m dialogue`: the CLI, then out without the interpreter's teardown once a Temporal client
    was used. The SDK's Rust threads can outlive the command and abort the process while Python
    finalizes ("PyGILState_Release: thread state must be current", temporalio/sdk-python#300): seen
    once here after `dialogue recover` had done its work and printed it."""
    try:
        app()
        code = 0
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
        if isinstance(done.code, str):
            print(done.code, file=sys.stderr)
    if "temporalio.bridge.temporal_sdk_bridge" not in sys.modules:
        sys.exit(code)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
