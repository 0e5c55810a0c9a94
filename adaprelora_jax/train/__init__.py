"""Fine-tuning end to end: configs, data, the sharded train step, checkpoints, export,
and the `adaprelora-finetune` command. See docs/training.md.

`train(config, output_dir)` runs a `TrainConfig` (named configs: `config_by_name`);
`adaprelora-finetune` is its command line; `evaluate_task` scores a trained model on a
task's metrics (docs/evaluation.md).
"""

from adaprelora_jax.train.checkpoints import Checkpoints
from adaprelora_jax.train.checkpoints import TrainState
from adaprelora_jax.train.config import ConfigError
from adaprelora_jax.train.config import DataConfig
from adaprelora_jax.train.config import EvalConfig
from adaprelora_jax.train.config import ModelSpec
from adaprelora_jax.train.config import OptimConfig
from adaprelora_jax.train.config import TrainConfig
from adaprelora_jax.train.config import config_by_name
from adaprelora_jax.train.data import ByteTokenizer
from adaprelora_jax.train.eval_run import evaluate_saved
from adaprelora_jax.train.evaluate import GenerationConfig
from adaprelora_jax.train.evaluate import TaskResults
from adaprelora_jax.train.evaluate import evaluate_task
from adaprelora_jax.train.evaluate import metrics_from_predictions
from adaprelora_jax.train.data import read_e2e_csv
from adaprelora_jax.train.data import render_mr
from adaprelora_jax.train.export import hf_config_dict
from adaprelora_jax.train.export import save_hf_checkpoint
from adaprelora_jax.train.loop import Preempted
from adaprelora_jax.train.loop import TrainResult
from adaprelora_jax.train.loop import train
from adaprelora_jax.train.metrics import read_metrics
from adaprelora_jax.train.optim import make_optimizer
from adaprelora_jax.train.optim import make_schedule
from adaprelora_jax.train.step import make_train_step
from adaprelora_jax.train.step import split_model

__all__ = (
    "ByteTokenizer",
    "Checkpoints",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "GenerationConfig",
    "ModelSpec",
    "OptimConfig",
    "Preempted",
    "TaskResults",
    "TrainConfig",
    "TrainResult",
    "TrainState",
    "config_by_name",
    "evaluate_saved",
    "evaluate_task",
    "hf_config_dict",
    "make_optimizer",
    "make_schedule",
    "make_train_step",
    "metrics_from_predictions",
    "read_e2e_csv",
    "read_metrics",
    "render_mr",
    "save_hf_checkpoint",
    "split_model",
    "train",
)
