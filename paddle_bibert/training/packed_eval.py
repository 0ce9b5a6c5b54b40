"""Dev evaluation of a 1-bit student as its packed file scores: export in memory, run the runtime.

The packed runtime computes the binary products as popcounts, several times faster than Paddle's
float forward of the same model (``benchmarks/RESULTS.md``, "Deploy"), so a run that evaluates
often spends a fraction of the time on it; and the metric kept is the one of the file a user
deploys, not of its float simulation. Both agree up to float rounding: the runtime's sums of
+-1 products are exact integers where Paddle's are float32 sums, so an activation within rounding
of 0 can take the other sign (``tests/test_packed_eval.py`` bounds how often).
"""

from __future__ import annotations

from typing import Dict

import numpy as np
import paddle

from ..export import check_exportable, pack_model
from .trainer import score_batches

__all__ = ["check_packed_eval", "evaluate_packed"]


def check_packed_eval(model):
    """Raise ValueError naming why ``model`` cannot be scored packed (not binarized, not 1-bit)."""
    try:
        check_exportable(model)
    except ValueError as err:
        raise ValueError(f"--eval_packed scores the student as a packed 1-bit file, which this "
                         f"student cannot be ({err}); drop --eval_packed") from None


@paddle.no_grad()
def evaluate_packed(model, loader, task) -> Dict[str, float]:
    """Metrics of ``model`` (binarized with a 1-bit recipe) over ``loader``, computed by the
    packed runtime on the model's current weights (``evaluate``'s contract otherwise)."""
    from ..runtime.model import PackedBert

    packed = PackedBert(pack_model(model))

    def logits_of(batch):
        return np.asarray(packed(batch["input_ids"].numpy(), batch["token_type_ids"].numpy()))

    return score_batches(logits_of, loader, task)
