"""The browser harness itself: server, page ready, run-all, second kernel client."""

from __future__ import annotations

import pytest

from .harness import KernelClient, KernelExecuteError, launch_chromium, open_notebook, write_notebook

pytestmark = pytest.mark.browser


@pytest.mark.parametrize("jupyter_server", ["lab", "notebook"], indirect=True)
def test_run_all_and_read_state_with_second_client(jupyter_server, playwright_instance):
    """Cells run in the page; a second kernel client reads their variables and sees errors."""
    name = f"harness_{jupyter_server.stack}.ipynb"
    write_notebook(jupyter_server.root_dir, name, ["x = 6 * 7", "import sys; y = sys.path[:3]"])
    browser = launch_chromium(playwright_instance)
    try:
        page = browser.new_page()
        open_notebook(page, jupyter_server, name)
        with KernelClient(jupyter_server, jupyter_server.kernel_id(name)) as kernel:
            kernel.wait_until("'y' in dir()")
            assert kernel.json("x") == 42
            assert str(jupyter_server.repo_root) in kernel.json("y")
            with pytest.raises(KernelExecuteError, match="ZeroDivisionError"):
                kernel.execute("1 / 0")
    finally:
        browser.close()


def test_a_missing_colab_environment_fails_with_the_command_that_makes_it(tmp_path):
    """No .venv-colab: the classic Notebook tests fail (never skip) and name the script to run."""
    from .harness import colab_venv

    with pytest.raises(RuntimeError, match=r"is missing: run `bash scripts/make_colab_venv.sh`"):
        colab_venv(tmp_path / ".venv-colab")
