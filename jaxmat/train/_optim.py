"""Optax optimizer from the config: clipping, Adam/AdamW (decay masked), warm-up + cosine decay, frozen parts.

Reduce-on-plateau and early stopping act per epoch on the validation loss in the trainer; the
plateau factor multiplies the updates (as ``optax.contrib.reduce_on_plateau`` does) and is part
of the checkpointed state.
"""

from __future__ import annotations

import jax
import optax


def param_path(keypath) -> str:
    """'group/name' for a ``jax.tree_util`` key path into a params dict."""
    return "/".join(str(getattr(k, "key", k)) for k in keypath)


def freeze_labels(params, prefixes):
    """'frozen' for each leaf whose path ('group/name') starts with any prefix, else 'train'.

    A top-level name ("conv_") freezes whole groups; a full path ("energy_scale/shift") one leaf.
    """
    return jax.tree_util.tree_map_with_path(
        lambda kp, _: "frozen" if any(param_path(kp).startswith(p) for p in prefixes) else "train", params)


def masked_weight_decay(weight_decay: float, prefixes) -> optax.GradientTransformation:
    """``optax.add_decayed_weights`` for the leaves whose path starts with no prefix.

    Stateless (``EmptyState``), unlike ``optax.masked``, so checkpoints keep the layout that plain
    ``optax.adamw`` gave them and runs started before the mask still resume.
    """

    def update(updates, state, params):
        labels = freeze_labels(params, prefixes)
        return jax.tree_util.tree_map(lambda u, p, lab: u if lab == "frozen" else u + weight_decay * p,
                                      updates, params, labels), state

    return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def make_optimizer(cfg, steps_per_epoch: int) -> optax.GradientTransformation:
    total = max(1, cfg.epochs * steps_per_epoch)
    warm = max(1, int(cfg.warmup_epochs * steps_per_epoch))
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, cfg.learning_rate, warm, max(total, warm + 1), end_value=cfg.learning_rate * cfg.final_lr_factor
    )
    if cfg.optimizer == "adamw":  # optax.adamw's chain with the decay masked
        adam = optax.chain(optax.scale_by_adam(), masked_weight_decay(cfg.weight_decay, cfg.weight_decay_exclude),
                           optax.scale_by_learning_rate(schedule))
    else:
        adam = optax.adam(schedule)
    tx = optax.chain(optax.clip_by_global_norm(cfg.clip_norm), adam) if cfg.clip_norm > 0 else adam
    return tx


def with_frozen(tx, params, prefixes):
    if not prefixes:
        return tx
    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, freeze_labels(params, prefixes))
