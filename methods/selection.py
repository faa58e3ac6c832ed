"""Which layers of a model a method sparsifies."""

from __future__ import annotations

from torch import nn

from dstbench.errors import UserError
from dstbench.methods.base import LayerFilter


def _inside_attention(model: nn.Module) -> set[str]:
    """Names of the submodules of every ``nn.MultiheadAttention`` (it reads their weights directly)."""
    names: set[str] = set()
    for name, module in model.named_modules():
        if isinstance(module, nn.MultiheadAttention):
            names.update(f"{name}.{sub}" if name else sub for sub, _ in module.named_modules() if sub)
    return names


def select_layers(
    model: nn.Module,
    layer_types: tuple[type[nn.Module], ...],
    *,
    include: LayerFilter | None = None,
    sparse_head: bool = False,
    dense_first_layer: bool = False,
) -> list[tuple[str, nn.Module]]:
    """The (name, module) pairs to sparsify, in ``named_modules`` order.

    Candidates are the modules of ``layer_types`` outside ``nn.MultiheadAttention``.
    With ``include`` given, the candidates it accepts; otherwise all candidates
    except the classifier head (the model's last ``nn.Linear``) unless
    ``sparse_head``. ``dense_first_layer`` then drops the first one.

    Raises:
        UserError: if no layer is selected.
    """
    skip = _inside_attention(model)
    candidates = [(n, m) for n, m in model.named_modules() if isinstance(m, layer_types) and n not in skip]
    if include is not None:
        selected = [(n, m) for n, m in candidates if include(n, m)]
    else:
        head = None if sparse_head else head_name(model)
        selected = [(n, m) for n, m in candidates if n != head]
    if dense_first_layer:
        selected = selected[1:]
    if not selected:
        kinds = ", ".join(t.__name__ for t in layer_types)
        raise UserError(
            f"no layer to sparsify: the model has no {kinds} layer besides the classifier head "
            "(pass sparse_head=True or an include filter)"
        )
    return selected


def head_name(model: nn.Module) -> str | None:
    """The name of the classifier head, the model's last ``nn.Linear`` (None if it has none)."""
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None
