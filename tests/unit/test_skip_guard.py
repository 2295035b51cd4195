import pytest

TESTS = {
    "skipped": "import pytest\n\ndef test_it():\n    pytest.skip('not here')\n",
    "xfail": "import pytest\n\n@pytest.mark.xfail(reason='known')\ndef test_it():\n    assert False\n",
    "xpass": "import pytest\n\n@pytest.mark.xfail(reason='known')\ndef test_it():\n    assert True\n",
    "module skipped": "import pytest\n\npytest.skip('no module', allow_module_level=True)\n",
}


@pytest.mark.parametrize("source", TESTS.values(), ids=TESTS.keys())
def test_a_test_that_does_not_run_as_a_test_fails_the_run(pytester: pytest.Pytester, source: str):
    pytester.makepyfile(test_guarded=source, test_other="def test_it():\n    assert True\n")

    result = pytester.runpytest("-p", "tests.skip_guard")

    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*did not run as tests*test_guarded.py*"])


def test_a_run_where_every_test_passes_passes(pytester: pytest.Pytester):
    pytester.makepyfile(test_guarded="def test_it():\n    assert True\n")

    assert pytester.runpytest("-p", "tests.skip_guard").ret == pytest.ExitCode.OK
