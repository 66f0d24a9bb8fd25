r"""Stage 2 of Show-o2: ``python train_stage2.py config=configs/showo2_1.5b_stage_2_a.yaml key=value ...``.

Same loop as stage 1 (``training/loop.py``); the stage-2 YAMLs set the per-group learning rates, the
cosine schedule, what is frozen and the understanding data. Launch on GPUs with accelerate, e.g.
    accelerate launch --config_file accelerate_configs/multi_nodes/8_gpus_node_0.yaml train_stage2.py \
        config=configs/showo2_1.5b_stage_2_a.yaml
"""

from __future__ import annotations

import sys
from pathlib import Path

from utils.config import ConfigError, load_config

USAGE = __doc__ + "\nStage 1 and stage 2 share the loop; they differ only by their YAML (configs/).\n"


def main(argv: list[str] | None = None) -> None:
    try:
        cfg = load_config(argv, default_config=Path(__file__).parent / "configs/tiny/stage2.yaml", usage=USAGE)
    except ConfigError as e:
        sys.exit(f"config error: {e}")
    from training.loop import train  # imported after parsing: `--help` and typos answer fast

    train(cfg)


if __name__ == "__main__":
    main()
