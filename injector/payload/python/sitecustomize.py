"""Run by Python at start-up because lumigo_injector.so put this directory first on
PYTHONPATH. It activates the Lumigo distro from the payload's packages built for this
interpreter and C library, then runs the application's own sitecustomize, which this module's
name would otherwise hide.

Every Python the injector meets runs this file, Python 2 included, so it is written in the
syntax they all parse (no f-strings, no annotations) and declines, with one line on stderr,
whatever it cannot serve: the application then runs exactly as it would have without us."""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
_PACKAGES = os.path.join(os.path.dirname(_HERE), "packages")
_LIBC_NAMES = {"manylinux": "glibc", "musllinux": "musl"}


def libc_family(gnu_libc_version, mapped_files):
    """The wheel family built for this process's C library: "manylinux" (glibc 2.17 or later,
    what manylinux2014 wheels need) or "musllinux", else None.

    gnu_libc_version is os.confstr("CS_GNU_LIBC_VERSION") (None where it fails: only glibc
    answers it); mapped_files the text of /proc/self/maps. The loaded libc is what counts, not
    which loaders are installed: a glibc distribution may carry musl's (Debian's musl package)."""
    if gnu_libc_version:
        name, _, version = gnu_libc_version.partition(" ")
        if name == "glibc":
            try:
                major_minor = tuple(int(part) for part in version.split(".")[:2])
            except ValueError:
                return None
            return "manylinux" if major_minor >= (2, 17) else None
    # musl's dynamic loader is its libc, mapped into every dynamically linked musl process.
    if "/ld-musl-" in mapped_files:
        return "musllinux"
    return None


def package_set(implementation, version_info, abiflags, libc):
    """(name of the package set for this interpreter, None), or (None, why it is not served).
    The set's name is also its directory under packages/, present only if it was built."""
    if implementation != "cpython":
        return None, "%s is not supported, only CPython" % implementation
    if "t" in abiflags:
        # A free-threaded build cannot load the compiled packages of the regular one.
        return None, "free-threaded CPython %d.%d is not supported" % tuple(version_info[:2])
    if libc is None:
        return None, "the C library is neither glibc 2.17+ nor musl"
    return "cp%d%d-%s" % (version_info[0], version_info[1], libc), None


def search_path(set_name):
    """The payload's directories for a set, most specific first (a layer overrides the ones
    after it; injector/scripts/lock-python.sh puts each package at the most general one)."""
    tag, _, libc = set_name.partition("-")
    return [os.path.join(_PACKAGES, d) for d in (set_name, libc, tag, "common")]


def _served_interpreters(libc):
    found = []
    for name in os.listdir(_PACKAGES) if os.path.isdir(_PACKAGES) else ():
        tag, _, family = name.partition("-")
        if family == libc and tag[2:].isdigit():
            found.append((int(tag[3:]), "%s.%s" % (tag[2], tag[3:])))
    return ", ".join(version for _, version in sorted(found)) or "none"


def _mapped_files():
    try:
        with open("/proc/self/maps") as maps:
            return maps.read()
    except (IOError, OSError):  # no /proc: the libc stays unrecognised and we decline
        return ""


def _gnu_libc_version():
    try:
        return os.confstr("CS_GNU_LIBC_VERSION")
    except (AttributeError, ValueError, OSError):  # not glibc, or not a platform with confstr
        return None


def _decline(why):
    # The one line an operator sees when this interpreter is not traced. A switched-off
    # tracer was not asked for, so it says nothing.
    if os.environ.get("LUMIGO_SWITCH_OFF", "").lower() != "true":
        sys.stderr.write("lumigo: tracer not loaded, the application runs untraced: %s\n" % why)


def _activate():
    if sys.version_info[0] < 3:
        _decline("Python %d.%d is not supported" % sys.version_info[:2])
        return
    implementation = sys.implementation.name
    # glibc answers confstr without a file read; /proc/self/maps is read only where it does not.
    version = _gnu_libc_version()
    libc = libc_family(version, "" if version and version.startswith("glibc") else _mapped_files())
    name, why = package_set(implementation, sys.version_info, getattr(sys, "abiflags", ""), libc)
    if name is None:
        _decline(why)
        return
    if not os.path.isdir(os.path.join(_PACKAGES, name)):
        _decline("no build for CPython %d.%d on %s in this payload (it serves CPython %s there)"
                 % (sys.version_info[0], sys.version_info[1], _LIBC_NAMES[libc], _served_interpreters(libc)))
        return
    # Appended, not prepended: where the application ships its own copy of a shared
    # dependency, the application's copy wins and keeps working as it did.
    for directory in search_path(name):
        if os.path.isdir(directory) and directory not in sys.path:
            sys.path.append(directory)
    try:
        import lumigo_opentelemetry  # noqa: F401  (the distro activates on import)
    except Exception as err:  # a tracer that cannot load must not stop the application
        if os.environ.get("LUMIGO_DEBUG", "").lower() == "true":
            sys.stderr.write("lumigo: tracer not loaded: %r\n" % (err,))


def _chain_to_application_sitecustomize():
    others = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
    if sys.version_info[0] < 3:
        import imp

        try:
            found = imp.find_module("sitecustomize", others)
        except ImportError:
            return
        # A fresh module, not a reload of this one under the same name.
        del sys.modules["sitecustomize"]
        try:
            imp.load_module("sitecustomize", *found)
        finally:
            if found[0] is not None:
                found[0].close()
        return
    import importlib.machinery
    import importlib.util

    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", others)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules["sitecustomize"] = module
    # Errors propagate to site.py, which reports them exactly as it would have without us.
    spec.loader.exec_module(module)


# Imported under another name (the unit tests), it only defines the functions above.
if __name__ == "sitecustomize":
    _activate()
    _chain_to_application_sitecustomize()
