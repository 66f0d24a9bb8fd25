r"""Stage 1 of Show-o2 (and every config of the same loop): ``python train_stage1.py config=... key=value``.

Launch on GPUs with accelerate, e.g.
    accelerate launch --config_file accelerate_configs/8_gpus_deepspeed_zero2.yaml train_stage1.py \
        config=configs/showo2_1.5b_stage_1_a.yaml
"""

from __future__ import annotations

import sys
from pathlib import Path

from utils.config import ConfigError, load_config

USAGE = __doc__ + "\nStage 1 and stage 2 share the loop; they differ only by their YAML (configs/).\n"


def main(argv: list[str] | None = None) -> None:
    try:
        cfg = load_config(argv, default_config=Path(__file__).parent / "configs/tiny/stage1.yaml", usage=USAGE)
    except ConfigError as e:
        sys.exit(f"config error: {e}")
    from training.loop import train  # imported after parsing: `--help` and typos answer fast

    train(cfg)


if __name__ == "__main__":
    main()
