"""Run by Python at start-up because lumigo_injector.so put this directory first on
PYTHONPATH. It activates the Lumigo distro from the payload's own packages, then runs the
application's own sitecustomize, which this module's name would otherwise hide."""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))


def _activate():
    packages = os.path.join(os.path.dirname(_HERE), "packages")
    # Appended, not prepended: where the application ships its own copy of a shared
    # dependency, the application's copy wins and keeps working as it did.
    if packages not in sys.path:
        sys.path.append(packages)
    try:
        import lumigo_opentelemetry  # noqa: F401  (the distro activates on import)
    except Exception as err:  # a tracer that cannot load must not stop the application
        if os.environ.get("LUMIGO_DEBUG", "").lower() == "true":
            print(f"lumigo: tracer not loaded: {err!r}", file=sys.stderr)


def _chain_to_application_sitecustomize():
    import importlib.machinery
    import importlib.util

    others = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", others)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules["sitecustomize"] = module
    # Errors propagate to site.py, which reports them exactly as it would have without us.
    spec.loader.exec_module(module)


_activate()
_chain_to_application_sitecustomize()
