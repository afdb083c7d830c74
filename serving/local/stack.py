"""The local CPU stack: Valkey + RediSearch and N vLLM replicas as children, used by ``cachestack up``
and by the end-to-end test session."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from serving.config import LocalStackConfig
from serving.local.model import prepare_model
from serving.local.processes import Child, valkey_child, vllm_child, wait_http, wait_redis


@dataclass
class LocalStack:
    served_model: str = ""
    vllm_urls: list[str] = field(default_factory=list)
    redis_url: str = ""
    children: list[Child] = field(default_factory=list)

    def close(self) -> None:
        for child in reversed(self.children):
            child.stop()
        self.children.clear()

    def __enter__(self) -> LocalStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_stack(cfg: LocalStackConfig, *, redis: bool = True, vllm: bool = True,
                vllm_ports: list[int] | None = None, redis_port: int | None = None,
                aliases: list[str] | None = None,
                start_timeout_s: float = 600.0) -> LocalStack:
    """Start what is asked; on any failure stop what already started and re-raise."""
    data_dir = Path(cfg.data_dir).resolve()
    log_dir = data_dir / "logs"
    stack = LocalStack(served_model=cfg.served_model_name or Path(cfg.model).name)
    try:
        if redis:
            port = redis_port or cfg.redis_port
            child = valkey_child(port, log_dir)
            child.start()
            stack.children.append(child)
            wait_redis(child, port)
            stack.redis_url = f"redis://127.0.0.1:{port}/0"
        if vllm:
            model_path = prepare_model(cfg.model, data_dir)
            ports = vllm_ports or [cfg.vllm_port + i for i in range(cfg.vllm_replicas)]
            started = []
            for port in ports:
                child = vllm_child(model_path, [stack.served_model, *(aliases or [])], port, log_dir, cfg.kv_cache_gib, cfg.vllm_args)
                child.start()
                stack.children.append(child)
                started.append((child, port))
                print(f"cachestack: starting {child.name} (log: {child.log_path})", file=sys.stderr)
            for child, port in started:
                wait_http(child, f"http://127.0.0.1:{port}/v1/models", start_timeout_s)
                stack.vllm_urls.append(f"http://127.0.0.1:{port}")
    except BaseException:
        stack.close()
        raise
    return stack
