"""Replay latency: a CartPole model trained until it balances (500-step episodes), then ``GET /models/{name}/replay``
from the real server (``python run_api.py``) the first time (rendered and encoded) and again (from the cache), for
GIF and MP4; writes the ``replays`` section of docs/benchmarks.md and saves one frame as docs/replay-frame.png.
"""

import argparse
import io
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere

import imageio.v3 as iio  # noqa: E402
from stable_baselines3.common.env_util import make_vec_env  # noqa: E402

from benchmarks.report import DEFAULT_MARKDOWN, publish  # noqa: E402
from grpo import GRPO  # noqa: E402
from records import ModelRecord, utcnow  # noqa: E402
from rewards import optimized_cartpole  # noqa: E402
from store import Database, ModelCache, ModelStore  # noqa: E402
from tests.harness import Server, free_port  # noqa: E402


def trained_cartpole(root: Path, timesteps: int, given: Path | None) -> None:
    """A balancing CartPole model in the service's folder, recorded as the service records what it trains."""
    if given is not None:
        model = GRPO.load(given, device="cpu")
    else:
        env = make_vec_env("CartPole-v1", n_envs=8, seed=0)
        model = GRPO("MlpPolicy", env, n_steps=32, learning_rate=1e-3, reward_function=optimized_cartpole, seed=0)
        model.learn(timesteps)
    db = Database(root / "jobs.db")  # the file Server passes as --db
    store = ModelStore(root / "models", db, ModelCache(1, 2**30), "cpu")
    store.save(model, ModelRecord(name="cartpole", size_bytes=0, created_at=utcnow(), env_name="CartPole-v1"))
    db.close()


def cpu_seconds(pid: int) -> float:
    """User and system CPU time a process has used: what a request cost it, whatever else the machine runs."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--timesteps", type=int, default=30_000)
    parser.add_argument("--model", type=Path, help="a trained CartPole zip to replay instead of training one")
    parser.add_argument("--markdown", type=Path, default=DEFAULT_MARKDOWN)
    parser.add_argument("--frame", type=Path, default=REPO / "docs" / "replay-frame.png")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="grpo-replay-bench-"))
    started = time.monotonic()
    trained_cartpole(root, args.timesteps, args.model)
    train_s = time.monotonic() - started
    server = Server(root, free_port())
    server.start()
    rows = []
    try:
        for fmt in ("gif", "mp4"):
            for attempt in ("first", "cached"):
                assert server.process is not None
                cpu, began = cpu_seconds(server.process.pid), time.perf_counter()
                response = server.http.get("/models/cartpole/replay", params={"format": fmt})
                elapsed = time.perf_counter() - began
                cpu = cpu_seconds(server.process.pid) - cpu
                assert response.status_code == 200, response.text
                headers = response.headers
                cells = [
                    fmt,
                    f"{attempt} ({headers['x-replay-cache']})",
                    f"{elapsed:.2f}",
                    f"{cpu:.2f}",
                    headers["x-episode-length"],
                    f"{float(headers['x-episode-return']):g}",
                    headers["x-frames"],
                    f"{len(response.content) / 1024:.0f}",
                ]
                rows.append(f"| {' | '.join(cells)} |")
                if fmt == "gif" and attempt == "first":
                    frames = iio.imread(response.content, index=None, extension=".gif")
                    buffer = io.BytesIO()
                    iio.imwrite(buffer, frames[len(frames) // 2], extension=".png")
                    args.frame.write_bytes(buffer.getvalue())
    finally:
        server.kill()
    load = os.getloadavg()[0]
    rows.append("")
    rows.append(
        "The first request pays for loading the model into the cache, playing the episode (500 predictions), "
        "drawing the frames with pygame and encoding them; the second reads the file the first one wrote. "
        "The server's CPU seconds are what the request cost, whatever else the machine ran: on an idle core the first "
        "request would take about that long."
    )
    publish(
        args.markdown,
        "replays",
        [
            "## Replays",
            "",
            f"`python benchmarks/replays.py`: a CartPole model trained for {args.timesteps} steps "
            f"({'given with --model' if args.model else f'{train_s:.0f} s'}), "
            "then `GET /models/cartpole/replay` (seed 0, deterministic, at most 150 frames: every 4th of 500 steps "
            f"drawn, halved to 300x200) from `python run_api.py` on {os.cpu_count()} cores "
            f"({platform.processor() or platform.machine()}, load average {load:.1f} at the end).",
            "",
            "| format | request | seconds | server CPU seconds | episode length | return | frames | KiB |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
            *rows,
        ],
    )


if __name__ == "__main__":
    main()
