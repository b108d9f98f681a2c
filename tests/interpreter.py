"""A faster Triton interpreter for the test suite: the same semantics, one
patching of triton.language per launch instead of one per helper call.

Under TRITON_INTERPRET=1 triton maps triton.language onto NumPy by patching
the language modules at each launch, and again at every call of a @jit
helper inside the kernel (tl.sum, tl.zeros and our own tiles helpers): the
same attributes of the same modules, rebuilt by `inspect.getmembers` over
the whole language thousands of times per launch. That re-patching took
about two thirds of a C = 512 forward and backward under the interpreter.

`patch_once()` makes a helper call patch only language modules the launch
has not patched yet, and undoes those with the launch. The kernels run the
same NumPy operations in the same order: tests/test_interpreter.py checks
bit for bit against the unmodified interpreter, and that a launch leaves
the language as it found it, on every triton CI runs (3.6 and the newest).

What it relies on, read in triton 3.6 and 3.9: `_patch_lang(fn)` is called
once when a launch starts, whose scope the launch restores in a `finally`,
and once per helper call inside it. It wraps nothing unless a
`_patch_lang(fn)` exists; where a release changes the rest,
test_interpreter.py fails (it asserts the wrapper is installed and exact)
rather than letting the suite run on a different interpreter unnoticed.
"""

from __future__ import annotations

import inspect
import threading


class _NoScope:
    def restore(self) -> None:
        pass


def _language_modules(fn, tl) -> set:
    return {id(value) for value in fn.__globals__.values() if inspect.ismodule(value) and value in (tl, tl.core)}


def patch_once() -> bool:
    """Install the wrapper (idempotent); False where this triton lacks the hook."""
    try:
        import triton.language as tl
        from triton.runtime import interpreter
    except Exception:
        return False
    original = getattr(interpreter, "_patch_lang", None)
    if original is None or hasattr(original, "_msds_original"):
        return original is not None
    try:
        if list(inspect.signature(original).parameters) != ["fn"]:
            return False
    except (TypeError, ValueError):
        return False
    launch = threading.local()  # the interpreter runs a launch on the calling thread

    def patch_lang(fn):
        modules = _language_modules(fn, tl)
        patched = getattr(launch, "modules", None)
        if patched is None:  # a launch: the interpreter restores this scope when it ends
            scope = original(fn)
            launch.modules, launch.extra = set(modules), []
            restore = scope.restore

            def restore_launch():
                for extra in reversed(launch.extra):
                    extra.restore()
                launch.modules, launch.extra = None, []
                restore()

            scope.restore = restore_launch
            return scope
        if not modules <= patched:  # a helper from a module the launch has not patched (tl.core's own)
            launch.extra.append(original(fn))
            patched |= modules
        return _NoScope()

    patch_lang._msds_original = original
    interpreter._patch_lang = patch_lang
    return True


def unpatch() -> None:
    """Put triton's own function back (tests compare the two)."""
    from triton.runtime import interpreter

    interpreter._patch_lang = getattr(interpreter._patch_lang, "_msds_original", interpreter._patch_lang)
