"""Checkpoints with orbax's `CheckpointManager` in `OUTPUT_DIR/checkpoints/<step>/`.

A checkpoint holds the trainable parameters, the optimizer state (its leaves in order,
so any optax state round-trips), the step, the run's RNG key, and the run identity (the
config fields a resumed run may not change). It is restored into the abstract sharded
target of the live state: every host reads its own shards. A checkpoint that fails to
restore (a truncated file, a missing array) is skipped with a warning for the one
before it; a half-read checkpoint is never used.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from pathlib import Path
from typing import Any

import jax
import numpy as np

from adaprelora_jax.train.config import ConfigError

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainState:
  """What a checkpoint holds."""

  # Optimizer steps done.
  step: int
  # Trainable parameters (nested dict of arrays).
  params: Any
  # The optimizer state.
  opt_state: Any
  # The run's RNG key (the base of every random draw of the run).
  rng: jax.Array


def _leaf_dict(tree) -> dict[str, Any]:
  return {f"leaf_{i:05d}": leaf for i, leaf in enumerate(jax.tree.leaves(tree))}


def _abstract(tree):
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
      tree)


class Checkpoints:
  """Saving and restoring `TrainState`s of one run in `directory`."""

  def __init__(self, directory: str | Path, *, keep: int, identity: dict[str, Any]):
    import orbax.checkpoint as ocp  # noqa: PLC0415 (heavy; imported on use)

    self._ocp = ocp
    self.directory = Path(directory).absolute()
    self.identity = identity
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=False)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, state: TrainState) -> None:
    """Write `state` at `state.step` (blocking; all hosts call it)."""
    ocp = self._ocp
    tree = {"params": state.params, "opt_state": _leaf_dict(state.opt_state)}
    # The key is a few integers: kept in the JSON metadata, the same on every host.
    rng = np.asarray(jax.random.key_data(state.rng)).tolist()
    meta = {"step": state.step, "rng": rng, "identity": self.identity}
    if state.step in self.steps():  # a broken checkpoint the run fell back from
      self.manager.delete(state.step)
    self.manager.save(state.step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta)), force=True)
    self.manager.wait_until_finished()

  def check_identity(self) -> None:
    """ConfigError when the directory holds checkpoints of a different run."""
    for step in reversed(self.steps()):
      try:
        meta = self.manager.restore(step, args=self._ocp.args.Composite(
            meta=self._ocp.args.JsonRestore()))["meta"]
      except Exception:  # noqa: BLE001 (an unreadable checkpoint: try the previous)
        continue
      theirs = meta.get("identity", {})
      changed = sorted(k for k in set(theirs) | set(self.identity)
                       if theirs.get(k) != self.identity.get(k))
      if changed:
        details = "; ".join(f"{k}: {theirs.get(k)!r} there, {self.identity.get(k)!r} now"
                            for k in changed[:5])
        raise ConfigError(
            f"{self.directory} holds checkpoints of a different run ({details}). Use another "
            "--output-dir, or the same settings (a resumed run may change only --max-steps, "
            "--checkpoint-every and the evaluation settings).")
      return

  def restore_latest(self, live: TrainState) -> TrainState | None:
    """The newest checkpoint that restores completely, shaped and sharded like `live`;
    None when there is none. Broken checkpoints are skipped with a warning."""
    ocp = self._ocp
    target = {"params": _abstract(live.params),
              "opt_state": _abstract(_leaf_dict(live.opt_state))}
    treedef = jax.tree.structure(live.opt_state)
    for step in reversed(self.steps()):
      try:
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
        tree, meta = restored["state"], restored["meta"]
        leaves = [tree["opt_state"][k] for k in sorted(tree["opt_state"])]
        for array in jax.tree.leaves(tree):
          array.block_until_ready()
        if meta["step"] != step:
          raise ValueError(f"metadata says step {meta['step']}")
      except Exception as e:  # noqa: BLE001 (any failure: fall back to the previous one)
        warnings.warn(f"checkpoint {self.directory / str(step)} cannot be restored "
                      f"({type(e).__name__}: {str(e)[:300]}); trying the previous one",
                      stacklevel=2)
        continue
      return TrainState(step=step, params=tree["params"],
                        opt_state=jax.tree.unflatten(treedef, leaves),
                        rng=jax.random.wrap_key_data(np.asarray(meta["rng"], np.uint32)))
    return None

  def close(self) -> None:
    self.manager.close()
