"""Two-stage training of any registered compressor (stage 1: alignment, stage 2: instruction tuning).

    from compactvlm.train import load_train_config, train
    result = train(load_train_config("configs/train/cpu_stage1.yaml", ["data.train=DIR/train.json"]))

Stages, data, optimiser, precision, checkpoints and logs are configuration (``train.config.TrainConfig``);
the loop runs on HF accelerate, so the same code trains on one CPU or many GPUs (DDP / FSDP / DeepSpeed).
"""

from .config import TrainConfig, load_train_config, train_config_from_dict
from .trainer import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "load_train_config", "train", "train_config_from_dict"]
