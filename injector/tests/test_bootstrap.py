"""Unit tests of the Python bootstrap's choice of package set (payload/python/sitecustomize.py):
which C library a process runs on, and which interpreters it serves. Run by harness.py, or
alone: python3 -m unittest tests/test_bootstrap.py"""

import importlib.util
import unittest
from pathlib import Path

BOOTSTRAP = Path(__file__).resolve().parent.parent / "payload/python/sitecustomize.py"
# Under another name than sitecustomize, the module only defines its functions.
_spec = importlib.util.spec_from_file_location("lumigo_bootstrap", BOOTSTRAP)
bootstrap = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bootstrap)

GLIBC_MAPS = """\
55d0c0a00000-55d0c0a01000 r--p 00000000 08:01 1 /usr/bin/python3.11
7f1e2c000000-7f1e2c022000 r--p 00000000 08:01 2 /usr/lib/x86_64-linux-gnu/libc.so.6
7f1e2c400000-7f1e2c42a000 r--p 00000000 08:01 3 /usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2
"""
MUSL_MAPS = """\
5581f4a00000-5581f4a01000 r--p 00000000 00:2f 1 /usr/local/bin/python3.12
7f9a1c000000-7f9a1c014000 r--p 00000000 00:2f 2 /lib/ld-musl-x86_64.so.1
"""
MUSL_AARCH64_MAPS = "ffff8a000000-ffff8a0a0000 r-xp 00000000 00:2f 2 /lib/ld-musl-aarch64.so.1\n"


class LibcFamily(unittest.TestCase):
    def test_glibc_answers_confstr(self):
        self.assertEqual(bootstrap.libc_family("glibc 2.36", ""), "manylinux")
        self.assertEqual(bootstrap.libc_family("glibc 2.17", GLIBC_MAPS), "manylinux")

    def test_glibc_older_than_manylinux2014_is_not_served(self):
        self.assertIsNone(bootstrap.libc_family("glibc 2.12", GLIBC_MAPS))

    def test_unparsable_glibc_version_is_not_guessed(self):
        self.assertIsNone(bootstrap.libc_family("glibc unknown", GLIBC_MAPS))

    def test_musl_by_its_loader_in_the_process(self):
        self.assertEqual(bootstrap.libc_family(None, MUSL_MAPS), "musllinux")
        self.assertEqual(bootstrap.libc_family(None, MUSL_AARCH64_MAPS), "musllinux")

    def test_glibc_wins_over_an_installed_musl_loader(self):
        # Debian with its musl package: /lib/ld-musl-* exists, the process still runs glibc.
        self.assertEqual(bootstrap.libc_family("glibc 2.36", MUSL_MAPS), "manylinux")

    def test_neither(self):
        self.assertIsNone(bootstrap.libc_family(None, ""))
        self.assertIsNone(bootstrap.libc_family("", "/usr/lib/libc.so\n"))
        self.assertIsNone(bootstrap.libc_family("uclibc 1.0", ""))


class PackageSet(unittest.TestCase):
    def test_cpython_on_each_libc(self):
        self.assertEqual(bootstrap.package_set("cpython", (3, 9, 18), "", "manylinux"), ("cp39-manylinux", None))
        self.assertEqual(bootstrap.package_set("cpython", (3, 13, 0), "", "musllinux"), ("cp313-musllinux", None))
        # A debug build shares the regular build's ABI.
        self.assertEqual(bootstrap.package_set("cpython", (3, 12, 1), "d", "musllinux"), ("cp312-musllinux", None))

    def test_declines_with_a_reason(self):
        for args, words in [(("pypy", (3, 10, 14), "", "manylinux"), "pypy is not supported"),
                            (("cpython", (3, 13, 0), "t", "manylinux"), "free-threaded CPython 3.13"),
                            (("cpython", (3, 11, 2), "", None), "neither glibc")]:
            name, why = bootstrap.package_set(*args)
            self.assertIsNone(name)
            self.assertIn(words, why)

    def test_versions_without_a_build_get_a_name_the_payload_lacks(self):
        # Served or not is decided by the directory's presence, so 3.8 or 3.14 need no rule.
        self.assertEqual(bootstrap.package_set("cpython", (3, 8, 18), "", "manylinux"), ("cp38-manylinux", None))

    def test_search_path_most_specific_first(self):
        names = [Path(d).name for d in bootstrap.search_path("cp310-musllinux")]
        self.assertEqual(names, ["cp310-musllinux", "musllinux", "cp310", "common"])
        self.assertTrue(all(Path(d).parent.name == "packages" for d in bootstrap.search_path("cp39-manylinux")))


if __name__ == "__main__":
    unittest.main()
