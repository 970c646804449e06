"""What the collections layer costs over the SQL layer underneath, measured in the same run on the
same data: ``Collection.insert_all`` against ``hqdb.insert_items`` (20k items, both modalities,
encoding included) and ``Collection.search`` against the identical ``hq_match`` statement
(300 text queries x 6 rounds, interleaved, alternating which goes first, medians). Prints ratios; run:
``PYTHONPATH=. python bench/collections_overhead.py``. Needs torch (trains a small model on the
SYNTHETIC set of hqdb.datasets)."""

import os
import time

import numpy as np

import hqdb
from hqdb import datasets

N = 20_000
pairs = datasets.synthetic_pairs(N, seed=0)
model = hqdb.train({k: v[:2000] for k, v in pairs.items() if k != "label_names"}, bits=64, epochs=3,
                   progress=False)
db = hqdb.connect(":memory:")
hqdb.save_model(db, "m", model)
texts = [str(t) for t in pairs["text"]]
titles, years = [f"p{i}" for i in range(N)], [2000 + i % 25 for i in range(N)]
print(f"load average at start {os.getloadavg()}")

db.execute("CREATE VIRTUAL TABLE plain USING hq(model='m', title TEXT, year INTEGER)")
t = time.perf_counter()
hqdb.insert_items(db, "plain", image=pairs["image"], text=texts, metadata={"title": titles, "year": years})
t_items = time.perf_counter() - t
coll = db.create_collection("coll", model="m", columns={"title": str, "year": int})
items = [{"title": titles[i], "year": years[i], "image": pairs["image"][i], "text": texts[i]} for i in range(N)]
t = time.perf_counter()
coll.insert_all(items, progress=False)
t_coll = time.perf_counter() - t
print(f"insert {N:,} items: hqdb.insert_items {N / t_items:,.0f} items/s, Collection.insert_all "
      f"{N / t_coll:,.0f} items/s: {t_coll / t_items:.2f}x the time")

sql = ('SELECT rowid, distance, hamming, "title", "year" FROM "coll" '
       'WHERE hq_match("coll"."image", hq_query(?, ?)) AND k = ?')  # the statement search() runs
t_sql, t_api = [], []

def time_sql(q):
    t = time.perf_counter()
    db.execute(sql, ("text", q, 10)).fetchall()
    t_sql.append(time.perf_counter() - t)


def time_api(q):
    t = time.perf_counter()
    coll.search(text=q, k=10)
    t_api.append(time.perf_counter() - t)


for rnd in range(6):
    for q in texts[:300]:
        for run in ((time_sql, time_api) if rnd % 2 else (time_api, time_sql)):  # either may go first
            run(q)
a, b = 1000 * np.median(t_sql), 1000 * np.median(t_api)
print(f"search k=10 over {N:,} items: SQL {a:.3f} ms, Collection.search {b:.3f} ms (medians): {b / a:.2f}x")
print(f"load average at end {os.getloadavg()}")
