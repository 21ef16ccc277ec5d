#!/usr/bin/env python3
"""helm --post-renderer for the chart as it is before its single-container DaemonSet lands: the
sidecar images (node-driver-registrar, livenessprobe) cannot be built here, and the driver registers
itself with kubelet now. Drops the sidecars, gives the driver kubelet's plugins_registry dir and the
host path of its CSI socket, and points its liveness probe at its own /healthz. A chart without
sidecars passes through unchanged."""
import sys
import yaml

docs = [d for d in yaml.safe_load_all(sys.stdin) if d]
for doc in docs:
    if doc.get("kind") != "DaemonSet":
        continue
    spec = doc["spec"]["template"]["spec"]
    names = [c["name"] for c in spec["containers"]]
    if "node-driver-registrar" not in names:
        continue
    spec["containers"] = [c for c in spec["containers"] if c["name"] not in ("node-driver-registrar", "liveness-probe")]
    driver = spec["containers"][0]
    plugin_dir = next(v["hostPath"]["path"] for v in spec["volumes"] if v["name"] == "plugin-dir")
    registry_dir = next(v["hostPath"]["path"] for v in spec["volumes"] if v["name"] == "registration-dir")
    driver["args"].append(f"--plugin-socket-host-path={plugin_dir}/csi.sock")
    driver["args"].append(f"--registration-socket={registry_dir}/csi.spire.io-reg.sock")
    driver["volumeMounts"].append({"name": "registration-dir", "mountPath": registry_dir})
    driver["livenessProbe"]["httpGet"]["port"] = "metrics"
yaml.safe_dump_all(docs, sys.stdout, sort_keys=False)
