"""Screenshot of `embedpipe serve`'s search page for the docs (docs/serve-page.png).

    python docs/screenshots/serve_page.py            # the demo's live alias: .embedpipe, scifact-demo (make demo first)
    python docs/screenshots/serve_page.py --root R --index I --alias A --query "..." --mode exact --k 5

Starts the service in this process on a free loopback port, has headless Chromium (driven over its DevTools
protocol by tests/chromium.py, as the page test does) open the page, type the query, pick the mode and k and click
Search; the PNG is saved only once results are on the page. Needs a `chromium` binary (apt-get install chromium).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from tests.chromium import Chromium, binary  # noqa: E402  (the repo's own driver, from a script under docs/)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=str(REPO / ".embedpipe"))
    parser.add_argument("--index", default="scifact-demo")
    parser.add_argument("--alias", default="live")
    parser.add_argument("--query", default="vitamin D supplementation and bone fractures")
    parser.add_argument("--mode", default="binary+rescore")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "serve-page.png")
    parser.add_argument("--window-size", default="1280,800")
    args = parser.parse_args()
    if binary() is None:
        sys.exit("no chromium binary (Debian: apt-get install chromium)")
    from flows.local_server import free_port
    from flows.serve.server import serving_in_thread
    from flows.serve.settings import ServeSettings

    settings = ServeSettings(root=args.root, index=args.index, alias=args.alias, port=free_port())
    width, height = map(int, args.window_size.split(","))
    with serving_in_thread(settings) as service, Chromium(binary(), width, height) as browser:
        browser.open(f"http://127.0.0.1:{settings.port}/")
        browser.type_into("#q", args.query)
        browser.evaluate(f"document.getElementById('mode').value = {args.mode!r}")
        browser.type_into("#k", str(args.k))
        browser.click("button[type=submit]")
        browser.wait_for("document.body.dataset.state === 'done'")
        shown = browser.evaluate("document.querySelectorAll('li.hit').length")
        if shown != args.k:
            sys.exit(f"the page shows {shown} results, expected {args.k}; not saved")
        browser.screenshot(args.out, full_page=True)
        print(f"{args.out}: {args.index}/{args.alias} version {service.holder.current.version}, {args.query!r} "
              f"({args.mode}, k={args.k})")


if __name__ == "__main__":
    main()
