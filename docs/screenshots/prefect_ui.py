"""Screenshots of the Prefect UI for the docs: a flow run of embedpipe and one of its artifacts.

    python docs/screenshots/prefect_ui.py                              # demo run, then the screenshots (~3 min)
    python docs/screenshots/prefect_ui.py --flow-name reindex --config configs/demo.yaml
    python docs/screenshots/prefect_ui.py --api-url http://127.0.0.1:4200/api --skip-run   # runs already there

Starts a Prefect server on a free loopback port (PREFECT_HOME in a temporary folder) unless --api-url names
one, runs `embedpipe <run-args>` against it (storage root in a temporary folder), finds the newest run of
--flow-name, and has headless Chromium render the v2 UI (Prefect 3.8's default) into
docs/prefect-flow-run.png (the run page, Artifacts tab) and docs/prefect-artifact.png (the artifact page of
the first PNG artifact, else the first artifact). Each page's DOM is checked for the run's name or the
artifact's key first, so a blank or still-loading page fails the script instead of landing in the docs.
Needs a `chromium` binary (Debian: apt-get install chromium); nothing in the tests or CI depends on it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from flows.local_server import loopback_server  # noqa: E402  (the repo's own helper, from a script under docs/)

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--virtual-time-budget=15000"]  # virtual time: the SPA loads its data first


def newest_run_and_artifacts(api_url: str, flow_name: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
                                     sort=FlowRunSort.START_TIME_DESC, limit=1)
        if not runs:
            sys.exit(f"no run of flow {flow_name!r} on {api_url}")
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[runs[0].id])))
    return runs[0], artifacts


def chromium(binary: str, args: list[str], profile: Path) -> subprocess.CompletedProcess:
    shutil.rmtree(profile, ignore_errors=True)  # a fresh profile each time: no saved UI preference or cache
    return subprocess.run([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                          text=True, timeout=180)


def screenshot(binary: str, url: str, out: Path, expect: str, size: str, profile: Path) -> None:
    dom = chromium(binary, ["--dump-dom", url], profile).stdout
    if expect not in dom:
        sys.exit(f"{url}: the rendered page does not show {expect!r} (blank or still loading?); not saved")
    result = chromium(binary, [f"--window-size={size}", f"--screenshot={out}", url], profile)
    if result.returncode != 0 or not out.exists():
        sys.exit(f"chromium failed on {url}: {result.stderr[-2000:]}")
    print(f"{out.relative_to(REPO) if out.is_relative_to(REPO) else out}: {url}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/demo.yaml", help="config the run uses ({config} in --run-args)")
    parser.add_argument("--flow-name", default="reindex", help="flow whose newest run is shown")
    parser.add_argument("--run-args", default="run {config} --set storage.root={store} --no-example",
                        help="embedpipe arguments that make the run; {config} and {store} are filled in")
    parser.add_argument("--skip-run", action="store_true", help="show the newest existing run; run nothing")
    parser.add_argument("--api-url", help="use this Prefect server instead of starting one")
    parser.add_argument("--out", default=str(REPO / "docs"), help="folder for the PNGs")
    parser.add_argument("--window-size", default="1600,1200")
    parser.add_argument("--chromium", default=next(filter(None, map(shutil.which, ("chromium", "chromium-browser",
                                                                                   "google-chrome"))), None))
    args = parser.parse_args()
    if not args.chromium:
        sys.exit("no chromium found (Debian: apt-get install chromium); pass --chromium PATH")
    if args.skip_run and not args.api_url:
        sys.exit("--skip-run needs --api-url: a server started here is new and holds no runs")

    with tempfile.TemporaryDirectory(prefix="prefect-ui-") as tmp, contextlib.ExitStack() as stack:
        tmp_path = Path(tmp)
        api_url = args.api_url or stack.enter_context(loopback_server(tmp_path / "prefect-home"))
        if not args.skip_run:
            cli_args = shlex.split(args.run_args.format(config=args.config, store=tmp_path / "store"))
            env = {**os.environ, "PREFECT_API_URL": api_url, "DO_NOT_TRACK": "1"}
            print(f"embedpipe {shlex.join(cli_args)}  (PREFECT_API_URL={api_url})", flush=True)
            subprocess.run([sys.executable, "-m", "flows.cli", *cli_args], cwd=REPO, env=env, check=True)
        run, artifacts = newest_run_and_artifacts(api_url, args.flow_name)
        ui = api_url.removesuffix("/api") + "/v2"
        out, profile = Path(args.out), tmp_path / "chromium-profile"
        out.mkdir(parents=True, exist_ok=True)
        screenshot(args.chromium, f"{ui}/runs/flow-run/{run.id}?tab=Artifacts", out / "prefect-flow-run.png",
                   run.name, args.window_size, profile)
        shown = next((a for a in artifacts if "data:image/png" in str(a.data)), artifacts[0] if artifacts else None)
        if shown is None:
            print(f"run {run.name} has no artifacts: no artifact screenshot")
            return
        screenshot(args.chromium, f"{ui}/artifacts/artifact/{shown.id}", out / "prefect-artifact.png",
                   shown.key or str(shown.id), args.window_size, profile)

if __name__ == "__main__":
    main()
