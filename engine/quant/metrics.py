"""Next-token distributions compared, in numpy: log-softmax, KL divergence, negative
log-likelihood, top-1 agreement, and their summaries.

Rows are worked in blocks, in float64, so a 262k-token vocabulary costs tens of MB at
a time. The KL divergence is exact, over the whole vocabulary: KL(P_ref || P_cand) =
sum_i p_ref(i) (log p_ref(i) - log p_cand(i)).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

BLOCK_ROWS = 32


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64."""
    x = logits.astype(np.float64)
    x -= x.max(axis=1, keepdims=True)
    x -= np.log(np.exp(x).sum(axis=1, keepdims=True))
    return x


@dataclass
class Tally:
    """Per-position figures of one model over the scored positions, chunk by chunk."""

    nll: list[np.ndarray] = field(default_factory=list)
    kl: list[np.ndarray] = field(default_factory=list)
    same_top: list[np.ndarray] = field(default_factory=list)

    def add(self, nll: np.ndarray, kl: np.ndarray | None = None,
            same_top: np.ndarray | None = None) -> None:
        self.nll.append(nll)
        if kl is not None and same_top is not None:
            self.kl.append(kl)
            self.same_top.append(same_top)

    def summary(self) -> dict[str, float | int | None]:
        nll = np.concatenate(self.nll) if self.nll else np.zeros(0)
        out: dict[str, float | int | None] = {
            "positions": int(nll.size),
            "ppl": float(np.exp(nll.mean())) if nll.size else None,
            "kl_mean": None, "kl_p99": None, "kl_max": None, "top1": None}
        if self.kl:
            kl = np.concatenate(self.kl)
            out.update(kl_mean=float(kl.mean()), kl_p99=float(np.percentile(kl, 99)),
                       kl_max=float(kl.max()),
                       top1=float(np.concatenate(self.same_top).mean()))
        return out


def reference_rows(logits: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The reference's log-probabilities (float32, kept for the candidates) and the
    negative log-likelihood of each target."""
    logp = np.empty(logits.shape, dtype=np.float32)
    nll = np.empty(len(targets))
    for a in range(0, len(targets), BLOCK_ROWS):
        block = log_softmax(logits[a:a + BLOCK_ROWS])
        logp[a:a + BLOCK_ROWS] = block
        nll[a:a + BLOCK_ROWS] = -block[np.arange(len(block)), targets[a:a + BLOCK_ROWS]]
    return logp, nll


def compare_rows(ref_logp: np.ndarray, logits: np.ndarray, targets: np.ndarray,
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A candidate's rows against the reference's: (nll, KL, same top token)."""
    n = len(targets)
    nll, kl, same = np.empty(n), np.empty(n), np.empty(n, dtype=bool)
    for a in range(0, n, BLOCK_ROWS):
        lc = log_softmax(logits[a:a + BLOCK_ROWS])
        lr = ref_logp[a:a + BLOCK_ROWS].astype(np.float64)
        kl[a:a + BLOCK_ROWS] = (np.exp(lr) * (lr - lc)).sum(axis=1)
        nll[a:a + BLOCK_ROWS] = -lc[np.arange(len(lc)), targets[a:a + BLOCK_ROWS]]
        same[a:a + BLOCK_ROWS] = lr.argmax(axis=1) == lc.argmax(axis=1)
    return nll, kl, same
