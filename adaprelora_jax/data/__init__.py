"""The paper's tasks as records: E2E NLG, GLUE (MNLI, SST-2, CoLA, QNLI, MRPC), ARC and
GSM8K from local JSON/JSONL/Parquet/CSV files, folders or Hugging Face dataset names, and
the tokenizers (a local Hugging Face folder, or bytes). See docs/data.md.
"""

from adaprelora_jax.data.e2e import render_mr
from adaprelora_jax.data.files import Rows
from adaprelora_jax.data.files import read_rows
from adaprelora_jax.data.records import ChoiceExample
from adaprelora_jax.data.records import ClassificationExample
from adaprelora_jax.data.records import DataError
from adaprelora_jax.data.records import Example
from adaprelora_jax.data.records import TaskData
from adaprelora_jax.data.records import TextExample
from adaprelora_jax.data.tasks import TASKS
from adaprelora_jax.data.tasks import load_task
from adaprelora_jax.data.tasks import task_spec
from adaprelora_jax.data.tokenizers import ByteTokenizer
from adaprelora_jax.data.tokenizers import HFTokenizer
from adaprelora_jax.data.tokenizers import TokenIds
from adaprelora_jax.data.tokenizers import Tokenizer
from adaprelora_jax.data.tokenizers import load_tokenizer

__all__ = (
    "ByteTokenizer",
    "ChoiceExample",
    "ClassificationExample",
    "DataError",
    "Example",
    "HFTokenizer",
    "Rows",
    "TASKS",
    "TaskData",
    "TextExample",
    "TokenIds",
    "Tokenizer",
    "load_task",
    "load_tokenizer",
    "read_rows",
    "render_mr",
    "task_spec",
)
