"""Step bookkeeping for demo.py: banners, timings, skip-if-done, redo, streamed sub-processes.

A step is *done* when its marker ``<out>/.steps/<name>.json`` exists and records the same
fingerprint (a hash of the settings that shape its outputs). So re-running the demo skips finished
steps, a changed setting (e.g. ``fast=true`` -> ``fast=false``) re-runs the affected step, and once a
step has re-run every later step re-runs too (its inputs changed), like ``make``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["StepRunner", "StepFailed", "fingerprint", "run_command", "banner"]


class StepFailed(RuntimeError):
    """A demo step failed; the message names the step and where its log is."""


def fingerprint(obj: Any) -> str:
    """Stable short hash of a JSON-able object (the settings a step depends on)."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def banner(text: str, char: str = "=") -> None:
    line = char * max(20, min(100, len(text) + 8))
    print(f"\n{line}\n{char * 3} {text}\n{line}", flush=True)


def _fmt_s(s: float) -> str:
    return f"{s:.1f}s" if s < 120 else f"{int(s // 60)}m{s % 60:04.1f}s"


@dataclass
class StepRecord:
    name: str
    status: str = "pending"  # pending | ran | skipped | failed
    seconds: float = 0.0
    previous_seconds: float | None = None  # time of the run that produced skipped outputs
    result: Any = None


@dataclass
class StepRunner:
    """Runs named steps in order with skip/redo logic and a timing table.

    ``redo``: names of steps to force (``{"all"}`` forces every step). ``clean`` maps a step name to
    folders deleted before it re-runs, so e.g. a training step never resumes from a stale checkpoint.
    """

    out: Path
    order: Sequence[str]
    redo: set[str] = field(default_factory=set)
    records: dict[str, StepRecord] = field(default_factory=dict)
    _upstream_ran: bool = False

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        unknown = self.redo - set(self.order) - {"all", ""}
        if unknown:
            raise ValueError(f"unknown step(s) in redo=: {sorted(unknown)}; steps are {list(self.order)} or 'all'")
        (self.out / ".steps").mkdir(parents=True, exist_ok=True)
        self.t0 = time.time()

    def marker(self, name: str) -> Path:
        return self.out / ".steps" / f"{name}.json"

    def is_done(self, name: str, fp: str) -> bool:
        m = self.marker(name)
        if not m.is_file():
            return False
        try:
            return json.loads(m.read_text()).get("fingerprint") == fp
        except json.JSONDecodeError:
            return False

    def run(
        self,
        name: str,
        fn: Callable[[], Any],
        *,
        settings: Any = None,
        title: str = "",
        clean: Sequence[Path] = (),
        always: bool = False,
        load: Callable[[], Any] | None = None,
    ) -> Any:
        """Run step ``name`` unless it is done; returns ``fn()`` (or ``load()`` when skipped).

        ``always``: run every time (cheap steps such as the report).
        """
        idx = list(self.order).index(name) + 1
        fp = fingerprint(settings)
        rec = self.records.setdefault(name, StepRecord(name))
        forced = "all" in self.redo or name in self.redo
        head = f"[{idx}/{len(self.order)}] {name}: {title}" if title else f"[{idx}/{len(self.order)}] {name}"
        if not (always or forced or self._upstream_ran) and self.is_done(name, fp):
            prev = json.loads(self.marker(name).read_text())
            rec.status, rec.previous_seconds = "skipped", prev.get("seconds")
            print(f"\n--- {head} -- done before ({_fmt_s(prev.get('seconds', 0.0))}), skipping "
                  f"(redo={name} to run it again)", flush=True)
            rec.result = load() if load is not None else prev.get("result")
            return rec.result
        banner(head)
        for p in clean:
            if Path(p).exists():
                print(f"    removing old outputs {p}", flush=True)
                shutil.rmtree(p) if Path(p).is_dir() else Path(p).unlink()
        self.marker(name).unlink(missing_ok=True)
        t = time.time()
        try:
            result = fn()
        except Exception:
            rec.status, rec.seconds = "failed", time.time() - t
            print(f"\n!!! step '{name}' failed after {_fmt_s(rec.seconds)}", flush=True)
            raise
        rec.status, rec.seconds, rec.result = "ran", time.time() - t, result
        if not always:
            self._upstream_ran = True
        payload = {"fingerprint": fp, "seconds": rec.seconds, "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
                   "settings": settings}
        try:
            json.dumps(result)
            payload["result"] = result
        except (TypeError, ValueError):
            pass
        self.marker(name).write_text(json.dumps(payload, indent=2, default=str))
        print(f"--- {name} finished in {_fmt_s(rec.seconds)}", flush=True)
        return result

    def timings(self) -> dict[str, float]:
        """Seconds per step in this invocation (skipped steps show the time of the run that made them)."""
        t: dict[str, float] = {}
        for name in self.order:
            rec = self.records.get(name)
            if rec is None:
                continue
            t[name] = rec.seconds if rec.status != "skipped" else float(rec.previous_seconds or 0.0)
        t["total (this invocation)"] = time.time() - self.t0
        return t

    def statuses(self) -> dict[str, str]:
        return {n: r.status for n, r in self.records.items()}

    def summary(self) -> str:
        lines = ["step          status    seconds"]
        for name in self.order:
            rec = self.records.get(name)
            if rec is None:
                continue
            secs = rec.seconds if rec.status != "skipped" else (rec.previous_seconds or 0.0)
            note = " (earlier run)" if rec.status == "skipped" else ""
            lines.append(f"{name:<13} {rec.status:<9} {secs:7.1f}{note}")
        lines.append(f"{'total':<13} {'':<9} {time.time() - self.t0:7.1f}  (this invocation)")
        return "\n".join(lines)


def run_command(
    args: Sequence[str],
    log_path: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> None:
    """Run ``python args...`` (args[0] is the script) streaming its output to the console and a log.

    The training scripts are run as a user would run them (a separate process, the README command),
    which also keeps their memory and thread settings out of the demo process.
    """
    cmd = [sys.executable, *args]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    print("    $ " + " ".join(_shell_quote(a) for a in ["python", *args]), flush=True)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=full_env,
                                cwd=str(cwd) if cwd else None)
        assert proc.stdout is not None
        # raw bytes, not lines: tqdm redraws its bar with "\r", which must reach the terminal as is
        out = sys.stdout.buffer
        while True:
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            log.write(chunk)
            out.write(chunk)
            out.flush()
        rc = proc.wait()
    if rc != 0:
        text = log_path.read_text(errors="replace").replace("\r", "\n")
        tail = "\n".join(line for line in text.splitlines()[-30:])
        raise StepFailed(f"command failed (exit {rc}): {' '.join(cmd)}\nlog: {log_path}\n--- last lines ---\n{tail}")


def _shell_quote(a: str) -> str:
    return a if all(c.isalnum() or c in "-_=./:,+" for c in a) else "'" + a.replace("'", "'\\''") + "'"
