"""GSM8K: grade-school maths word problems with worked answers.

Fields (Hugging Face `openai/gsm8k`, config `main`): `question`, `answer`, the reasoning
ending in `#### <final answer>`. The pinned rendering: prompt `Question: {question}\\nAnswer:`,
target ` {answer}` (the whole reasoning and its `#### 42` line, calculator annotations
`<<...>>` kept), references `(final,)`: the text after the last `####`, stripped, commas
removed. A row whose answer has no `####`, or nothing after it, is skipped.

>>> ex = SPEC.parse({"question": "2 + 3 * 400?", "answer": "3 * 400 = 1,200\\n#### 1,202"})
>>> ex.prompt, ex.target, ex.references
('Question: 2 + 3 * 400?\\nAnswer:', ' 3 * 400 = 1,200\\n#### 1,202', ('1202',))
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from adaprelora_jax.data.records import TextExample
from adaprelora_jax.data.spec import SkipRow, TaskSpec, text

PROMPT = "Question: {question}\nAnswer:"


def _parse(row: Mapping[str, Any]) -> TextExample:
  question = text(row, "question")
  answer = text(row, "answer", what="empty target")
  if "####" not in answer:
    raise SkipRow("answer without '####'")
  final = answer.rsplit("####", 1)[1].strip().replace(",", "")
  if not final:
    raise SkipRow("nothing after '####'")
  return TextExample(prompt=PROMPT.format(question=question), target=" " + answer,
                     references=(final,))


SPEC = TaskSpec(
    name="gsm8k",
    field_sets=(("question", "answer"),),
    parse=_parse,
    hf_dataset="openai/gsm8k",
    hf_config="main",
)
