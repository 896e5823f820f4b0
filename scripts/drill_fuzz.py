"""Fuzz darkroom's whole API with schemathesis, from its own /openapi.json, against the real stack:
`darkroom serve` on loopback (one CPU ComfyUI worker, the tiny demo models, an API key), with links
between operations followed (submit -> status -> result -> cancel).

    .venv/bin/python scripts/drill_fuzz.py [--max-examples 20] [--max-time-s 600] [--seed 1]

Checks: no 5xx, statuses, content types, headers and response bodies as the document says, no hangs
(every answer within --request-timeout-s). Cases are generated deterministically (the same ones each
run, so schemathesis ignores --seed); fuzzing and the stateful links repeat until --max-time-s is spent.
Prints the figures (operations, cases, failures by kind, stateful scenarios and links covered, prompts
the worker ran) and exits non-zero on any failure. `tests/e2e/test_fuzz.py` runs a two-minute round of
it, generation included, in `make test`.

Left out, each for a reason: the WebSocket routes (schemathesis speaks HTTP only; tests/facade and e2e
cover them), /dashboard/events (a stream that ends only when its client leaves, so every case would
wait out --request-timeout-s; tests/facade/test_dashboard.py reads it), the real-model endpoints' run
and queue submit (their weights are not on a test machine: they can only answer 503 models_missing),
and schemathesis's positive/negative data checks (a schema cannot say whether a LoRA file exists or a
URL answers, so a schema-valid request may rightly be a 422), and its ignored-auth check (the drill
sends the key on every request, so one with a wrong cookie or token still carries a right key and
rightly succeeds; tests/facade/test_error_shape.py walks every route without and with a wrong key).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from drill_serve import KEY, ROOT, Server

EXCLUDE_PATH = r"^/(ws|dashboard/events|editor(/.*)?|run/.+/realtime|run/fal-ai/.+|queue/fal-ai/[^{]+)$"
EXCLUDE_CHECKS = "positive_data_acceptance,negative_data_rejection,ignored_auth"


def fuzz(base: str, *, max_examples: int, max_time_s: float, seed: int, request_timeout_s: float,
         report: Path) -> tuple[int, dict[str, object]]:  # fmt: skip
    """Run schemathesis; (its exit code, figures from its JSON report)."""
    command = [
        str(Path(sys.executable).with_name("st")), "run", f"{base}/openapi.json",
        "-H", f"Authorization: Key {KEY}", "--max-examples", str(max_examples), "--seed", str(seed),
        "--max-time", str(int(max_time_s)), "--request-timeout", str(request_timeout_s),
        "--exclude-path-regex", EXCLUDE_PATH, "--exclude-checks", EXCLUDE_CHECKS,
        "--generation-deterministic", "--no-shrink", "--continue-on-failure",
        "--report", "ndjson", "--report-ndjson-path", str(report),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    sys.stdout.write(done.stdout[-20000:])
    sys.stderr.write(done.stderr[-4000:])
    return done.returncode, _figures(done.stdout)


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
    parser.add_argument("--request-timeout-s", type=float, default=90.0)
    parser.add_argument("--models-dir", default=str(ROOT / "data" / "models"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="drill-fuzz-") as tmp:
        server = Server("fuzz", Path(tmp), Path(args.models_dir),
                        {"DARKROOM_QUEUE_MAX_LENGTH": "4", "DARKROOM_RUN_TIMEOUT_S": "30"})  # fmt: skip
        server.start()
        try:
            code, figures = fuzz(
                server.base, max_examples=args.max_examples, max_time_s=args.max_time_s, seed=args.seed,
                request_timeout_s=args.request_timeout_s, report=Path(tmp) / "report.ndjson",
            )  # fmt: skip
        finally:
            server.stop()
        figures["key_in_log"] = server.log_has(KEY)  # sent with every request
        figures["prompts_run"] = server.log_path.read_text(errors="replace").count("Prompt executed in")
        print("FIGURES " + json.dumps(figures))
    return code or int(bool(figures["key_in_log"]))


if __name__ == "__main__":
    sys.exit(main())
