"""redis-py against aft: the client's defaults (RESP3 in redis-py 8) and RESP2.

Usage: python redis_py.py PORT. Exits non-zero on the first failed check.
"""

import sys
import threading

import redis


def check(got, want, what):
    if got != want:
        raise AssertionError(f"{what}: got {got!r}, want {want!r}")


def exercise(r, tag):
    check(r.ping(), True, "ping")
    r.flushall()
    check(r.set(f"{tag}:k", "v"), True, "set")
    check(r.get(f"{tag}:k"), b"v", "get")
    check(r.get(f"{tag}:missing"), None, "get missing")
    check(r.set(f"{tag}:k", "w", nx=True), None, "set nx")
    check(r.set(f"{tag}:k", "w", xx=True, get=True), b"v", "set xx get")
    check(r.incr(f"{tag}:n"), 1, "incr")
    check(r.incrby(f"{tag}:n", 41), 42, "incrby")
    check(r.incrbyfloat(f"{tag}:f", 1.5), 1.5, "incrbyfloat")
    check(r.mset({f"{tag}:a": 1, f"{tag}:b": 2}), True, "mset")
    check(r.mget([f"{tag}:a", f"{tag}:b", f"{tag}:none"]), [b"1", b"2", None], "mget")
    check(r.expire(f"{tag}:a", 100), True, "expire")
    ttl = r.ttl(f"{tag}:a")
    if not 99 <= ttl <= 100:
        raise AssertionError(f"ttl: {ttl}")
    check(r.persist(f"{tag}:a"), True, "persist")
    check(r.exists(f"{tag}:a", f"{tag}:b", f"{tag}:none"), 2, "exists")
    check(r.type(f"{tag}:a"), b"string", "type")
    binary = bytes(range(256)) + b"\r\n"
    r.set(b"\xff\x00key/with/slashes", binary)
    check(r.get(b"\xff\x00key/with/slashes"), binary, "binary")
    check(r.append(f"{tag}:s", "Hello"), 5, "append")
    check(r.getrange(f"{tag}:s", 1, 3), b"ell", "getrange")
    check(r.delete(f"{tag}:s", f"{tag}:none"), 1, "delete")

    # MULTI/EXEC through a transactional pipeline.
    pipe = r.pipeline(transaction=True)
    pipe.set(f"{tag}:t1", "x").incr(f"{tag}:t2").get(f"{tag}:t1")
    check(pipe.execute(), [True, 1, b"x"], "multi/exec")

    # Run-time errors stay inside the EXEC reply.
    pipe = r.pipeline(transaction=True)
    pipe.set(f"{tag}:str", "abc").incr(f"{tag}:str").set(f"{tag}:after", "1")
    results = pipe.execute(raise_on_error=False)
    check(results[0], True, "exec[0]")
    if not isinstance(results[1], redis.ResponseError):
        raise AssertionError(f"exec[1]: {results[1]!r}")
    check(results[2], True, "exec[2]")

    # WATCH: optimistic increments from several threads never lose an update.
    r.set(f"{tag}:counter", 0)

    def bump():
        c = redis.Redis(connection_pool=r.connection_pool)
        for _ in range(25):
            def txn(p):
                v = int(p.get(f"{tag}:counter"))
                p.multi()
                p.set(f"{tag}:counter", v + 1)
            c.transaction(txn, f"{tag}:counter")

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    check(r.get(f"{tag}:counter"), b"100", "watch counter")

    # A plain pipeline of many commands.
    pipe = r.pipeline(transaction=False)
    for i in range(500):
        pipe.set(f"{tag}:p{i}", i)
    pipe.execute()
    check(r.get(f"{tag}:p499"), b"499", "pipeline")
    keys = set(r.scan_iter(match=f"{tag}:p*", count=100))
    check(len(keys), 500, "scan_iter")
    check(r.dbsize() >= 500, True, "dbsize")

    info = r.info()
    check(info["redis_version"], "7.0.15", "info redis_version")
    check(r.client_setname("py"), True, "client setname")
    check(r.client_getname(), "py", "client getname")


def main():
    port = int(sys.argv[1])
    default = redis.Redis(port=port)
    exercise(default, "default")
    proto = default.connection_pool.get_connection().protocol
    resp2 = redis.Redis(port=port, protocol=2)
    exercise(resp2, "resp2")
    print(f"redis-py {redis.__version__}: ok (default protocol {proto}, and RESP2)")


if __name__ == "__main__":
    main()
