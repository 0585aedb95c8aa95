"""Training activation memory: bytes autograd saves for backward, measured exactly.

Uses ``torch.autograd.graph.saved_tensors_hooks``; tensors are deduplicated by storage and
parameters are left out, so the number is activation memory only (no timing, no allocator noise).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def saved_activation_bytes(fn: Callable[[], torch.Tensor], params: nn.Module | None = None) -> int:
    """Run ``fn`` (a forward returning a tensor) and return the bytes saved for its backward."""
    skip = {p.untyped_storage().data_ptr() for p in params.parameters()} if params is not None else set()
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        st = t.untyped_storage()
        ptr = st.data_ptr()
        if ptr not in skip and not isinstance(t, nn.Parameter):
            seen[ptr] = max(seen.get(ptr, 0), st.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())
