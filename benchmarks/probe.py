"""The one instrument both sides of a benchmark run under.

Installed in the runner process before any model exists, it records, in the
same way for our trainers and TRL's:

- every optimizer step's time (a global `torch.optim` step hook);
- the tokens through every outermost model forward, split into training
  forwards (autograd on) and the rest (reference, generation, evaluation),
  counting real tokens (attention-mask ones, or every id when no mask is
  passed, as with packed rows) and padded positions.

Wall-clock and process CPU time (all threads) are taken at the first model
forward and after every optimizer step, so throughput can be measured over
the whole training loop or from the first step to the last (the steady
state, without first-step costs); CPU time is the steadier measure on a
machine shared with other work, wall time the one a user feels.
"""

from __future__ import annotations

import time


def _real_tokens(ids, mask, position_ids) -> int:
    """Non-padding tokens: the mask's ones, or, for packed rows (a 4D mask), each row up to its last
    position > 0 (trailing padding restarts at position 0); every id when neither tells."""
    if mask is not None and mask.dim() == 2:
        return int(mask.sum())
    if position_ids is not None and position_ids.dim() == 2:
        import torch

        cols = torch.arange(position_ids.shape[1]).expand_as(position_ids)
        last = torch.where(position_ids > 0, cols, torch.full_like(cols, -1)).max(-1).values  # (R,)
        return int((last + 1).sum())
    return int(ids.numel())


class Probe:
    def __init__(self):
        self.t_first_forward: float | None = None
        self.cpu_first_forward: float | None = None
        self.steps: list[tuple[float, int, int, float]] = []  # (time, train real tokens, train padded, CPU time)
        self.train_tokens = 0
        self.train_padded = 0
        self.other_tokens = 0
        self.other_padded = 0
        self.train_forwards = 0
        self.optimizer = ""  # the class of the last optimizer stepped, "(fused)" when it ran the fused kernel
        self._depth = 0
        self._handles: list = []

    # --- installation ---------------------------------------------------------------------------
    def install(self) -> "Probe":
        import torch
        from torch.optim.optimizer import register_optimizer_step_post_hook
        from transformers import PreTrainedModel

        self._handles.append(register_optimizer_step_post_hook(self._on_step))
        probe = self
        original = PreTrainedModel.post_init

        def post_init(model, *args, **kwargs):
            original(model, *args, **kwargs)
            # Every PreTrainedModel, the inner ones too: depth counting keeps only the outermost call.
            model.register_forward_pre_hook(probe._pre, with_kwargs=True)
            model.register_forward_hook(probe._post, always_call=True)

        PreTrainedModel.post_init = post_init
        self._restore = (PreTrainedModel, original)
        self._torch = torch
        return self

    def uninstall(self) -> None:
        """Undo `install` (models built meanwhile keep their hooks, which then count into this probe)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        if getattr(self, "_restore", None):
            cls, original = self._restore
            cls.post_init = original
            self._restore = None

    # --- hooks ------------------------------------------------------------------------------------
    def _pre(self, module, args, kwargs):
        self._depth += 1
        if self._depth > 1:
            return None
        if self.t_first_forward is None:
            self.t_first_forward = time.perf_counter()
            self.cpu_first_forward = time.process_time()
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None or not hasattr(ids, "numel"):
            return None
        padded = int(ids.numel())
        real = _real_tokens(ids, kwargs.get("attention_mask"), kwargs.get("position_ids"))
        if self._torch.is_grad_enabled() and module.training:
            self.train_tokens += real
            self.train_padded += padded
            self.train_forwards += 1
        else:
            self.other_tokens += real
            self.other_padded += padded
        return None

    def _post(self, module, args, output):
        self._depth = max(0, self._depth - 1)
        return None

    def _on_step(self, optimizer, args, kwargs):
        self.optimizer = type(optimizer).__name__ + ("(fused)" if optimizer.defaults.get("fused") else "")
        self.steps.append((time.perf_counter(), self.train_tokens, self.train_padded, time.process_time()))

    # --- summary ----------------------------------------------------------------------------------
    def summary(self, t_start: float, units_per_step: float | None = None) -> dict:
        """Timings and counts; `units_per_step` (pairs, episodes) or the train tokens measure throughput."""
        n = len(self.steps)
        out = {
            "optimizer_steps": n,
            "train_tokens": self.train_tokens,
            "train_padded_tokens": self.train_padded,
            "other_tokens": self.other_tokens,
            "other_padded_tokens": self.other_padded,
            "train_forwards": self.train_forwards,
            "first_forward_s": None if self.t_first_forward is None else self.t_first_forward - t_start,
        }
        if n >= 2:
            (t1, tok1, pad1, c1), (tn, tokn, padn, cn) = self.steps[0], self.steps[-1]
            window = tn - t1
            out.update({
                "steady_seconds": window,
                "steady_cpu_seconds": cn - c1,
                "steady_steps": n - 1,
                "steady_train_tokens": tokn - tok1,
                "steady_train_padded": padn - pad1,
                "seconds_per_step": window / (n - 1),
                "first_step_s": t1 - (self.t_first_forward or t1),
            })
        if n >= 1 and self.t_first_forward is not None:
            out["loop_seconds"] = self.steps[-1][0] - self.t_first_forward
            out["loop_cpu_seconds"] = self.steps[-1][3] - self.cpu_first_forward
        return out
