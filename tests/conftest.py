"""The test session's settings (one CPU thread, set once here, as every entry point sets its own) and its summary:
which optional test groups were skipped, and the one command that enables each."""

import os

#: skip-reason fragment -> (group, command that enables it)
OPTIONAL_GROUPS = {
    "lmms": ("lmms-eval plugin and scoring references", "make test-lmms-eval"),
    "chromium": ("browser test of `compactvlm serve`", "bash scripts/setup_browser.sh"),
    "gradio": ("Gradio app of `compactvlm serve`", "bash scripts/setup_browser.sh"),
    "selenium": ("browser test of `compactvlm serve`", "bash scripts/setup_browser.sh"),
}


def pytest_configure(config):
    from compactvlm.runtime import set_threads

    set_threads(1)  # tiny models: one thread is fastest and keeps timings comparable on a busy machine


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    skipped = terminalreporter.stats.get("skipped", [])
    groups: dict[str, tuple[str, int]] = {}
    for rep in skipped:
        text = str(rep.longrepr[2] if isinstance(rep.longrepr, tuple) else rep.longrepr).lower()
        for key, (group, cmd) in OPTIONAL_GROUPS.items():
            if key in text:
                n = groups.get(group, (cmd, 0))[1]
                groups[group] = (cmd, n + 1)
                break
    if groups:
        terminalreporter.write_sep("-", "optional test groups skipped")
        for group, (cmd, n) in groups.items():
            if cmd == "make test-lmms-eval" and os.environ.get("COMPACTVLM_LMMS_STEP") == "ran":
                terminalreporter.write_line(f"{group}: {n} test(s) skipped here; they ran in the `{cmd}` step above")
            else:
                terminalreporter.write_line(f"{group}: {n} test(s) skipped; enable with: {cmd}")
