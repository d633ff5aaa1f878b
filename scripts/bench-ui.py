#!/usr/bin/env python3
"""The web UI's latency against a real gateway (release build) and a real
mosquitto cloud: the sharing grid's preview over a 200-rule policy, the
device page, the status API and /metrics; p50 and p99 of 200 requests each
on one kept-alive connection, and the gateway's RSS after.

    cargo build --release -p gateway && python3 scripts/bench-ui.py
"""
import http.client, json, time, subprocess, os, re, statistics, sys, tempfile
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "dataward")
D = tempfile.mkdtemp(prefix="dataward-bench-ui-")
open(f"{D}/mosq.conf","w").write("listener 19884 127.0.0.1\nallow_anonymous true\n")
mosq = subprocess.Popen(["mosquitto","-c",f"{D}/mosq.conf"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
pol = "# bench policy\n"
for d in range(20):
    for f in range(10):
        pol += f'\n[[rule]]\ndevice = "dev-{d}"\nfield = "f{f}"\ndestination = "vendor_cloud"\naction = "round"\nstep = 0.5\n'
open(f"{D}/policy.toml","w").write(pol)
open(f"{D}/dw.toml","w").write(f'data_dir = "{D}/data"\npolicy = "{D}/policy.toml"\n[[destination]]\nname = "vendor_cloud"\nurl = "mqtt://127.0.0.1:19884"\ntopic_prefix = "home/"\n')
add = json.loads(subprocess.check_output([BIN,"device","add","dev-7","--config",f"{D}/dw.toml","--json"]))
pw = add["password"]
gw = subprocess.Popen([BIN,"run","--config",f"{D}/dw.toml","--mqtt-listen","127.0.0.1:0","--http-listen","127.0.0.1:0"], stdout=subprocess.PIPE, stderr=open(f"{D}/log.txt","w"), text=True)
lines = []
first = gw.stdout.readline(); lines.append(first)
mqtt = re.search(r"mqtt=(\S+)", first).group(1); http_addr = re.search(r"http=(\S+)", first).group(1)
tok = None
while tok is None:
    l = gw.stdout.readline()
    m = re.search(r"token=(\w+)", l)
    if m: tok = m.group(1)
host, port = http_addr.rsplit(":",1)
c = http.client.HTTPConnection(host, int(port))
def req(m, p, body=None, headers={}):
    h = {"Host": http_addr}; h.update(headers)
    c.request(m, p, body=body, headers=h)
    r = c.getresponse(); data = r.read(); return r, data
r, d = req("POST","/api/v1/setup", json.dumps({"token":tok,"passphrase":"correct horse battery staple"}), {"Content-Type":"application/json"})
cookie = r.getheader("set-cookie").split(";")[0]; csrf = json.loads(d)["csrf_token"]
payload = json.dumps({f"f{i}": 20.0 + i * 0.37 for i in range(10)})
mh, mp = mqtt.rsplit(":",1)
subprocess.run(["mosquitto_pub","-h",mh,"-p",mp,"-u","dev-7","-P",pw,"-i","dev-7","-t","devices/dev-7/state","-q","1","-m",payload], check=True)
time.sleep(0.5)
grid = {"fields":[f"f{i}" for i in range(10)], "cells":[{"field":f"f{i}","destination":"vendor_cloud","action":"round","params":"step = 1"} for i in range(10)]}
def timed(n, f):
    ts=[]
    for _ in range(n):
        t=time.perf_counter(); f(); ts.append((time.perf_counter()-t)*1000)
    ts.sort(); return statistics.median(ts), ts[int(len(ts)*0.99)-1]
hc = {"Cookie": cookie}
hx = {"Cookie": cookie, "X-CSRF-Token": csrf, "Content-Type":"application/json"}
def prev():
    r,d = req("POST","/api/v1/devices/dev-7/sharing/preview", json.dumps(grid), hx); assert r.status==200, d
def page():
    r,d = req("GET","/devices/dev-7", None, hc); assert r.status==200
def status():
    r,d = req("GET","/api/v1/status", None, hc); assert r.status==200
def metrics():
    r,d = req("GET","/metrics", None, hc); assert r.status==200
res = {}
for name, f in [("preview (200-rule policy, 10x1 grid)", prev), ("device page", page), ("api status", status), ("metrics", metrics)]:
    f()
    res[name] = timed(200, f)
for k,(p50,p99) in res.items(): print(f"{k}: p50 {p50:.2f} ms, p99 {p99:.2f} ms")
with open(f"/proc/{gw.pid}/status") as s:
    for l in s:
        if l.startswith("VmRSS"): print("gateway RSS after:", l.split()[1], "kB")
gw.terminate(); gw.wait(); mosq.terminate()
subprocess.run(["rm", "-rf", D])
