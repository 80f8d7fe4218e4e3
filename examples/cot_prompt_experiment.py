"""The walkthrough's experiment, customised in code: the chain-of-thought system prompt and the
partial test reward, every other setting from the usual flags.

    uv run python examples/cot_prompt_experiment.py --experiment-name cot_prompt_v1 \\
        --log-sample-rate 0.1 --dataset-size 500

Functions set here must be importable on the worker machines too: workers import them by their
`module:name` path (run from the repository root, or install your module on the workers).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere

from common.config import ExperimentConfig  # noqa: E402
from common.flags import parse_config  # noqa: E402
from common.prompts import r2e_cot_system_prompt  # noqa: E402
from common.rewards import partial_test_reward  # noqa: E402
from trainer import train  # noqa: E402

if __name__ == "__main__":
    config = parse_config(sys.argv[1:], ExperimentConfig, prog="cot_prompt_experiment.py")
    config.system_prompt_fn = r2e_cot_system_prompt
    config.reward_fn = partial_test_reward
    sys.exit(train(config))
