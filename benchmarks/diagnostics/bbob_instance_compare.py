import json, sys
from pathlib import Path
from labo.bench.store import StudyStore
from labo.bench.bbob_report import bbob_finals
def fin(db, study, method):
    f = bbob_finals(StudyStore(Path(db)), study)
    return {k[0]: v for k, v in f.items() if k[2] == method}
yj = fin('/tmp/bo/bbob_yj.db', 'bbob20yj', 'laplace-yj')
de = fin('/tmp/bo/r_bbob20b.db', 'bbob20b', 'laplace-lsavg-2d')
gp = fin('/tmp/bo/r_bbob20.db', 'bbob20', 'gp')
so = fin('/tmp/bo/r_bbob20s.db', 'bbob20s', 'sobol')
rows = []
for fn in sorted(yj):
    key = [k for k in yj[fn]][0]
    v = yj[fn][key]; d = de[fn][key]; g = gp[fn][key]; s = so[fn][key]
    rows.append(dict(function=fn, yj=v, default=d, gp=g, sobol=s))
    print(f"{fn}  yj {v:6.2f}  default {d:6.2f}  gp {g:6.2f}  sobol {s:6.2f}   yj-def {v-d:+.2f}  yj-gp {v-g:+.2f}")
import statistics as st
for name in ['default','gp','sobol']:
    diffs=[r['yj']-r[name] for r in rows]
    m=st.mean(diffs); se=st.stdev(diffs)/len(diffs)**0.5
    print(name, f"mean {m:+.3f} ± {se:.3f}", 'better', sum(x< -0.02 for x in diffs), 'worse', sum(x>0.02 for x in diffs))
json.dump(rows, open(sys.argv[1], 'w'), indent=1)
