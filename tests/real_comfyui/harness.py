"""Run a real ComfyUI server (headless, CPU, loopback only) with this repo as a custom node pack.

Used by the optional tests in this folder; they run only when COMFYUI_DIR names a ComfyUI
checkout (v0.3.64 tested). COMFYUI_PYTHON names its interpreter (default: sys.executable).

    srv = ComfyServer.from_env()          # None when COMFYUI_DIR is unset
    srv.start()                           # temp base dir, tiny Wan checkpoint, main.py --cpu
    srv.object_info()["UNETLoader"]
    res = srv.queue_prompt({"1": {"class_type": ..., "inputs": {...}}})
    res.ok, res.outputs, res.error        # from /history once the prompt finished
    srv.stop()

Layout of the temp base dir (main.py --base-directory):
    custom_nodes/ComfyUI-Dummy-Forcing -> this repo (symlink)
    models/diffusion_models/tiny_wan_t2v.safetensors   (ComfyUI's own WanModel, random)
    models/diffusion_models/tiny_wan_causal.safetensors (the same weights flagged causal_ar)
    input/ output/ temp/ user/ (user/comfyui.db)   comfyui.log
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(HERE))
PACK_NAME = "ComfyUI-Dummy-Forcing"
TINY_WAN_NAME = "tiny_wan_t2v.safetensors"
TINY_CAUSAL_NAME = "tiny_wan_causal.safetensors"  # same weights, metadata causal_ar: CausalWanModel on >= 0.21
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class PromptRejected(Exception):
    """POST /prompt answered with a validation error (HTTP 400)."""

    def __init__(self, body: dict):
        super().__init__(json.dumps(body)[:2000])
        self.body = body
        self.node_errors = body.get("node_errors", {})


@dataclass
class PromptResult:
    prompt_id: str
    status: str                      # "success" | "error"
    outputs: dict = field(default_factory=dict)   # node id -> ui dict
    messages: list = field(default_factory=list)
    error: dict | None = None        # the execution_error message (exception_message, node_type, traceback)

    @property
    def ok(self) -> bool:
        return self.status == "success"


class ComfyServer:
    def __init__(self, comfy_dir: str, python: str | None = None, repo_root: str = REPO_ROOT,
                 link_pack: bool = True, extra_args: list[str] | None = None,
                 extra_packs: dict[str, str] | None = None, random_checkpoints: bool = True):
        self.comfy_dir = os.path.abspath(comfy_dir)
        self.python = python or sys.executable
        self.repo_root = repo_root
        self.link_pack = link_pack
        self.extra_args = list(extra_args or [])
        self.extra_packs = dict(extra_packs or {})  # {folder name: __init__.py source}
        self.random_checkpoints = random_checkpoints  # False: models/ stays empty (the shipped tiny model only)
        self.base_dir: str | None = None
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None
        self.log_path: str | None = None
        self.tiny_wan_info: dict | None = None
        self.client_id = uuid.uuid4().hex

    @classmethod
    def from_env(cls, **kw) -> "ComfyServer | None":
        d = os.environ.get("COMFYUI_DIR")
        if not d:
            return None
        return cls(d, python=os.environ.get("COMFYUI_PYTHON") or None, **kw)

    # ------------------------------------------------------------------ setup
    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pack_path(self) -> str:
        return os.path.join(self.base_dir, "custom_nodes", PACK_NAME)

    def prepare(self) -> None:
        self.base_dir = tempfile.mkdtemp(prefix="comfyui_real_")
        for sub in ("custom_nodes", "models/diffusion_models", "input", "output", "temp", "user"):
            os.makedirs(os.path.join(self.base_dir, sub), exist_ok=True)
        if self.link_pack:
            os.symlink(self.repo_root, self.pack_path, target_is_directory=True)
        for name, source in self.extra_packs.items():
            d = os.path.join(self.base_dir, "custom_nodes", name)
            os.makedirs(d)
            with open(os.path.join(d, "__init__.py"), "w") as f:
                f.write(source)
        if self.random_checkpoints:
            self.write_tiny_wan()
            self.write_tiny_wan(TINY_CAUSAL_NAME, causal=True)

    def write_tiny_wan(self, name: str = TINY_WAN_NAME, causal: bool = False) -> str:
        out = os.path.join(self.base_dir, "models", "diffusion_models", name)
        r = subprocess.run([self.python, os.path.join(HERE, "make_tiny_wan.py"), self.comfy_dir, out]
                           + (["--causal"] if causal else []),
                           cwd=self.comfy_dir, capture_output=True, text=True, timeout=180)
        if r.returncode != 0:
            raise RuntimeError(f"make_tiny_wan.py failed:\n{r.stdout}\n{r.stderr}")
        info = json.loads(r.stdout.strip().splitlines()[-1])
        if not causal:
            self.tiny_wan_info = info
        return out

    def start(self, timeout: float = 120.0) -> "ComfyServer":
        if self.base_dir is None:
            self.prepare()
        self.port = free_port()
        self.log_path = os.path.join(self.base_dir, "comfyui.log")
        cmd = [self.python, "main.py", "--cpu", "--listen", HOST, "--port", str(self.port),
               "--base-directory", self.base_dir,
               "--database-url", "sqlite:///" + os.path.join(self.base_dir, "user", "comfyui.db"),
               "--disable-api-nodes", *self.extra_args]
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)  # never let the test tree's stub shadow the real comfy package
        env["PYTHONUNBUFFERED"] = "1"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=self.comfy_dir, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=env, start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                self._get("/object_info/UNETLoader", timeout=5)
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"ComfyUI did not answer within {timeout}s:\n{self.log_tail()}")

    def stop(self, keep_dir: bool = False) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        self.proc = None
        if getattr(self, "_log", None) is not None:
            self._log.close()
            self._log = None
        if self.base_dir and not keep_dir and not os.environ.get("COMFYUI_KEEP_BASE_DIR"):
            shutil.rmtree(self.base_dir, ignore_errors=True)
            self.base_dir = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # ------------------------------------------------------------------ logs
    def log_text(self) -> str:
        if not self.log_path or not os.path.exists(self.log_path):
            return ""
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    def pack_import_status(self, pack_name: str = PACK_NAME) -> dict:
        """What the startup log says about a pack: attempted / failed / error lines."""
        lines = self.log_text().splitlines()
        timing = [ln for ln in lines if "seconds" in ln and ln.rstrip().endswith("/" + pack_name)]
        failed = any("(IMPORT FAILED)" in ln for ln in timing)
        errors = [ln for ln in lines if pack_name in ln and ("Cannot import" in ln or "Error" in ln
                                                             or "Skip" in ln or "comfy_entrypoint" in ln)]
        return {"attempted": bool(timing), "failed": failed, "error_lines": errors, "timing_lines": timing}

    # ------------------------------------------------------------------ HTTP
    def _get(self, path: str, timeout: float = 30):
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            return json.loads(r.read().decode())

    def _post(self, path: str, body: dict, timeout: float = 30):
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, json.loads(r.read().decode() or "{}")
        except urllib.error.HTTPError as e:
            raw = e.read().decode()
            try:
                return e.code, json.loads(raw)
            except ValueError:
                return e.code, {"error": raw}

    def object_info(self, node_class: str | None = None) -> dict:
        return self._get("/object_info" + (f"/{node_class}" if node_class else ""))

    def queue_prompt(self, api_prompt: dict, timeout: float = 90.0) -> PromptResult:
        """POST /prompt, then wait on /history/<id> until it finished. Raises PromptRejected on 400."""
        code, body = self._post("/prompt", {"prompt": api_prompt, "client_id": self.client_id})
        if code != 200 or "prompt_id" not in body:
            raise PromptRejected(body)
        pid = body["prompt_id"]
        deadline = time.time() + timeout
        while time.time() < deadline:
            hist = self._get(f"/history/{pid}")
            entry = hist.get(pid)
            if entry and entry.get("status", {}).get("status_str") in ("success", "error"):
                st = entry["status"]
                msgs = st.get("messages", [])
                err = next((m[1] for m in msgs if m and m[0] == "execution_error"), None)
                return PromptResult(pid, st["status_str"], entry.get("outputs", {}), msgs, err)
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI died while running the prompt:\n{self.log_tail()}")
            time.sleep(0.25)
        self.interrupt()
        raise TimeoutError(f"prompt {pid} did not finish within {timeout}s:\n{self.log_tail()}")

    def interrupt(self) -> None:
        self._post("/interrupt", {})

    def output_files(self) -> list[str]:
        out = os.path.join(self.base_dir, "output")
        return sorted(os.path.relpath(os.path.join(r, f), out) for r, _, fs in os.walk(out) for f in fs)
