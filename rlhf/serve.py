"""`rlhf serve MODEL`: an OpenAI-compatible chat-completions server.

Talk to any model the toolkit trains or loads with any OpenAI client, and run
LLM judges on it:

    rlhf serve runs/ppo --port 8000
    python -c "from openai import OpenAI; c = OpenAI(base_url='http://127.0.0.1:8000/v1', api_key='-');
               print(c.chat.completions.create(model='runs/ppo', messages=[{'role': 'user', 'content': 'What is 2 + 3?'}]))"

Endpoints: `GET /v1/models`, `POST /v1/chat/completions` (non-streaming and
`stream: true` server-sent events, `temperature`, `top_p`, `max_tokens` /
`max_completion_tokens`, `n`, `stop`, `seed`, `logprobs` + `top_logprobs`).
Errors use OpenAI's shape `{"error": {"message", "type", "param", "code"}}`.
Bound to 127.0.0.1 unless `--host` says otherwise; with `--api-key-env NAME`
requests must carry that key as a bearer token (the key is never logged).
The model runs on `--device` (a GPU when there is one); it serves one request at a time: a lock
serialises generation.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Optional

from rlhf.config import opt, parse
from rlhf.device import DeviceOptions
from rlhf.errors import UserError


@dataclass
class ServeConfig(DeviceOptions):
    """OpenAI-compatible chat-completions server for a model."""

    command = "serve"
    model: str = opt(help="model folder, hub name or preset (e.g. runs/ppo, lab)", positional=True)
    host: str = opt("127.0.0.1", "address to bind; 0.0.0.0 exposes the server to the network")
    port: int = opt(8000, "port (0 picks a free one and prints it)")
    name: Optional[str] = opt(None, "model id reported to clients (default: the MODEL argument)")
    max_len: int = opt(1024, "longest prompt + completion in tokens; longer prompts keep their end")
    max_tokens_limit: int = opt(512, "upper bound on max_tokens a request may ask for")
    dtype: str = opt("float32", "float32 | bfloat16")
    api_key_env: Optional[str] = opt(None, "environment variable holding the API key clients must send")
    trust_remote_code: bool = opt(False, "allow model code from the model folder")

    def __post_init__(self):
        if not 0 <= self.port <= 65535:
            raise UserError(f"port must be 0..65535, got {self.port}")
        if self.api_key_env and not os.environ.get(self.api_key_env):
            raise UserError(f"--api-key-env {self.api_key_env}: that environment variable is empty")
        super().__post_init__()


class APIError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def _number(body: dict, key: str, default, lo: float, hi: float, kind=float):
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and int(value) != value):
        raise APIError(400, f"'{key}' must be a {'integer' if kind is int else 'number'}", param=key,
                       code="invalid_type")
    if not lo <= value <= hi:
        raise APIError(400, f"'{key}' must be between {lo} and {hi}, got {value}", param=key,
                       code="invalid_value")
    return kind(value)


@dataclass
class Request:
    messages: list
    temperature: float
    top_p: float
    max_tokens: int
    n: int
    stop: list[str]
    seed: int | None
    stream: bool
    logprobs: bool
    top_logprobs: int


def parse_request(body, model_name: str, max_tokens_limit: int) -> Request:
    """Validate a chat-completions body; raise APIError with OpenAI's error shape."""
    if not isinstance(body, dict):
        raise APIError(400, "request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "'messages' must be a non-empty array", param="messages", code="invalid_type")
    clean = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "developer"):
            raise APIError(400, f"messages[{i}].role must be system, user or assistant", param=f"messages[{i}].role")
        content = m.get("content")
        if isinstance(content, list):  # content parts: keep the text ones
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
        if not isinstance(content, str):
            raise APIError(400, f"messages[{i}].content must be a string", param=f"messages[{i}].content")
        clean.append({"role": "system" if m["role"] == "developer" else m["role"], "content": content})
    model = body.get("model")
    if model is not None and model != model_name:
        raise APIError(404, f"The model '{model}' does not exist; this server serves '{model_name}'",
                       type_="invalid_request_error", param="model", code="model_not_found")
    stop = body.get("stop") or []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop) or len(stop) > 4:
        raise APIError(400, "'stop' must be a string or up to 4 strings", param="stop")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    max_tokens = _number({"max_tokens": max_tokens}, "max_tokens", min(256, max_tokens_limit), 1,
                         max_tokens_limit, int)
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise APIError(400, "'seed' must be an integer", param="seed")
    return Request(
        messages=clean,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0),
        max_tokens=max_tokens,
        n=_number(body, "n", 1, 1, 16, int),
        stop=stop,
        seed=seed,
        stream=bool(body.get("stream", False)),
        logprobs=bool(body.get("logprobs", False)),
        top_logprobs=_number(body, "top_logprobs", 0, 0, 20, int),
    )


class Engine:
    """The model, its tokenizer and a lock; generation for one request at a time."""

    def __init__(self, cfg: ServeConfig):
        from rlhf.device import use_device
        from rlhf.models import load_causal_lm, load_tokenizer

        self.device = use_device(cfg)  # a missing GPU fails with one line, before the model loads
        self.cfg = cfg
        self.tokenizer = load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code, padding_side="left")
        self.model = load_causal_lm(cfg.model, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code)
        self.model.to(self.device).eval()
        self.lock = threading.Lock()

    def _inputs(self, messages):
        import torch

        from rlhf.chat import render_prompt

        text = render_prompt(self.tokenizer, messages)
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        budget = max(1, self.cfg.max_len - 1)
        ids = ids[-budget:]
        return torch.tensor([ids], device=self.device)

    def _gen_kwargs(self, req: Request, input_ids):
        import torch

        kwargs = dict(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                      max_new_tokens=min(req.max_tokens, max(1, self.cfg.max_len - input_ids.shape[1])),
                      pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.tokenizer.eos_token_id)
        if req.temperature > 0:
            kwargs.update(do_sample=True, temperature=req.temperature, top_p=req.top_p, top_k=0)
        else:
            kwargs.update(do_sample=False)
        return kwargs

    def complete(self, req: Request) -> tuple[list[dict], int]:
        """Non-streaming: n choices, each {text, finish_reason, tokens, logprobs}."""
        import torch

        input_ids = self._inputs(req.messages)
        choices = []
        with self.lock, torch.inference_mode():
            if req.seed is not None:
                torch.manual_seed(req.seed)
            for _ in range(req.n):
                out = self.model.generate(**self._gen_kwargs(req, input_ids), output_scores=req.logprobs,
                                          return_dict_in_generate=True)
                new = out.sequences[0, input_ids.shape[1]:].tolist()
                choices.append(self._finish(req, new, out.scores if req.logprobs else None))
        return choices, input_ids.shape[1]

    def _finish(self, req: Request, new: list[int], scores) -> dict:
        import torch

        eos = self.tokenizer.eos_token_id
        finish = "length"
        if eos in new:
            new = new[:new.index(eos)]
            finish = "stop"
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        for s in req.stop:
            if s in text:
                text, finish = text[:text.index(s)], "stop"
        choice = {"text": text, "finish_reason": finish, "tokens": len(new)}
        if scores is not None:
            content = []
            for tok_id, step_scores in zip(new, scores):
                # Log-probabilities of the model's own distribution (temperature 1), as OpenAI reports them.
                logp = torch.log_softmax(step_scores[0].float(), dim=-1)
                entry = {"token": self.tokenizer.decode([tok_id]), "logprob": float(logp[tok_id]),
                         "bytes": list(self.tokenizer.decode([tok_id]).encode("utf-8")), "top_logprobs": []}
                if req.top_logprobs:
                    top = torch.topk(logp, req.top_logprobs)
                    entry["top_logprobs"] = [
                        {"token": self.tokenizer.decode([int(i)]), "logprob": float(v),
                         "bytes": list(self.tokenizer.decode([int(i)]).encode("utf-8"))}
                        for v, i in zip(top.values.tolist(), top.indices.tolist())]
                content.append(entry)
            choice["logprobs"] = {"content": content}
        return choice

    def stream(self, req: Request):
        """Yield text pieces of one completion, then the finish reason."""
        import torch
        from transformers import TextIteratorStreamer

        input_ids = self._inputs(req.messages)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        result = {}

        def run():
            with torch.inference_mode():
                if req.seed is not None:
                    torch.manual_seed(req.seed)
                out = self.model.generate(**self._gen_kwargs(req, input_ids), streamer=streamer)
                new = out[0, input_ids.shape[1]:].tolist()
                result["finish"] = "stop" if self.tokenizer.eos_token_id in new else "length"

        with self.lock:
            worker = threading.Thread(target=run, daemon=True)
            worker.start()
            sent = ""
            stopped = False
            for piece in streamer:
                if stopped:
                    continue
                candidate = sent + piece
                cut = min((candidate.index(s) for s in req.stop if s in candidate), default=None)
                if cut is not None:
                    piece, stopped = candidate[len(sent):cut], True
                if piece:
                    sent += piece
                    yield piece
            worker.join()
        yield {"finish": "stop" if stopped else result.get("finish", "length")}


def create_app(engine, model_name: str, api_key: str | None = None):
    from flask import Flask, Response, jsonify, request

    app = Flask("rlhf.serve")

    def error(e: APIError):
        return jsonify(e.body()), e.status

    @app.before_request
    def check_key():
        if api_key is None:
            return None
        header = request.headers.get("Authorization", "")
        if header != f"Bearer {api_key}":
            return error(APIError(401, "Incorrect API key provided", type_="invalid_request_error",
                                  code="invalid_api_key"))
        return None

    @app.get("/v1/models")
    def models():
        return jsonify({"object": "list", "data": [
            {"id": model_name, "object": "model", "created": int(time.time()), "owned_by": "rlhf"}]})

    @app.post("/v1/chat/completions")
    def chat_completions():
        body = request.get_json(silent=True)
        try:
            req = parse_request(body, model_name, engine.cfg.max_tokens_limit)
            if req.stream and req.n != 1:
                raise APIError(400, "streaming supports n = 1 only", param="n")
        except APIError as e:
            return error(e)
        cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if req.stream:
            def events():
                def chunk(delta, finish=None):
                    data = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model_name,
                            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
                    return f"data: {json.dumps(data)}\n\n"

                yield chunk({"role": "assistant", "content": ""})
                for piece in engine.stream(req):
                    if isinstance(piece, dict):
                        yield chunk({}, piece["finish"])
                    else:
                        yield chunk({"content": piece})
                yield "data: [DONE]\n\n"

            return Response(events(), mimetype="text/event-stream", headers={"Cache-Control": "no-cache"})
        choices, n_prompt = engine.complete(req)
        n_completion = sum(c["tokens"] for c in choices)
        return jsonify({
            "id": cid, "object": "chat.completion", "created": created, "model": model_name,
            "choices": [{"index": i, "message": {"role": "assistant", "content": c["text"]},
                         "logprobs": c.get("logprobs"), "finish_reason": c["finish_reason"]}
                        for i, c in enumerate(choices)],
            "usage": {"prompt_tokens": n_prompt, "completion_tokens": n_completion,
                      "total_tokens": n_prompt + n_completion},
        })

    @app.errorhandler(404)
    def not_found(_):
        return error(APIError(404, f"Unknown path {request.path}", code="not_found"))

    @app.errorhandler(405)
    def bad_method(_):
        return error(APIError(405, f"Method {request.method} not allowed on {request.path}"))

    @app.errorhandler(Exception)
    def internal(e):
        return error(APIError(500, f"internal error: {type(e).__name__}", type_="server_error"))

    return app


def make_server(cfg: ServeConfig):
    """A ready WSGI server (not yet serving); `.port` tells the bound port."""
    from waitress.server import create_server

    engine = Engine(cfg)
    key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
    app = create_app(engine, cfg.name or cfg.model, key)
    return create_server(app, host=cfg.host, port=cfg.port, threads=4, ident="rlhf")


def main(argv: list[str]) -> int:
    cfg = parse(ServeConfig, argv)
    server = make_server(cfg)
    port = server.effective_port
    print(f"rlhf: serving {cfg.name or cfg.model} at http://{cfg.host}:{port}/v1 (Ctrl-C stops)", flush=True)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0
