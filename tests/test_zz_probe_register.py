import time
from test_team import BIN, _run, _client, clone, stack  # noqa: F401


def test_probe(stack, clone):
    root = clone["root"]
    for cmd in (["baseline"], ["multitask"], ["evaluate"], ["register", "--set", "register.include_fusion=false"]):
        t = time.monotonic()
        done = _run([str(BIN / "unitask"), *cmd], root, ok=False)
        print("\nCMD", cmd, done.returncode, f"{time.monotonic() - t:.1f}s")
        print(done.stdout[-1500:], done.stderr[-1500:])
        if done.returncode:
            break
    client = _client(stack)
    for m in client.search_registered_models():
        print("MODEL", m.name, m.aliases)
    import mlflow
    mlflow.set_tracking_uri(stack.url)
    t = time.monotonic()
    model = mlflow.pyfunc.load_model("models:/unitask@champion")
    print("PRED", model.predict([{"task": "sms_spam", "text": "free prize now"}]), f"{time.monotonic() - t:.1f}s")
