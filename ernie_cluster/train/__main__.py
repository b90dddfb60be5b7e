import logging
import os
import sys

from .trainer import main

if __name__ == "__main__":
    code = main()
    # The exit record is written and the logs closed: skip interpreter teardown, where paddle's gloo
    # context can abort (SIGABRT) once a peer rank has already exited, turning a completed run into a
    # failed attempt.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
