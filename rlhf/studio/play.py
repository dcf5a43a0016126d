"""The playground's model worker: a subprocess, so the studio's web process never imports torch.

`Player` starts `python -m rlhf.studio.play` on its first request and talks
to it in JSON lines (one request, one answer; one at a time). The worker
keeps the models it loaded (at most `KEEP`) for the next prompt. Each model
answers greedily; the reward model picked scores every answer, and on lab
prompts the lab's gold judge does too. The web app only hands it folders it
found under RUNS_DIR.

    request:  {"models": [folder...], "prompt": str, "max_new_tokens": int, "reward_model": folder | null}
    answer:   {"answers": [{"response", "finished", "reward"?, "gold"?}...]}  or  {"error": str}
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

    def play(self, models: list[str], prompt: str, *, max_new_tokens: int = 48,
             reward_model: str | None = None) -> list[dict]:
        request = {"models": models, "prompt": prompt, "max_new_tokens": max_new_tokens, "reward_model": reward_model}
        with self.lock:
            if self.proc is None or self.proc.poll() is not None:
                self.proc = self._start()
            try:
                self.proc.stdin.write(json.dumps(request) + "\n")
                self.proc.stdin.flush()
                line = _readline(self.proc, TIMEOUT_S)
            except (BrokenPipeError, OSError, TimeoutError) as e:
                self._kill()
                raise RuntimeError(f"{type(e).__name__}: {e}") from None
            if not line:
                self._kill()
                raise RuntimeError("the worker exited (see the studio's terminal)")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(answer["error"])
        return answer["answers"]

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

    def answer(self, request: dict) -> dict:
        import torch

        from rlhf.rollout import generate

        prompt = request["prompt"]
        out = []
        with torch.no_grad():
            for folder in request["models"]:
                model, tok = self._policy(folder)
                ro = generate(model, tok, [prompt], max_new_tokens=int(request.get("max_new_tokens") or 48),
                              temperature=0.0, do_sample=False, batch_size=1)
                out.append({"response": ro.texts[0], "finished": bool(ro.finished[0])})
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
        return {"answers": out}


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
    for line in sys.stdin:
        try:
            reply = worker.answer(json.loads(line))
        except Exception as e:  # one bad request (a damaged folder) must not end the worker
            reply = {"error": f"{type(e).__name__}: {str(e)[:500]}"}
        channel.write(json.dumps(reply) + "\n")
        channel.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
