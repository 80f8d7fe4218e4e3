"""`uv run python train.py [flags]`: the walkthrough's command, the same as `python -m trainer`.

    uv run python train.py --experiment-name longer_context --max-steps 25 \\
        --max-context-tokens 32000 --groups-per-step 4 --log-sample-rate 0.1
"""

import sys

from trainer.__main__ import main

if __name__ == "__main__":
    sys.exit(main(prog="train.py"))
