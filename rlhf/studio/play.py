"""The playground's model worker: a subprocess, so the studio's web process never imports torch.

`Player` starts `python -m rlhf.studio.play` on its first request and talks
to it in JSON lines (one request at a time, answered by a stream of events).
The worker keeps the models it loaded (at most `KEEP`) for the next prompt.
Each model answers greedily, token by token (`rlhf.rollout.generate`'s
`on_token`), one model after the other; then the reward model picked scores
every answer, and on lab prompts the lab's gold judge does too. The web app
only hands it folders it found under RUNS_DIR.

    request:  {"models": [folder...], "prompt": str, "max_new_tokens": int, "reward_model": folder | null}
    events:   {"event": "token", "model": i, "delta": str}       the answer of model i grew by delta
              {"event": "answer", "model": i, "response": str, "finished": bool}
              {"event": "score", "model": i, "reward"?: float, "gold"?: float}
              {"event": "done"}  or  {"event": "error", "error": str}   the last event of a request
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections import OrderedDict

KEEP = 5  # models held in the worker's memory
TIMEOUT_S = 600.0


class Player:
    """The web side: the worker process, started on the first `play`."""

    def __init__(self, threads: int | None = None):
        self.proc: subprocess.Popen | None = None
        self.lock = threading.Lock()
        self.threads = threads

    def _start(self) -> subprocess.Popen:
        env = dict(os.environ)
        if self.threads:
            env["RLHF_PLAY_THREADS"] = str(self.threads)
        return subprocess.Popen([sys.executable, "-m", "rlhf.studio.play"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=None, text=True, encoding="utf-8", env=env)

    def stream(self, models: list[str], prompt: str, *, max_new_tokens: int = 48,
               reward_model: str | None = None):
        """The worker's events for one request, as they come (see the module's docstring), up to and without
        "done"; an "error" event or a dead worker raises `RuntimeError`. Closing the generator early (the
        browser went away) stops the worker, which would otherwise go on answering into the pipe."""
        request = {"models": models, "prompt": prompt, "max_new_tokens": max_new_tokens, "reward_model": reward_model}
        with self.lock:
            if self.proc is None or self.proc.poll() is not None:
                self.proc = self._start()
            complete = False
            try:
                self.proc.stdin.write(json.dumps(request) + "\n")
                self.proc.stdin.flush()
                while True:
                    line = _readline(self.proc, TIMEOUT_S)
                    if not line:
                        raise RuntimeError("the worker exited (see the studio's terminal)")
                    event = json.loads(line)
                    if event.get("event") in ("done", "error"):
                        complete = True
                        if event["event"] == "error":
                            raise RuntimeError(event["error"])
                        return
                    yield event
            except (BrokenPipeError, OSError, TimeoutError) as e:
                raise RuntimeError(f"{type(e).__name__}: {e}") from None
            finally:
                if not complete:
                    self._kill()

    def _kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def close(self) -> None:
        with self.lock:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.stdin.close()
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
            self.proc = None


def _readline(proc: subprocess.Popen, timeout: float) -> str:
    out: list[str] = []
    t = threading.Thread(target=lambda: out.append(proc.stdout.readline()), daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise TimeoutError(f"no answer in {timeout:.0f} s")
    return out[0] if out else ""


# --- the worker --------------------------------------------------------------------------------------------------

class Worker:
    def __init__(self):
        self.models: OrderedDict = OrderedDict()
        self.rms: dict = {}

    def _policy(self, folder: str):
        from rlhf.models import load_causal_lm, load_tokenizer

        if folder not in self.models:
            tok = load_tokenizer(folder, padding_side="left")
            model = load_causal_lm(folder)
            model.eval()
            self.models[folder] = (model, tok)
            while len(self.models) > KEEP:
                self.models.popitem(last=False)
        self.models.move_to_end(folder)
        return self.models[folder]

    def answer(self, request: dict, emit) -> None:
        """Answer one request, calling `emit(event)` for each event but the last ("done" or "error")."""
        import torch

        from rlhf.rollout import eos_token_ids, generate

        prompt = request["prompt"]
        out = []
        with torch.no_grad():
            for i, folder in enumerate(request["models"]):
                model, tok = self._policy(folder)
                eos, sent = set(eos_token_ids(model, tok)), [""]

                def grew(ids, mask, i=i, tok=tok, eos=eos, sent=sent):
                    body = [t for t, m in zip(ids[0].tolist(), mask[0].tolist()) if m and t not in eos]
                    text = tok.decode(body, skip_special_tokens=True)
                    # a character split across tokens decodes as U+FFFD until its last byte comes
                    if text.startswith(sent[0]) and len(text) > len(sent[0]) and not text.endswith("\ufffd"):
                        emit({"event": "token", "model": i, "delta": text[len(sent[0]):]})
                        sent[0] = text

                ro = generate(model, tok, [prompt], max_new_tokens=int(request.get("max_new_tokens") or 48),
                              temperature=0.0, do_sample=False, batch_size=1, on_token=grew)
                out.append({"response": ro.texts[0], "finished": bool(ro.finished[0])})
                emit({"event": "answer", "model": i, **out[-1]})
            rm = request.get("reward_model")
            if rm:
                from rlhf.judges import RewardModelJudge

                if rm not in self.rms:
                    self.rms = {rm: RewardModelJudge.load(rm, device="cpu")}
                scores = self.rms[rm].score([prompt] * len(out), [a["response"] for a in out])
                for a, s in zip(out, scores):
                    a["reward"] = s
        from rlhf.evaluate import lab_prompts

        if lab_prompts([prompt]):
            from rlhf.judges import GoldJudge

            golds = GoldJudge().score([prompt] * len(out), [a["response"] for a in out],
                                      stopped=[a["finished"] for a in out])
            for a, g in zip(out, golds):
                a["gold"] = g
        for i, a in enumerate(out):
            scores = {k: a[k] for k in ("reward", "gold") if k in a}
            if scores:
                emit({"event": "score", "model": i, **scores})


def main() -> int:
    # The answers travel on stdout: anything a library prints goes to stderr instead.
    channel = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    threads = os.environ.get("RLHF_PLAY_THREADS")
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    from rlhf.models import quiet_transformers

    quiet_transformers(True)
    worker = Worker()

    def emit(event: dict) -> None:
        channel.write(json.dumps(event) + "\n")
        channel.flush()

    for line in sys.stdin:
        try:
            worker.answer(json.loads(line), emit)
            emit({"event": "done"})
        except Exception as e:  # one bad request (a damaged folder) must not end the worker
            emit({"event": "error", "error": f"{type(e).__name__}: {str(e)[:500]}"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
