"""Open a page in a headless Chromium (Qt WebEngine's), drive its step control, and report the
console's errors; optionally save a screenshot. For tests/test_view.py and the README's picture:
`python -m lab.browser page.html [--screenshot shot.png]`. Needs `pip install PyQt6-WebEngine`
(optional: the test is skipped without it). Exit status 1 when the page logged an error."""

import argparse
import os
import sys

DRIVE = """(() => {  // every step of the control, both jumps, both shadings; returns what it saw
  const slider = document.getElementById('step'), seen = [];
  for (let s = 0; s <= +slider.max; s += Math.max(1, Math.floor(+slider.max / 50))) {
    slider.value = s; slider.dispatchEvent(new Event('input')); seen.push(document.getElementById('stepinfo').textContent);
  }
  slider.value = 0; slider.dispatchEvent(new Event('input'));
  document.getElementById('next').click(); const first = +slider.value;
  document.getElementById('prev').click();
  const shade = document.getElementById('shade');
  for (const o of shade.options) { shade.value = o.value; shade.dispatchEvent(new Event('change')); }
  shade.value = SHADE; shade.dispatchEvent(new Event('change'));
  slider.value = slider.max; slider.dispatchEvent(new Event('input'));
  return JSON.stringify({first_eviction: first, infos: seen.length,
                         last: document.getElementById('stepinfo').textContent,
                         hidden_at_0: document.querySelectorAll('span.u').length});
})()"""


def run(path: str, screenshot: str | None = None, shade: str = "s", width: int = 1400,
        height: int = 900) -> tuple[list[str], str]:
    """(the console's error messages, what DRIVE returned) after loading `path` and driving it,
    left shaded by `shade` ("s": the scores, "l": what the answer attended to)."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    os.environ.setdefault("QTWEBENGINE_CHROMIUM_FLAGS", "--no-sandbox --disable-gpu")
    from PyQt6.QtCore import QTimer, QUrl
    from PyQt6.QtWebEngineCore import QWebEnginePage
    from PyQt6.QtWebEngineWidgets import QWebEngineView
    from PyQt6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication(sys.argv[:1])
    errors, result = [], {}

    class Page(QWebEnginePage):
        def javaScriptConsoleMessage(self, level, message, line, source):
            if level == QWebEnginePage.JavaScriptConsoleMessageLevel.ErrorMessageLevel:
                errors.append(f"{source}:{line}: {message}")

    view = QWebEngineView()
    view.setPage(Page(view))
    view.resize(width, height)

    def finish():
        if screenshot:
            view.grab().save(screenshot)
        app.quit()

    def loaded(ok):
        if not ok:
            errors.append(f"{path}: did not load")
            return app.quit()
        def got(value):
            result.update(value=value)
            QTimer.singleShot(500, finish)  # let the last repaint land before the screenshot

        view.page().runJavaScript(DRIVE.replace("SHADE", repr(shade)), got)

    view.loadFinished.connect(loaded)
    view.load(QUrl.fromLocalFile(os.path.abspath(path)))
    view.show()
    QTimer.singleShot(60_000, app.quit)  # a page that never answers fails, it does not hang
    app.exec()
    return errors, result.get("value") or ""


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m lab.browser", description=__doc__.splitlines()[0])
    ap.add_argument("page", help="the HTML page")
    ap.add_argument("--screenshot", help="PNG of the page after driving it")
    ap.add_argument("--shade", choices=["s", "l"], default="s", help="the shading left for the screenshot: s, "
                    "the scores; l, what the answer attended to")
    return ap.parse_args(argv)


def cli(argv=None):
    args = parse_args(argv)
    if not os.path.isfile(args.page):
        sys.exit(f"python -m lab.browser: {args.page}: no such file")
    try:
        errors, seen = run(args.page, args.screenshot, args.shade)
    except ImportError:
        sys.exit("python -m lab.browser: needs Qt WebEngine's Chromium (pip install PyQt6-WebEngine)")
    print(seen)
    for e in errors:
        print("console error:", e, file=sys.stderr)
    sys.exit(1 if errors or not seen else 0)


if __name__ == "__main__":
    cli()
