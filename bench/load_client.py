"""A bounded HTTP load generator for an MLflow scoring server (`mlflow models serve`), run by
bench/bench_serving.py as a second process:

    python bench/load_client.py --url http://127.0.0.1:PORT --traffic traffic.json --concurrency 1 --out result.json

`traffic.json` maps a request size to its list of requests (each a list of input rows). For each size,
one warm-up request, then every request through `--concurrency` keep-alive connections, each sending
its next request when the previous one is answered (a closed loop: at most that many requests in
flight). Writes {size: {"seconds": wall time, "latencies": seconds per request, "outputs": rows}}.
"""

from __future__ import annotations

import argparse
import http.client
import json
import threading
import time
from typing import Any
from urllib.parse import urlsplit


def post(connection: http.client.HTTPConnection, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    body = json.dumps({"dataframe_records": rows})
    connection.request("POST", "/invocations", body=body, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    payload = response.read()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {payload[:500]!r}")
    return json.loads(payload)["predictions"]


def run(url: str, requests: list[list[dict[str, Any]]], concurrency: int) -> dict[str, Any]:
    host, port = urlsplit(url).hostname, urlsplit(url).port
    connections = [http.client.HTTPConnection(host, port, timeout=600) for _ in range(concurrency)]
    post(connections[0], requests[0])  # warm-up
    latencies: list[float] = [0.0] * len(requests)
    outputs: list[list[dict[str, Any]]] = [[] for _ in requests]
    failures: list[BaseException] = []
    lock, position = threading.Lock(), iter(range(len(requests)))

    def worker(connection: http.client.HTTPConnection) -> None:
        while True:
            with lock:
                i = next(position, None)
            if i is None:
                return
            start = time.perf_counter()
            try:
                outputs[i] = post(connection, requests[i])
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                failures.append(exc)
                return
            latencies[i] = time.perf_counter() - start

    threads = [threading.Thread(target=worker, args=(c,)) for c in connections]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    if failures:
        raise failures[0]
    return {"seconds": seconds, "latencies": latencies, "outputs": [o for request in outputs for o in request]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--traffic", required=True, help="JSON: request size -> list of requests")
    parser.add_argument("--concurrency", type=int, default=1, help="requests in flight at most")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    with open(args.traffic, encoding="utf-8") as f:
        traffic = json.load(f)
    results = {size: run(args.url, requests, args.concurrency) for size, requests in traffic.items()}
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
