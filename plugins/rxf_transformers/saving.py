"""``save_pretrained`` through the wrapper: the inner model's files, R4F baked in."""

from __future__ import annotations

from typing import Any

from rxf.spectral import baked_state_dicts, r4f_linears


def save_pretrained(wrapper: Any, save_directory: Any, *args: Any, **kwargs: Any) -> Any:
    """The inner model's ``save_pretrained`` with R4F's normalized weights baked in.

    Registered as a wrapper method (``rxf_register_wrapper_methods``), so
    ``rxf.wrap(model).save_pretrained(path)`` works. The files hold plain ``weight`` keys
    (``W / σ``, as :func:`rxf.unwrap` bakes), so ``from_pretrained`` reads them; the
    wrapped model is not changed. The layers are baked while the state dicts are read,
    however the framework reads them (PEFT collects an adapter's ``modules_to_save`` from
    their own state dicts); an explicit ``state_dict=`` is saved as given.

    Raises:
        AttributeError: the inner model has no ``save_pretrained``.
    """
    inner = wrapper.module
    save = getattr(inner, "save_pretrained", None)
    if not callable(save):
        raise AttributeError(f"{type(inner).__name__} has no save_pretrained")
    if kwargs.get("state_dict") is not None:
        return save(save_directory, *args, **kwargs)
    with baked_state_dicts(r4f_linears(inner)):
        return save(save_directory, *args, **kwargs)
