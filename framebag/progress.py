"""What a run tells the user while it goes: a progress bar or log lines, then one summary line.

:class:`Progress` is the ``progress=`` callback of :func:`framebag.engine.run`.
On a terminal it drives a tqdm bar of frames done out of frames complete, with
tqdm's own rate (frames/s) and ETA. When following a live file the bar is the
scan instead (frames done out of the whole scan, or out of the ROI with ``roi``),
and its postfix says how many frames are complete but not done yet. At the end
:meth:`Progress.finish` sets the bar's rate to the one the summary line gives
(this run's frames over the run's wall time), so the two agree. When stderr is not a
terminal (a batch job's log, a pipe) it writes a plain log line every
``interval`` seconds instead. Lines go through the standard logger
``framebag.progress``; :func:`configure` gives it a stderr handler so that
``--quiet`` (level WARNING) silences the bar, the lines and the summary alike.

Written here rather than taken from tqdm alone because the bar's total moves
(frames become complete while the run goes) and a non-terminal needs timed
lines, not carriage returns.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import IO, Any

from .keys import ENDED

__all__ = ["Progress", "configure", "summary_line", "LOGGER"]

LOGGER = "framebag.progress"
log = logging.getLogger(LOGGER)


def configure(quiet: bool = False, stream: IO[str] | None = None) -> logging.Logger:
    """Point the ``framebag.progress`` logger at ``stream`` (default: the current stderr).

    With ``quiet`` its level is WARNING, which hides progress and the summary.
    Calling it again replaces the handler it added before (so a new stderr is used).
    """
    for h in [h for h in log.handlers if getattr(h, "_framebag", False)]:
        log.removeHandler(h)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(logging.Formatter("framebag: %(message)s"))
    handler._framebag = True  # type: ignore[attr-defined]
    log.addHandler(handler)
    log.propagate = False
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    return log


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds // 60:.0f} min {seconds % 60:02.0f} s"
    return f"{seconds // 3600:.0f} h {seconds % 3600 // 60:02.0f} min"


class Progress:
    """The engine's progress callback: a bar on a terminal, timed log lines elsewhere.

    ``follow`` adds the scan-wide count of complete frames (a live file fills
    while the run goes); with ``roi`` (the run has one) that count is the ROI's and
    is called so. ``tty`` defaults to whether ``stream`` is a terminal;
    ``interval`` is the seconds between log lines. Nothing is shown when the
    ``framebag.progress`` logger does not pass INFO (``--quiet``); if
    :func:`configure` was not called, the first Progress calls it. Call
    :meth:`close` when the run ends, e.g. ``wf.run(..., progress=p); p.close()``.
    """

    def __init__(self, *, follow: bool = False, stream: IO[str] | None = None,
                 tty: bool | None = None, interval: float = 10.0, roi: bool = False) -> None:
        self.stream = stream if stream is not None else sys.stderr
        if not any(getattr(h, "_framebag", False) for h in log.handlers):
            configure(stream=self.stream)  # used from Python without the CLI
        self.follow = follow
        #: what the engine's ``total`` counts: the scan's frames, or the ROI's
        self.region = "ROI" if roi else "scan"
        self.tty = self.stream.isatty() if tty is None else tty
        self.interval = interval
        self.enabled = log.isEnabledFor(logging.INFO)
        self.bar: Any = None
        self.start = time.monotonic()
        self.first: int | None = None  # frames done before this run (resume)
        self.waiting = False
        self.last_line = 0.0
        self.state: dict[str, int] = {}
        self._postfix = ""

    @property
    def resumed(self) -> int:
        """Frames already done when the run started (nonzero only with ``--resume``)."""
        return self.first or 0

    def __call__(self, state: dict[str, Any]) -> None:
        processed, complete = int(state["processed"]), int(state["complete"])
        if self.first is None:
            if complete == 0:  # following a file with nothing complete yet
                if self.enabled and not self.waiting:
                    self.waiting = True
                    log.info("waiting for the first complete frame of %d", int(state["total"]))
                return
            # frames done before this run: the engine says (a fast first task may be in
            # ``processed`` already); an older caller's first count is taken as them
            self.first = int(state.get("resumed", processed))
            self.start = time.monotonic()
        self.state = {k: int(v) for k, v in state.items()}
        if not self.enabled:
            return
        if self.tty:
            self._bar(processed, complete, int(state["total"]), int(state["inflight"]))
        else:
            now = time.monotonic()
            if not self.last_line:
                self.last_line = now
                log.info(self.first_line())
            elif now - self.last_line >= self.interval:
                self.last_line = now
                log.info(self.line())

    def _bar(self, processed: int, complete: int, total: int, inflight: int) -> None:
        if self.bar is None:
            from tqdm import tqdm

            try:
                width, height = os.get_terminal_size(self.stream.fileno())
            except (OSError, AttributeError, ValueError):
                width = height = 0
            # a pseudo-terminal may report a 0x0 size, on which tqdm would draw nothing
            self.bar = tqdm(total=total if self.follow else complete, initial=processed,
                            unit="frame", file=self.stream, ncols=width or 100,
                            nrows=height or 24, dynamic_ncols=width > 0, mininterval=0.2,
                            smoothing=0.1, leave=True,
                            desc=f"done/{self.region}" if self.follow else "done/complete")
        bar = self.bar
        want = total if self.follow else complete
        if bar.total != want:
            bar.total = want  # a growing scan, or frames completing while not following
        if self.follow:
            postfix = f"{complete - processed} complete, waiting" + self._partly()
            if postfix != self._postfix:
                self._postfix = postfix
                bar.set_postfix_str(postfix, refresh=False)
        bar.update(processed - bar.n)

    def first_line(self) -> str:
        """What the run has to do, said once when the first frames are complete."""
        s = self.state
        text = f"{s['complete'] - self.resumed} complete frames to process"
        if self.resumed:
            text += f" ({self.resumed} done before)"
        if self.follow:
            text += f"; {self.region} {s['complete']}/{s['total']} complete, following it"
        return text

    def line(self) -> str:
        """One plain status line: done of complete, rate, ETA (and the scan or the ROI, when
        following)."""
        s = self.state
        processed, complete = s.get("processed", 0), s.get("complete", 0)
        elapsed = time.monotonic() - self.start
        new = processed - self.resumed
        rate = new / elapsed if elapsed > 0 else 0.0
        pct = 100.0 * processed / complete if complete else 0.0
        text = f"{processed}/{complete} complete frames done ({pct:.0f}%), {rate:.0f} frames/s"
        left = complete - processed
        if left and rate > 0:
            text += f", ETA {_duration(left / rate)}"
        if self.follow:
            total = s.get("total", 0)
            text += f"; {self.region} {complete}/{total} complete{self._partly()}, " \
                    f"{total - complete} not yet"
        return text

    def _partly(self) -> str:
        """Frames seen (some key set) but not yet complete, when there are any."""
        partly = self.state.get("seen", 0) - self.state.get("complete", 0)
        return f" (+{partly} partly keyed)" if partly > 0 else ""

    def finish(self, stats: dict[str, Any]) -> None:
        """Draw the bar a last time with the run's final count and the summary line's rate.

        ``stats`` is the engine's ``Results.stats``: the rate shown becomes this
        run's frames (``processed``) over its wall time (``wall``), as in
        :func:`summary_line`, instead of tqdm's smoothed recent rate.
        """
        bar = self.bar
        if bar is None:
            return
        new, wall = int(stats["processed"]), float(stats["wall"])
        bar.initial = int(stats.get("resumed", 0))
        bar.n = bar.initial + new
        from tqdm.std import EMA  # type: ignore[attr-defined]

        # with no smoothed rate, tqdm shows (n - initial) / elapsed: the summary's rate
        bar._ema_dn, bar._ema_dt, bar.smoothing = EMA(0), EMA(0), 0
        now = bar._time()
        bar._time = lambda: now  # the last draws' elapsed is exactly the run's wall time
        bar.start_t = now - wall
        if self.follow:
            bar.set_postfix_str("", refresh=False)
        bar.refresh()

    def close(self) -> None:
        """Finish the bar (leaving it on screen) so the summary prints below it."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def summary_line(results: Any, follow: bool = False) -> str:
    """The one line printed at the end of a run, from a :class:`framebag.results.Results`.

    Frames done by an earlier run (``--resume``) are reported apart from this
    run's, and the throughput counts only this run's frames. When following a
    live file the line ends with what ended the run.
    """
    s = results.stats
    new, resumed = int(s["processed"]), int(s.get("resumed", 0))
    wall = float(s["wall"])
    rate = new / wall if wall > 0 else 0.0
    parts = [f"{new} frames processed"]
    if resumed:
        parts[0] += f" (+{resumed} done by the earlier run)"
    parts.append(f"{s['failed']} failed and skipped" if s["failed"] else "none failed")
    text = (f"{', '.join(parts)} in {wall:.2f} s ({rate:.0f} frames/s); "
            f"{s['done']}/{results.done.size} of the scan done; output {results.output}")
    if follow and s.get("ended_by"):
        ended = ENDED.get(s["ended_by"], s["ended_by"])
        if s["ended_by"] == "keys_full" and getattr(results, "roi", None) is not None:
            ended = "every frame of the ROI complete"
        text += f" (ended: {ended})"
    return text
