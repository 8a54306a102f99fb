"""Training of array regressors with Optax and composable epoch callbacks (iBRNet-style:
reduce-on-plateau, early stopping and best-weight restore at once; the callbacks are
``jaxmat.arrays._callbacks``, shared with the potential trainer), plus a ridge baseline.
"""

from __future__ import annotations

import dataclasses
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxmat.arrays._callbacks import early_stopping, reduce_on_plateau, warmup


@dataclasses.dataclass
class FitConfig:
    learning_rate: float = 1e-3  #: peak Adam(W) learning rate
    weight_decay: float = 0.0  #: AdamW decoupled weight decay
    batch_size: int = 256  #: minibatch size (the last partial batch of each shuffled epoch is dropped)
    max_epochs: int = 300  #: epoch cap
    loss: str = "mae"  #: "mae" (as ElemNet/iBRNet) or "mse", on standardised targets
    plateau_patience: int = 10  #: reduce-on-plateau patience (epochs)
    plateau_factor: float = 0.5  #: reduce-on-plateau factor
    early_stopping_patience: int = 30  #: early-stopping patience (epochs)
    warmup_epochs: int = 0  #: linear warm-up epochs
    max_minutes: float | None = None  #: wall-time cap
    seed: int = 0  #: initialisation, shuffling and dropout seed
    clip_inputs: bool = True  #: clip validation/prediction inputs to the per-feature training range
    #: "none", or "log": train on log(y) (every target must be > 0) and predict exp of the output; for
    #: positive, right-skewed targets such as bulk moduli. Validation MAE stays in target units.
    target_transform: str = "none"
    #: the first ``raw_columns`` input columns are passed as they are: neither standardised nor
    #: clipped (raw element fractions for ``ElementAttention``, which needs to see which are zero)
    raw_columns: int = 0


class FitResult(NamedTuple):
    variables: dict  # best-validation weights and batch-norm statistics
    history: list  # per epoch: epoch, train_loss, val_mae, lr, wall_s
    best_epoch: int
    train_seconds: float
    y_mean: float
    y_std: float
    x_mean: np.ndarray  # (F,) feature standardisation fitted on the training rows
    x_std: np.ndarray
    x_low: np.ndarray | None  # (F,) training minimum and maximum of each feature: inputs outside are
    x_high: np.ndarray | None  # clipped to them (None: no clipping)
    target_transform: str = "none"  # FitConfig.target_transform the model was trained with

    def predict(self, model, x, batch_size: int = 4096) -> np.ndarray:
        fn = jax.jit(lambda v, xb: model.apply(v, xb, train=False))
        z = standardize(x, self.x_mean, self.x_std, self.x_low, self.x_high)
        out = [np.asarray(fn(self.variables, jnp.asarray(z[i : i + batch_size]))) for i in range(0, len(z), batch_size)]
        return _TRANSFORMS[self.target_transform][1](np.concatenate(out) * self.y_std + self.y_mean)


#: target transform name -> (forward, inverse), applied to targets before standardisation
_TRANSFORMS = {"none": (np.asarray, np.asarray), "log": (np.log, np.exp)}


def standardize(x, mean, std, low=None, high=None, dtype=np.float32) -> np.ndarray:
    """(x - mean) / std as ``dtype``, after clipping x to [low, high] when given.

    Why clip: a feature that is nearly constant on the training rows (std 1e-7, e.g. a statistic
    non-zero for 3 of 3,300 compositions) turns an ordinary value in a new row into a z-score of
    1e6 and the network's output into nonsense (matbench expt_gap fold 3: test MAE 100 eV instead
    of 0.5). Clipping to the training range means no extrapolation beyond any seen feature value.
    """
    x = np.asarray(x, np.float64)
    if low is not None:
        x = np.clip(x, low, high)
    return ((x - mean) / std).astype(dtype)


def fit(model, x_train, y_train, x_val, y_val, cfg: FitConfig = FitConfig(), callbacks=None, log=None) -> FitResult:
    """Train ``model`` (a Flax module with ``__call__(x, train)``) on standardised features and
    targets (means/stds of the training rows; constant features get std 1).

    Default callbacks (all at once): warm-up (if configured), reduce-on-plateau, early stopping;
    the weights of the best validation epoch are returned. Validation metric: MAE in target units.
    """
    if len(x_train) < cfg.batch_size:
        raise ValueError(f"{len(x_train)} training rows < batch_size {cfg.batch_size}")
    yt, y_mean, y_std = _scaled_targets(y_train, cfg)
    inverse = _TRANSFORMS[cfg.target_transform][1]
    x_mean, x_std, x_low, x_high = _feature_scaling(x_train, cfg)
    x_train, x_val = standardize(x_train, x_mean, x_std), standardize(x_val, x_mean, x_std, x_low, x_high)
    callbacks = callbacks if callbacks is not None else (
        ([warmup(cfg.warmup_epochs)] if cfg.warmup_epochs else [])
        + [reduce_on_plateau(cfg.plateau_patience, cfg.plateau_factor), early_stopping(cfg.early_stopping_patience)])
    key = jax.random.PRNGKey(cfg.seed)
    variables = model.init({"params": key, "dropout": key}, jnp.asarray(x_train[:2]), train=False)
    params, stats = variables["params"], variables.get("batch_stats", {})
    lr0 = cfg.learning_rate / (cfg.warmup_epochs or 1)
    tx = optax.inject_hyperparams(optax.adamw)(learning_rate=lr0, weight_decay=cfg.weight_decay)
    opt_state = tx.init(params)

    def loss_fn(p, st, xb, yb, rng):
        pred, new = model.apply({"params": p, "batch_stats": st}, xb, train=True, rngs={"dropout": rng},
                                mutable=["batch_stats"])
        err = pred - yb
        return (jnp.mean(jnp.abs(err)) if cfg.loss == "mae" else jnp.mean(err**2)), new.get("batch_stats", {})

    @jax.jit
    def step(p, st, o, xb, yb, rng):
        (loss, st), g = jax.value_and_grad(loss_fn, has_aux=True)(p, st, xb, yb, rng)
        updates, o = tx.update(g, o, p)
        return optax.apply_updates(p, updates), st, o, loss

    eval_fn = jax.jit(lambda v, xb: model.apply(v, xb, train=False))

    def val_mae(v):
        pred = np.concatenate([np.asarray(eval_fn(v, jnp.asarray(x_val[i : i + 4096]))) for i in range(0, len(x_val), 4096)])
        return float(np.mean(np.abs(inverse(pred * y_std + y_mean) - y_val)))

    cb_states = [cb.init() for cb in callbacks]
    rng = np.random.default_rng(cfg.seed)
    history, best, best_vars, best_epoch = [], np.inf, None, 0
    t0 = time.perf_counter()
    n_batches = len(x_train) // cfg.batch_size
    for epoch in range(cfg.max_epochs):
        order = rng.permutation(len(x_train))
        losses = []
        for b in range(n_batches):
            idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            key, sub = jax.random.split(key)
            params, stats, opt_state, loss = step(params, stats, opt_state, jnp.asarray(x_train[idx]),
                                                  jnp.asarray(yt[idx]), sub)
            losses.append(loss)
        current = {"params": params, "batch_stats": stats}
        mae = val_mae(current)
        lr = float(opt_state.hyperparams["learning_rate"])
        history.append({"epoch": epoch + 1, "train_loss": float(np.mean(jax.device_get(losses))), "val_mae": mae,
                        "lr": lr, "wall_s": time.perf_counter() - t0})
        if mae < best:
            best, best_vars, best_epoch = mae, jax.device_get(current), epoch + 1
        stop = False
        for k, cb in enumerate(callbacks):
            cb_states[k], actions = cb.update(cb_states[k], {"epoch": epoch + 1, "val_loss": mae})
            if "lr_scale" in actions:
                opt_state.hyperparams["learning_rate"] = jnp.asarray(lr * actions["lr_scale"], jnp.float32)
                lr = lr * actions["lr_scale"]
            stop = stop or bool(actions.get("stop", False))
        if log:
            log(f"epoch {epoch + 1:4d}  loss {history[-1]['train_loss']:.4f}  val MAE {mae:.4f}  lr {lr:.2e}")
        if stop or (cfg.max_minutes and time.perf_counter() - t0 > 60 * cfg.max_minutes):
            break
    return FitResult(best_vars, history, best_epoch, time.perf_counter() - t0, y_mean, y_std, x_mean, x_std,
                     x_low, x_high, cfg.target_transform)


def _scaled_targets(y_train, cfg: FitConfig) -> tuple[np.ndarray, float, float]:
    """(standardised float32 targets after ``cfg.target_transform``, their mean, their std (1 if 0))."""
    if cfg.target_transform not in _TRANSFORMS:
        raise ValueError(f"target_transform {cfg.target_transform!r}: expected one of {sorted(_TRANSFORMS)}")
    forward = _TRANSFORMS[cfg.target_transform][0]
    if cfg.target_transform == "log" and not np.all(np.asarray(y_train) > 0):
        raise ValueError(f"target_transform 'log' needs positive training targets; minimum is {np.min(y_train)}")
    y_fit = forward(np.asarray(y_train, np.float64))
    y_mean, y_std = float(np.mean(y_fit)), float(np.std(y_fit) or 1.0)
    return ((y_fit - y_mean) / y_std).astype(np.float32), y_mean, y_std


def _feature_scaling(x_train, cfg: FitConfig):
    """(mean, std, low, high), each (F,), of the training features: constant features get std 1; low
    and high (None without ``cfg.clip_inputs``) clip later inputs; the first ``cfg.raw_columns``
    columns pass unchanged (mean 0, std 1, no clipping)."""
    x_mean, x_std = np.mean(x_train, axis=0), np.std(x_train, axis=0)
    x_std = np.where(x_std > 1e-12, x_std, 1.0)
    x_low, x_high = (np.min(x_train, axis=0), np.max(x_train, axis=0)) if cfg.clip_inputs else (None, None)
    if cfg.raw_columns:
        n = cfg.raw_columns
        x_mean, x_std = np.r_[np.zeros(n), x_mean[n:]], np.r_[np.ones(n), x_std[n:]]
        if x_low is not None:
            x_low, x_high = np.r_[np.full(n, -np.inf), x_low[n:]], np.r_[np.full(n, np.inf), x_high[n:]]
    return x_mean, x_std, x_low, x_high


def ridge_fit(x_train, y_train, x_val, y_val, alphas=(1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0), clip_inputs=True):
    """Ridge regression on standardised features; alpha chosen on the validation MAE; inputs
    clipped to the training range as in ``fit`` (``clip_inputs``).
    Returns (predict(x) -> y, chosen alpha, n_params)."""
    mu, sd = x_train.mean(0), x_train.std(0)
    sd = np.where(sd > 0, sd, 1.0)
    low, high = (x_train.min(0), x_train.max(0)) if clip_inputs else (None, None)
    z = lambda x: np.c_[standardize(x, mu, sd, low, high, np.float64), np.ones(len(x))]  # noqa: E731
    zt, y_mean = z(x_train), float(np.mean(y_train))
    best = None
    for a in alphas:
        reg = a * np.eye(zt.shape[1])
        reg[-1, -1] = 0.0  # no penalty on the intercept
        w = np.linalg.solve(zt.T @ zt + reg, zt.T @ (np.asarray(y_train) - y_mean))
        mae = float(np.mean(np.abs(z(x_val) @ w + y_mean - y_val)))
        if best is None or mae < best[0]:
            best = (mae, a, w)
    _, alpha, w = best
    return (lambda x: z(x) @ w + y_mean), alpha, int(w.size)
