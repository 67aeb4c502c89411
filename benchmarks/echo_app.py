"""The benchmark's baseline: a bare FastAPI app that answers ``POST /echo`` with its JSON body, and ``GET /`` and
``/health`` with a constant; nothing else (no middleware, no dependencies). Started the way ``run_api.py`` starts
the service (same uvicorn, same defaults, same virtualenv) in a process of its own, it is the ceiling of the web
stack on this machine:

    python benchmarks/echo_app.py --port 8001
"""

import argparse
from typing import Any

import uvicorn
from fastapi import FastAPI

app = FastAPI()


@app.get("/")
async def root() -> dict[str, str]:
    return {"message": "echo"}


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "healthy"}


@app.post("/echo")
async def echo(body: dict[str, Any]) -> dict[str, Any]:
    return body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log-level", default="info", help="as run_api.py's (info logs every request)")
    # Taken and ignored, so that tests.harness.Server can start this app as it starts run_api.py.
    parser.add_argument("--models-dir")
    parser.add_argument("--db")
    args = parser.parse_args()
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)


if __name__ == "__main__":
    main()
