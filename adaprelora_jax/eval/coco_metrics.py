"""METEOR, ROUGE-L and CIDEr from pycocoevalcap, on PTB-tokenized text, as the E2E script.

The official E2E script runs these three through `pycocoevalcap.eval.COCOEvalCap`, which
first tokenizes every text with the Stanford PTB tokenizer (`-lowerCase`, punctuation
tokens removed). `ptb_tokenize` runs the same jar (bundled with pycocoevalcap) once for a
whole corpus. METEOR runs pycocoevalcap's bundled `meteor-1.5.jar` (`-l en -norm`) in one
Java process kept for the life of the interpreter (it takes ~15 s to load its tables).
Both need `java` on the PATH; without it they raise `RuntimeError`, never skip.
"""

from collections.abc import Sequence
import functools
import importlib.metadata
import importlib.resources
import shutil
import subprocess

from adaprelora_jax.eval import _checks


def _java() -> str:
  java = shutil.which("java")
  if java is None:
    raise RuntimeError(
        "METEOR and the PTB tokenizer run pycocoevalcap's Java jars, and no `java` is on the "
        "PATH: install a Java runtime (e.g. `apt-get install default-jre-headless`)"
    )
  return java


def ptb_tokenize(texts: Sequence[str]) -> list[str]:
  """Tokenizes as pycocoevalcap's `PTBTokenizer`: Stanford PTB, lowercased, punctuation dropped.

  Args:
    texts: strings (newlines become spaces).

  Returns:
    One space-joined token string per text.
  """
  from pycocoevalcap.tokenizer import ptbtokenizer  # pylint: disable=g-import-not-at-top

  texts = _checks.check_strings(texts)
  if not texts:
    return []
  jar_dir = importlib.resources.files("pycocoevalcap.tokenizer")
  jar = jar_dir / ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR
  cmd = [_java(), "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines",
         "-lowerCase"]
  lines = "\n".join(t.replace("\r", " ").replace("\n", " ") for t in texts) + "\n"
  proc = subprocess.run(cmd, input=lines.encode(), capture_output=True, check=False)
  if proc.returncode != 0:
    raise RuntimeError(f"PTB tokenizer failed: {proc.stderr.decode(errors='replace')[-2000:]}")
  out = proc.stdout.decode().split("\n")[: len(texts)]
  if len(out) != len(texts):
    raise RuntimeError(f"PTB tokenizer returned {len(out)} lines for {len(texts)} texts")
  drop = set(ptbtokenizer.PUNCTUATIONS)
  return [" ".join(w for w in line.rstrip().split(" ") if w and w not in drop) for line in out]


@functools.lru_cache(maxsize=None)
def _meteor_process():
  from pycocoevalcap.meteor.meteor import Meteor  # pylint: disable=g-import-not-at-top

  return Meteor()


def _meteor_scorer():
  _java()  # checked on every call, so a missing java is an error even with a jar running
  scorer = _meteor_process()
  if scorer.meteor_p.poll() is not None:  # the jar died: start a new one
    _meteor_process.cache_clear()
    scorer = _meteor_process()
  return scorer


def _as_coco(predictions, references, tokenize, clean=lambda text: text):
  """Checks, optionally PTB-tokenizes, and returns pycocoevalcap's `(gts, res)` dicts."""
  _checks.check_pairs(predictions, references)
  predictions = _checks.check_strings(predictions)
  references = _checks.check_references(references)
  predictions, references = ptb_tokenize_corpus(predictions, references, tokenize)
  gts = {i: [clean(r) for r in refs] for i, refs in enumerate(references)}
  res = {i: [clean(p)] for i, p in enumerate(predictions)}
  return gts, res


def _one_line(text: str) -> str:
  """One line without the jar's field separator "|||" (its stdin protocol)."""
  return " ".join(text.replace("|||", " ").split())


def ptb_tokenize_corpus(predictions: Sequence[str], references: Sequence[Sequence[str]],
                        tokenize: bool = True) -> tuple[list[str], list[list[str]]]:
  """`ptb_tokenize` of predictions and references in one Java run (identity if not `tokenize`).

  Returns:
    `(predictions, references)` tokenized, references grouped as given.
  """
  if not tokenize:
    return list(predictions), [list(r) for r in references]
  references = _checks.check_references(references)
  flat = ptb_tokenize(list(predictions) + [r for refs in references for r in refs])
  preds, it = flat[: len(predictions)], iter(flat[len(predictions):])
  return preds, [[next(it) for _ in refs] for refs in references]


def _version() -> str:
  return importlib.metadata.version("pycocoevalcap")


def meteor_implementation() -> str:
  """The name and settings of the METEOR implementation, for results files."""
  return (f"pycocoevalcap {_version()} meteor-1.5.jar (-l en -norm: alpha=0.85, beta=0.2, "
          "gamma=0.6, delta=0.75) on PTB tokens")


def rouge_l_implementation() -> str:
  """The name and settings of the ROUGE-L implementation, for results files."""
  return f"pycocoevalcap {_version()} Rouge (beta=1.2), mean over examples, on PTB tokens"


def cider_implementation() -> str:
  """The name and settings of the CIDEr implementation, for results files."""
  return (f"pycocoevalcap {_version()} Cider (CIDEr-D: n=4, sigma=6, x10), mean over examples, "
          "on PTB tokens")


def meteor(predictions: Sequence[str], references: Sequence[Sequence[str]], *,
           tokenize: bool = True) -> float:
  """Corpus METEOR 1.5 (English, `-norm`) against all references of each example.

  Per example the jar aligns the hypothesis with each reference (exact, stem, synonym,
  paraphrase matches, weights 1, 0.6, 0.8, 0.6) and keeps the best-scoring reference. The
  corpus score sums the statistics over examples: with `delta`-weighted content/function
  words, `P = m_h / |h|`, `R = m_r / |r|`, `Fmean = P R / (alpha P + (1 - alpha) R)`,
  `frag = ch / ((m_h + m_r) / 2)` (`ch` chunks, summed over the examples that are not exact
  matches; `frag = 0` for an exact match), `METEOR = Fmean (1 - gamma frag^beta)`.

  Args:
    predictions: one hypothesis per example.
    references: the references of each example.
    tokenize: apply `ptb_tokenize` first (as the E2E script); False for pre-tokenized text.

  Returns:
    METEOR in [0, 1].

  Raises:
    RuntimeError: no `java` on the PATH, or the jar failed.
  """
  gts, res = _as_coco(predictions, references, tokenize, clean=_one_line)
  score, _ = _meteor_scorer().compute_score(gts, res)
  return float(score)


def rouge_l(predictions: Sequence[str], references: Sequence[Sequence[str]], *,
            tokenize: bool = True) -> float:
  """ROUGE-L as pycocoevalcap computes it, averaged over examples.

  Per example, with `LCS` the longest common subsequence of tokens,
  `P = max_r LCS(h, r) / |h|`, `R = max_r LCS(h, r) / |r|` (each maximised on its own over
  the references) and `ROUGE-L = (1 + beta^2) P R / (R + beta^2 P)`, `beta = 1.2`.

  Args:
    predictions: one hypothesis per example.
    references: the references of each example.
    tokenize: apply `ptb_tokenize` first (as the E2E script); False for pre-tokenized text.

  Returns:
    ROUGE-L in [0, 1].

  Example:
    >>> round(rouge_l(["a b c"], [["a c", "b"]], tokenize=False), 4)  # P = 2/3, R = 1
    0.8299
  """
  from pycocoevalcap.rouge.rouge import Rouge  # pylint: disable=g-import-not-at-top

  gts, res = _as_coco(predictions, references, tokenize)
  score, _ = Rouge().compute_score(gts, res)
  return float(score)


def cider(predictions: Sequence[str], references: Sequence[Sequence[str]], *,
          tokenize: bool = True) -> float:
  """CIDEr-D as pycocoevalcap's `Cider` computes it, averaged over examples.

  With `N` examples and `df(g)` the number of examples whose references contain the n-gram
  `g`, each text maps to vectors `v_n(g) = count(g) * (log N - log max(1, df(g)))`,
  `n = 1..4`. Per example, `CIDEr = 10 / (4 |refs|) sum_r sum_n exp(-(l_h - l_r)^2 / 72)
  sum_g min(v_n^h(g), v_n^r(g)) v_n^r(g) / (|v_n^h| |v_n^r|)` (0 where a norm is 0), with
  `l` the number of bigrams of a text (pycocoevalcap's length). The weights depend on the
  whole corpus, so a single example always scores 0.

  Args:
    predictions: one hypothesis per example.
    references: the references of each example.
    tokenize: apply `ptb_tokenize` first (as the E2E script); False for pre-tokenized text.

  Returns:
    CIDEr-D, in [0, 10].
  """
  from pycocoevalcap.cider.cider import Cider  # pylint: disable=g-import-not-at-top

  gts, res = _as_coco(predictions, references, tokenize)
  score, _ = Cider().compute_score(gts, res)
  return float(score)
