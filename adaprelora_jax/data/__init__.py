"""The paper's tasks as records: E2E NLG, GLUE, ARC and GSM8K loaders (in progress)."""

from adaprelora_jax.data.records import ChoiceExample
from adaprelora_jax.data.records import ClassificationExample
from adaprelora_jax.data.records import DataError
from adaprelora_jax.data.records import Example
from adaprelora_jax.data.records import TaskData
from adaprelora_jax.data.records import TextExample

__all__ = (
    "ChoiceExample",
    "ClassificationExample",
    "DataError",
    "Example",
    "TaskData",
    "TextExample",
)
