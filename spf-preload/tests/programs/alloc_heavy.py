# An allocation-heavy Python workload in four threads: dicts, lists, strings,
# bytes and objects made and dropped, a few blocks large enough to be spf's
# large blocks; each thread's result is deterministic, printed in order.
import hashlib
import json
import threading


class Node:
    __slots__ = ("key", "children", "payload")

    def __init__(self, key, payload):
        self.key = key
        self.children = []
        self.payload = payload


def work(seed, out):
    h = hashlib.sha256()
    state = seed
    table = {}
    for i in range(30000):
        state = (state * 6364136223846793005 + 1442695040888963407) % (1 << 64)
        k = "k%d" % (state % 4000)
        size = 1 + (state >> 20) % (2000 if i % 97 else 400000)
        table[k] = bytes([state & 0xFF]) * size
        if i % 3 == 0:
            table.pop("k%d" % ((state >> 7) % 4000), None)
    root = Node("root", b"")
    for i in range(20000):
        n = Node(str(i), ("x" * (i % 50)).encode())
        root.children.append(n)
        if i % 5 == 0:
            root.children.pop(i % len(root.children))
    for k in sorted(table):
        h.update(k.encode())
        h.update(table[k][:64])
        h.update(str(len(table[k])).encode())
    doc = json.dumps({c.key: len(c.payload) for c in root.children[:2000]}, sort_keys=True)
    h.update(doc.encode())
    out[seed] = h.hexdigest()


results = {}
threads = [threading.Thread(target=work, args=(s, results)) for s in range(1, 5)]
for t in threads:
    t.start()
for t in threads:
    t.join()
for s in sorted(results):
    print(s, results[s])
