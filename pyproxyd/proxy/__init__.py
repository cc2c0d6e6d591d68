"""The protocol-free request pipeline, one module a step, in call order:

- interface.py: what a frontend hands the pipeline (Request: the request and
  the sink of its answer);
- record.py: RequestInfo, the facts the log line and metrics read;
- prepare.py: route, identity, rate limit and the upstream head (a Plan);
- forward.py: target, breaker, retries and health around the exchange;
- relay.py: the answer back to the sink, or the gateway's own error;
- handler.py: Proxy, the entry point, and the task-less first try.

Nothing is imported here: a frontend imports interface.py without pulling in
the pipeline (and the pipeline imports no frontend).
"""
