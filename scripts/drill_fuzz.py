"""Fuzz darkroom's whole API with schemathesis, from its own /openapi.json, against the real stack:
`darkroom serve` on loopback (one CPU ComfyUI worker, the tiny demo models, an API key), with links
between operations followed (submit -> status -> result -> cancel).

    .venv/bin/python scripts/drill_fuzz.py [--max-examples 20] [--max-time-s 600] [--seed 1]

Every schemathesis check but one: no 5xx, statuses, content types, headers and response bodies as the
document says, schema-valid requests accepted and schema-violating ones refused, required headers,
405 with the exact Allow for undeclared methods, resources usable after creation and gone after
deletion, and no hangs (every answer within --request-timeout-s). Cases are generated deterministically
(the same ones each run, so schemathesis ignores --seed); fuzzing and the stateful links repeat until
--max-time-s is spent. Prints the figures (operations, cases, failures by kind, declared refusals
tolerated by error type, stateful scenarios and links covered, prompts the worker ran) and exits
non-zero on any failure; schemathesis's whole report is kept in data/drills/fuzz-schemathesis.log.
`tests/e2e/test_fuzz.py` runs a two-minute round of it, generation included, in `make test`.

A well-formed request may rightly be refused for what it names (a LoRA file that is not there, a webhook
host that is not allowed, a range past the end of a file): no schema can say so. Such a refusal is
tolerated only where the document declares it, by the error type the body carries
(``x-darkroom-refusals`` on the response; scripts/fuzz_hooks.py), never by route. The same hooks keep
every generated remote URL on loopback (127.0.0.1:9, refused by the outbound policy without a lookup).

Left out, each for a reason: the WebSocket routes (/ws, /editor/ws, /run/{path}/realtime: schemathesis
speaks HTTP only; tests/facade and e2e cover them, and the route walk in tests/facade/test_error_shape.py
their 405s), /dashboard/events (a stream that ends only when its client leaves, so every case would
wait out --request-timeout-s; tests/facade/test_dashboard.py reads it), the real-model endpoints' run
and queue submit (their weights are not on a test machine: they can only answer 503 models_missing),
and schemathesis's ignored-auth check: it mutates the credentials of one scheme while the drill sends
the key on every request, so a request with a wrong cookie or token still carries a right key and
rightly succeeds (tests/facade/test_error_shape.py walks every route without and with a wrong key).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from drill_serve import KEY, LOGS, ROOT, Server

# /nodes: a valid body is a git source the server clones (a generated URL would reach the network) and
# whose code the workers would run; tests/facade/test_node_packs_api.py covers its answers instead
EXCLUDE_PATH = (
    r"^/(ws|editor/ws|dashboard/events|run/\{path\}/realtime|run/fal-ai/.+|queue/fal-ai/[^{]+"
    r"|nodes(/\{name\})?)$"
)
EXCLUDE_CHECKS = "ignored_auth"
HOOKS = Path(__file__).with_name("fuzz_hooks.py")


def fuzz(base: str, *, max_examples: int, max_time_s: float, seed: int, request_timeout_s: float,
         report: Path, no_coverage_for: str | None = None) -> tuple[int, dict[str, object]]:  # fmt: skip
    """Run schemathesis; (its exit code, figures from its JSON report)."""
    config, skip = report.with_name("schemathesis.toml"), json.dumps(no_coverage_for)
    skipped = f"[[operations]]\ninclude-path-regex = {skip}\nphases.coverage.enabled = false\n"
    config.write_text(skipped if no_coverage_for else "")
    command = [
        str(Path(sys.executable).with_name("st")), "--config-file", str(config),
        "run", f"{base}/openapi.json",
        "-H", f"Authorization: Key {KEY}", "--max-examples", str(max_examples), "--seed", str(seed),
        "--max-time", str(int(max_time_s)), "--request-timeout", str(request_timeout_s),
        "--exclude-path-regex", EXCLUDE_PATH, "--checks", "all", "--exclude-checks", EXCLUDE_CHECKS,
        "--max-response-time", str(request_timeout_s),
        "--generation-deterministic", "--no-shrink", "--continue-on-failure",
        "--report", "ndjson", "--report-ndjson-path", str(report),
    ]  # fmt: skip
    refusals = report.with_name("refusals.txt")
    env = {**os.environ, "SCHEMATHESIS_HOOKS": str(HOOKS), "DARKROOM_FUZZ_REFUSALS": str(refusals)}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    (LOGS / "fuzz-schemathesis.log").write_text(done.stdout + done.stderr)  # every failure, in full
    sys.stdout.write(done.stdout[-20000:])
    sys.stderr.write(done.stderr[-4000:])
    figures = _figures(done.stdout)
    figures["refusals_tolerated"] = dict(
        Counter(refusals.read_text().split()) if refusals.exists() else Counter()
    )
    return done.returncode, figures


def _figures(output: str) -> dict[str, object]:
    figures: dict[str, object] = {}
    if found := re.search(r"Tested:\s+(\d+)", output):
        figures["operations"] = int(found[1])
    if found := re.search(r"(\d+) generated, (\d+) found (\d+) unique failures", output):
        figures["cases"], figures["failing_cases"], figures["failures"] = map(int, found.groups())
    elif found := re.search(r"(\d+) generated", output):
        figures["cases"], figures["failures"] = int(found[1]), 0
    if found := re.search(r"Scenarios:\s+(\d+)", output):
        figures["stateful_scenarios"] = int(found[1])
    if found := re.search(r"API Links:\s+(\d+) covered / (\d+) selected", output):
        figures["links_covered"], figures["links"] = int(found[1]), int(found[2])
    figures["by_kind"] = dict(re.findall(r"❌ (ST\d+ [^:\n]+): (\d+)", output))
    figures["server_errors"] = int(
        dict(re.findall(r"❌ (ST101) Server error: (\d+)", output)).get("ST101", 0)
    )
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-examples", type=int, default=20)
    parser.add_argument("--max-time-s", type=float, default=600.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--request-timeout-s", type=float, default=120.0)
    parser.add_argument("--models-dir", default=str(ROOT / "data" / "models"))
    parser.add_argument(
        "--no-coverage-for", metavar="REGEX",
        help="operations (by path) whose coverage phase is skipped: the bounded round's sync runs, each "
        "case a generation on the CPU; the fuzzing and stateful phases still send them",
    )  # fmt: skip
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="drill-fuzz-") as tmp:
        # A run limit under the request timeout: a run the loaded CPU cannot finish answers its 504 (a
        # failure here) before the client would call it a hang.
        server = Server("fuzz", Path(tmp), Path(args.models_dir),
                        {"DARKROOM_QUEUE_MAX_LENGTH": "4", "DARKROOM_RUN_TIMEOUT_S": "110"})  # fmt: skip
        server.start()
        try:
            code, figures = fuzz(
                server.base, max_examples=args.max_examples, max_time_s=args.max_time_s, seed=args.seed,
                request_timeout_s=args.request_timeout_s, report=Path(tmp) / "report.ndjson",
                no_coverage_for=args.no_coverage_for,
            )  # fmt: skip
        finally:
            server.stop()
        figures["key_in_log"] = server.log_has(KEY)  # sent with every request
        figures["prompts_run"] = server.log_path.read_text(errors="replace").count("Prompt executed in")
        print("FIGURES " + json.dumps(figures))
    return code or int(bool(figures["key_in_log"]))


if __name__ == "__main__":
    sys.exit(main())
